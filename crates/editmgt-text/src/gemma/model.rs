use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use editmgt_core::config::component_folder;
use editmgt_core::shapes::ParamEntry;
use editmgt_core::token_table::TokenTable;
use editmgt_core::{FloatType, KeyMap, LoadError, WeightFiles, load_module};

use super::config::Gemma2Config;
use super::rotary::Rotary;
use crate::ops::{gelu_tanh, linear};
use crate::{TextError, TokenIds};

/// Gemma's RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)`, computed in f32.
#[derive(Module, Debug)]
pub(crate) struct GemmaRmsNorm {
    weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
}

impl GemmaRmsNorm {
    fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            weight: Initializer::Zeros.init([dim], device),
            eps,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.cast(DType::F32);
        let scale = self.weight.val().cast(DType::F32) + 1.0;
        let mean_square = (x.clone() * x.clone()).mean_dim(2);
        let normed = x * (mean_square + self.eps).sqrt().recip();
        normed * scale.unsqueeze::<3>()
    }
}

/// Grouped-query self-attention with rotary positions and soft-capped logits (`self_attn`).
#[derive(Module, Debug)]
pub(crate) struct Gemma2Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    #[module(skip)]
    num_heads: usize,
    #[module(skip)]
    num_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
    #[module(skip)]
    scale: f64,
    #[module(skip)]
    softcap: Option<f64>,
}

impl Gemma2Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        window_mask: Option<Tensor<4, Bool>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let d = self.head_dim;
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, d]).swap_dims(1, 2);
        let q = heads(linear(&self.q_proj, x.clone()), self.num_heads);
        let k = heads(linear(&self.k_proj, x.clone()), self.num_kv_heads);
        let v = heads(linear(&self.v_proj, x), self.num_kv_heads);
        let q = rotary.apply(q);
        let k = rotary.apply(k);
        // Each key/value head serves `group` consecutive query heads. Repeating them here keeps
        // the call valid on backends whose fused attention needs equal head counts.
        let group = self.num_heads / self.num_kv_heads;
        let repeat = |y: Tensor<4>| {
            if group == 1 {
                y
            } else {
                y.unsqueeze_dim::<5>(2)
                    .repeat_dim(2, group)
                    .reshape([b, self.num_heads, t, d])
            }
        };
        let options = AttentionModuleOptions {
            scale: Some(self.scale),
            softcap: self.softcap,
            is_causal: true,
        };
        let out =
            burn::tensor::module::attention(q, repeat(k), repeat(v), window_mask, None, options);
        linear(
            &self.o_proj,
            out.swap_dims(1, 2).reshape([b, t, self.num_heads * d]),
        )
    }
}

/// `down(gelu_tanh(gate(x)) * up(x))` (`mlp`).
#[derive(Module, Debug)]
pub(crate) struct Gemma2Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Gemma2Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = gelu_tanh(linear(&self.gate_proj, x.clone()));
        let up = linear(&self.up_proj, x);
        linear(&self.down_proj, gate * up)
    }
}

/// One decoder layer with Gemma-2's four norms (`model.layers.<i>`).
#[derive(Module, Debug)]
pub(crate) struct Gemma2DecoderLayer {
    self_attn: Gemma2Attention,
    mlp: Gemma2Mlp,
    input_layernorm: GemmaRmsNorm,
    post_attention_layernorm: GemmaRmsNorm,
    pre_feedforward_layernorm: GemmaRmsNorm,
    post_feedforward_layernorm: GemmaRmsNorm,
    /// The sliding window of this layer (even layers), if any.
    #[module(skip)]
    sliding_window: Option<usize>,
}

impl Gemma2DecoderLayer {
    fn forward(&self, x: Tensor<3>, rotary: &Rotary) -> Tensor<3> {
        let t = x.dims()[1];
        let device = x.device();
        let window_mask = self
            .sliding_window
            .filter(|&w| t > w)
            .map(|w| sliding_window_mask(t, w, &device));
        let y =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), rotary, window_mask);
        let x = x + self.post_attention_layernorm.forward(y);
        let y = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(x.clone()));
        x + self.post_feedforward_layernorm.forward(y)
    }
}

/// `[1, 1, t, t]`, true where key `k <= q - window` (outside the window; the causal part is the
/// attention's own).
fn sliding_window_mask(t: usize, window: usize, device: &Device) -> Tensor<4, Bool> {
    let mut mask = Vec::with_capacity(t * t);
    for q in 0..t {
        for k in 0..t {
            mask.push(k + window <= q);
        }
    }
    Tensor::from_data(TensorData::new(mask, [1, 1, t, t]), device)
}

/// The layers of `Gemma2Model` the encoder needs (`model.*` in the checkpoint, without the final
/// norm).
#[derive(Module, Debug)]
pub(crate) struct Gemma2Stack {
    /// `embed_tokens.weight`, in blocks of rows (2.2 GiB in f32: more than a GPU adapter may
    /// bind as one buffer); loaded on its own ([`TokenTable::load`]), not by `load_module`.
    #[module(skip)]
    embed_tokens: TokenTable,
    layers: Vec<Gemma2DecoderLayer>,
}

impl Gemma2Stack {
    /// `layers` decoder layers with lazily initialised parameters.
    fn new(config: &Gemma2Config, layers: usize, device: &Device) -> Self {
        Self {
            // `Embedding`'s own initialiser.
            embed_tokens: TokenTable::new(
                config.vocab_size,
                config.hidden_size,
                &Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                },
                device,
            ),
            layers: (0..layers)
                .map(|index| Gemma2DecoderLayer::new(config, index, device))
                .collect(),
        }
    }
}

impl Gemma2DecoderLayer {
    /// Decoder layer `index` (`model.layers.<index>`) with lazily initialised parameters.
    fn new(config: &Gemma2Config, index: usize, device: &Device) -> Self {
        let h = config.hidden_size;
        let d = config.head_dim;
        let bias = config.attention_bias;
        let norm = || GemmaRmsNorm::new(h, config.rms_norm_eps, device);
        let proj = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(bias).init(device);
        let plain = |i: usize, o: usize| LinearConfig::new(i, o).with_bias(false).init(device);
        Gemma2DecoderLayer {
            self_attn: Gemma2Attention {
                q_proj: proj(h, config.num_attention_heads * d),
                k_proj: proj(h, config.num_key_value_heads * d),
                v_proj: proj(h, config.num_key_value_heads * d),
                o_proj: proj(config.num_attention_heads * d, h),
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
                head_dim: d,
                scale: config.query_pre_attn_scalar.powf(-0.5),
                softcap: config.attn_logit_softcapping,
            },
            mlp: Gemma2Mlp {
                gate_proj: plain(h, config.intermediate_size),
                up_proj: plain(h, config.intermediate_size),
                down_proj: plain(config.intermediate_size, h),
            },
            input_layernorm: norm(),
            post_attention_layernorm: norm(),
            pre_feedforward_layernorm: norm(),
            post_feedforward_layernorm: norm(),
            sliding_window: if index.is_multiple_of(2) {
                config.sliding_window
            } else {
                None
            },
        }
    }
}

/// Gemma-2 as EditMGT's text encoder: the residual stream entering the last decoder layer
/// (transformers' `hidden_states[-2]` of `Gemma2ForCausalLM`), `[batch, seq, hidden]`.
///
/// Embeddings times `sqrt(hidden)`; per layer RMSNorm `(1 + w)`, grouped-query attention with
/// rotary positions (halves), scale `query_pre_attn_scalar^-0.5`, logits soft-capped
/// `c * tanh(x / c)`, causal, a sliding window on even layers; RMSNorm, residual; RMSNorm,
/// `down(gelu_tanh(gate(x)) * up(x))`, RMSNorm, residual. No attention mask: pads are ordinary
/// tokens, as in the reference.
///
/// Only the first `num_hidden_layers - 1` layers are built and loaded: `lm_head.weight`, the last
/// layer and the final norm are never read from the checkpoint
/// ([`GemmaEncoder::unused_tensors`]).
///
/// Memory: the released gemma-2-2b needs about 10.1 GB of weights in f32 and 5.1 GB in
/// f16/bf16 (`FloatType`); the matrix products run in that type, everything else in f32 (see
/// the crate docs), so half precision does not overflow in the norms, soft-cap or residuals.
#[derive(Debug)]
pub struct GemmaEncoder {
    model: Gemma2Stack,
    config: Gemma2Config,
    device: Device,
    dtype: FloatType,
}

impl GemmaEncoder {
    /// The checkpoint-to-module name mapping: the checkpoint's `model.` prefix is dropped.
    pub fn key_map() -> KeyMap {
        KeyMap::new().strip_prefix("model")
    }

    /// Loads `llm_encoder/` of a model folder (see [`GemmaEncoder::from_folder`]).
    pub fn from_model_dir(
        model_dir: &Path,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        let folder = component_folder(model_dir, "llm_encoder")?;
        Self::from_folder(&folder, device, dtype)
    }

    /// Loads `config.json` and `model.safetensors` (or the shards of
    /// `model.safetensors.index.json`) from `folder` onto `device`, holding the weights in
    /// `dtype` (converted on load from whatever the files store).
    pub fn from_folder(
        folder: &Path,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        let config = Gemma2Config::from_file(&folder.join("config.json"))?;
        let files = WeightFiles::discover(folder, "model")?;
        Self::load(config, &files, device, dtype)
    }

    /// Loads `files` into an encoder built from `config`.
    pub fn load(
        config: Gemma2Config,
        files: &WeightFiles,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        dtype.check_device(device)?;
        let model = Gemma2Stack::new(&config, config.encoder_layers(), device);
        let mut model = load_module(model, files, &Self::key_map(), dtype)?;
        model.embed_tokens = TokenTable::load(
            files,
            &Self::embeddings_name(),
            [config.vocab_size, config.hidden_size],
            device,
            dtype,
        )?;
        Ok(Self {
            model,
            config,
            device: device.clone(),
            dtype,
        })
    }

    /// The encoder with lazily initialised parameters: building allocates nothing (so the
    /// released configuration can be inspected with [`GemmaEncoder::parameter_table`]); a
    /// forward pass materialises random weights, which is only useful for benchmarks.
    pub fn new(config: Gemma2Config, device: &Device) -> Self {
        Self {
            model: Gemma2Stack::new(&config, config.encoder_layers(), device),
            config,
            device: device.clone(),
            dtype: FloatType::F32,
        }
    }

    /// The checkpoint name of the embedding table (`model.embed_tokens.weight`).
    fn embeddings_name() -> String {
        Self::key_map().to_checkpoint("embed_tokens.weight")
    }

    /// Checkpoint names and shapes of every tensor the encoder reads.
    pub fn parameter_table(&self) -> Vec<ParamEntry> {
        let mut table = vec![ParamEntry {
            module_path: "embed_tokens.weight".into(),
            checkpoint_name: Self::embeddings_name(),
            shape: self.model.embed_tokens.shape().to_vec(),
        }];
        table.extend(editmgt_core::shapes::parameter_table(
            &self.model,
            &Self::key_map(),
        ));
        table
    }

    /// The checkpoint tensors of `Gemma2ForCausalLM` the encoder deliberately leaves unread:
    /// `lm_head.weight` (tied to the embeddings), every tensor of the last decoder layer, and
    /// the final norm `model.norm.weight`.
    pub fn unused_tensors(config: &Gemma2Config) -> BTreeSet<String> {
        let device = Device::default();
        let keys = Self::key_map();
        let all = Gemma2Stack::new(config, config.num_hidden_layers, &device);
        let used = Gemma2Stack::new(config, config.encoder_layers(), &device);
        let names = |m: &Gemma2Stack| -> BTreeSet<String> {
            editmgt_core::shapes::parameter_table(m, &keys)
                .into_iter()
                .map(|p| p.checkpoint_name)
                .collect()
        };
        let mut unused: BTreeSet<String> = names(&all).difference(&names(&used)).cloned().collect();
        unused.insert("model.norm.weight".into());
        unused.insert("lm_head.weight".into());
        unused
    }

    /// The configuration.
    pub fn config(&self) -> &Gemma2Config {
        &self.config
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float type the weights are held in.
    pub fn float_type(&self) -> FloatType {
        self.dtype
    }

    /// `hidden_states[-2]` `[batch, seq, hidden]` (f32) of a batch of token rows.
    pub fn forward(&self, ids: &TokenIds) -> Result<Tensor<3>, TextError> {
        run(
            &self.config,
            ids,
            &self.device,
            |ids| {
                Ok(self
                    .model
                    .embed_tokens
                    .lookup(ids.as_slice())
                    .cast(DType::F32)
                    .reshape([ids.batch_size(), ids.seq_len(), self.config.hidden_size]))
            },
            |index, x, rotary| Ok(self.model.layers[index].forward(x, rotary)),
        )
    }

    /// [`GemmaEncoder::forward`] straight from the checkpoint in `folder` (`config.json` and
    /// the weights, as [`GemmaEncoder::from_folder`] reads them), with one decoder layer in
    /// memory at a time.
    ///
    /// The prompt's rows of the embedding table are read from the file
    /// ([`WeightFiles::read_rows`]); each decoder layer is loaded, run and dropped before the
    /// next. The peak is one layer's weights in `dtype` (about 310 MB in f32 for the released
    /// gemma-2-2b) instead of the whole encoder (10.1 GB), at the cost of reading the weights at
    /// every call; the result is the same as loading the encoder and calling `forward`.
    pub fn forward_streamed(
        folder: &Path,
        device: &Device,
        dtype: FloatType,
        ids: &TokenIds,
    ) -> Result<Tensor<3>, TextError> {
        dtype.check_device(device)?;
        let config = Gemma2Config::from_file(&folder.join("config.json"))?;
        let files = WeightFiles::discover(folder, "model")?;
        let embeddings = Self::embeddings_name();
        let expected = vec![config.vocab_size, config.hidden_size];
        if let Some((_, found)) = files.tensor_infos()?.get(&embeddings)
            && *found != expected
        {
            return Err(LoadError::ShapeMismatch {
                path: files.primary().to_path_buf(),
                tensor: embeddings,
                expected,
                found: found.clone(),
            }
            .into());
        }
        run(
            &config,
            ids,
            device,
            |ids| {
                let rows = files.read_rows(&embeddings, ids.as_slice())?;
                // Through the weights' float type, exactly as the loaded table would be.
                Ok(Tensor::<2>::from_data(rows, device)
                    .cast(dtype.dtype())
                    .cast(DType::F32)
                    .reshape([ids.batch_size(), ids.seq_len(), config.hidden_size]))
            },
            |index, x, rotary| {
                let keys = KeyMap::new().strip_prefix(&format!("model.layers.{index}"));
                let layer = load_module(
                    Gemma2DecoderLayer::new(&config, index, device),
                    &files,
                    &keys,
                    dtype,
                )?;
                Ok(layer.forward(x, rotary))
            },
        )
    }
}

/// The encoder's computation, with the embedding lookup and the decoder layers supplied by the
/// caller (held in memory or read from the files).
fn run(
    config: &Gemma2Config,
    ids: &TokenIds,
    device: &Device,
    embed: impl FnOnce(&TokenIds) -> Result<Tensor<3>, TextError>,
    mut layer: impl FnMut(usize, Tensor<3>, &Rotary) -> Result<Tensor<3>, TextError>,
) -> Result<Tensor<3>, TextError> {
    ids.check_vocab(config.vocab_size)?;
    let t = ids.seq_len();
    if t == 0 {
        return Err(TextError::SequenceTooLong {
            model: "Gemma-2 (empty rows)",
            found: 0,
            max: config.max_position_embeddings,
        });
    }
    let mut x = embed(ids)? * (config.hidden_size as f64).sqrt();
    let rotary = Rotary::new(config.head_dim, config.rope_theta, t, device);
    for index in 0..config.encoder_layers() {
        x = layer(index, x, &rotary)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_masks_keys_at_or_beyond_the_window() {
        // transformers: tril(ones, diagonal=-window) is masked, i.e. k <= q - window.
        let device = Device::flex();
        let mask = sliding_window_mask(5, 2, &device)
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        for q in 0..5 {
            for k in 0..5 {
                assert_eq!(mask[q * 5 + k], k + 2 <= q, "q {q} k {k}");
            }
        }
    }

    #[test]
    fn even_layers_slide_and_odd_layers_do_not() {
        let config = Gemma2Config {
            num_hidden_layers: 5,
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            sliding_window: Some(3),
            ..Gemma2Config::default()
        };
        let stack = Gemma2Stack::new(&config, config.encoder_layers(), &Device::flex());
        let windows: Vec<_> = stack.layers.iter().map(|l| l.sliding_window).collect();
        assert_eq!(windows, vec![Some(3), None, Some(3), None]);
    }

    #[test]
    fn a_short_window_changes_the_output_and_a_long_one_does_not() {
        let device = Device::flex();
        let config = |window| Gemma2Config {
            num_hidden_layers: 2,
            vocab_size: 16,
            hidden_size: 8,
            intermediate_size: 16,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 4,
            sliding_window: Some(window),
            ..Gemma2Config::default()
        };
        let ids = TokenIds::from_rows(vec![(0..12).map(|i| i % 16).collect()]).unwrap();
        let run = |window: usize| {
            device.seed(7);
            let gemma = GemmaEncoder::new(config(window), &device);
            gemma
                .forward(&ids)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let full = run(64);
        assert_eq!(full, run(12), "a window covering the sequence is a no-op");
        let short = run(3);
        // Rows within the window of every key agree, later ones differ.
        assert_eq!(full[..3 * 8], short[..3 * 8]);
        assert_ne!(full[3 * 8..], short[3 * 8..]);
    }
}
