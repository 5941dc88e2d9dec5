use std::path::Path;

use burn::module::{Initializer, Module};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use editmgt_core::config::component_folder;
use editmgt_core::token_table::TokenTable;
use editmgt_core::{FloatType, KeyMap, WeightFiles, load_module};

use super::config::ClipTextConfig;
use crate::ops::{gelu_erf, layer_norm, linear, quick_gelu};
use crate::{TextError, TokenIds};

/// The checkpoint name (and module path) of the token embedding table.
const TOKEN_EMBEDDING: &str = "text_model.embeddings.token_embedding.weight";

/// The MLP activation of a CLIP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClipActivation {
    /// Exact (erf) GELU (`gelu`), as in OpenCLIP ViT-H/14.
    Gelu,
    /// `x * sigmoid(1.702 x)` (`quick_gelu`), as in OpenAI CLIP.
    QuickGelu,
}

/// Token and position embeddings (`text_model.embeddings`).
#[derive(Module, Debug)]
pub(crate) struct ClipEmbeddings {
    /// `token_embedding.weight`, in blocks of rows (193 MiB in f32 for the released model: more
    /// than a GPU adapter may bind as one buffer); loaded on its own ([`TokenTable::load`]).
    #[module(skip)]
    token_embedding: TokenTable,
    position_embedding: Embedding,
}

/// Multi-head self-attention with biases (`self_attn`).
#[derive(Module, Debug)]
pub(crate) struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    #[module(skip)]
    num_heads: usize,
}

/// `fc2(act(fc1(x)))` (`mlp`).
#[derive(Module, Debug)]
pub(crate) struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    #[module(skip)]
    activation: ClipActivation,
}

/// One pre-LN transformer layer (`encoder.layers.<i>`).
#[derive(Module, Debug)]
pub(crate) struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
    #[module(skip)]
    eps: f64,
}

/// The layer stack (`text_model.encoder`).
#[derive(Module, Debug)]
pub(crate) struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

/// The text transformer (`text_model`).
#[derive(Module, Debug)]
pub(crate) struct ClipTextTransformer {
    embeddings: ClipEmbeddings,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
}

/// transformers' `CLIPTextModelWithProjection` as a Burn module; field names follow the
/// checkpoint's tensor names.
#[derive(Module, Debug)]
pub(crate) struct ClipTextModelWithProjection {
    text_model: ClipTextTransformer,
    text_projection: Linear,
}

impl ClipTextModelWithProjection {
    /// The module with lazily initialised parameters (nothing is allocated until a parameter is
    /// read or loaded).
    fn new(config: &ClipTextConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let activation = if config.hidden_act == "quick_gelu" {
            ClipActivation::QuickGelu
        } else {
            ClipActivation::Gelu
        };
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| ClipEncoderLayer {
                self_attn: ClipAttention {
                    q_proj: LinearConfig::new(h, h).init(device),
                    k_proj: LinearConfig::new(h, h).init(device),
                    v_proj: LinearConfig::new(h, h).init(device),
                    out_proj: LinearConfig::new(h, h).init(device),
                    num_heads: config.num_attention_heads,
                },
                layer_norm1: norm(),
                mlp: ClipMlp {
                    fc1: LinearConfig::new(h, config.intermediate_size).init(device),
                    fc2: LinearConfig::new(config.intermediate_size, h).init(device),
                    activation,
                },
                layer_norm2: norm(),
                eps: config.layer_norm_eps,
            })
            .collect();
        Self {
            text_model: ClipTextTransformer {
                embeddings: ClipEmbeddings {
                    // `Embedding`'s own initialiser.
                    token_embedding: TokenTable::new(
                        config.vocab_size,
                        h,
                        &Initializer::Normal {
                            mean: 0.0,
                            std: 1.0,
                        },
                        device,
                    ),
                    position_embedding: EmbeddingConfig::new(config.max_position_embeddings, h)
                        .init(device),
                },
                encoder: ClipEncoder { layers },
                final_layer_norm: norm(),
            },
            text_projection: LinearConfig::new(h, config.projection_dim)
                .with_bias(false)
                .init(device),
        }
    }
}

impl ClipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, h] = x.dims();
        let heads = self.num_heads;
        let d = h / heads;
        let split = |y: Tensor<3>| y.reshape([b, t, heads, d]).swap_dims(1, 2);
        let q = split(linear(&self.q_proj, x.clone()));
        let k = split(linear(&self.k_proj, x.clone()));
        let v = split(linear(&self.v_proj, x));
        let options = AttentionModuleOptions {
            scale: Some((d as f64).powf(-0.5)),
            softcap: None,
            is_causal: true,
        };
        let out = burn::tensor::module::attention(q, k, v, None, None, options);
        linear(&self.out_proj, out.swap_dims(1, 2).reshape([b, t, h]))
    }
}

impl ClipMlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = linear(&self.fc1, x);
        let y = match self.activation {
            ClipActivation::Gelu => gelu_erf(y),
            ClipActivation::QuickGelu => quick_gelu(y),
        };
        linear(&self.fc2, y)
    }
}

impl ClipEncoderLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = self
            .self_attn
            .forward(layer_norm(&self.layer_norm1, x.clone(), self.eps));
        let x = x + y;
        let y = self
            .mlp
            .forward(layer_norm(&self.layer_norm2, x.clone(), self.eps));
        x + y
    }
}

/// What [`ClipTextEncoder::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// The pooled, projected vector `[batch, projection_dim]` (transformers' `text_embeds`):
    /// the only CLIP output EditMGT uses.
    pub text_embeds: Tensor<2>,
    /// The final-LayerNorm output `[batch, seq, hidden]` (`last_hidden_state`).
    pub last_hidden_state: Tensor<3>,
    /// transformers' `hidden_states` when asked for: the embeddings, then the residual stream
    /// after each layer (`num_hidden_layers + 1` tensors `[batch, seq, hidden]`, before the
    /// final LayerNorm). Empty otherwise.
    pub hidden_states: Vec<Tensor<3>>,
}

/// The CLIP text tower with its projection (transformers' `CLIPTextModelWithProjection`):
/// token + position embeddings, pre-LN layers under a causal mask, final LayerNorm, the state at
/// the end token, `text_projection` (no bias).
///
/// Compute follows the weights' float type only in the matrix products (see the crate docs);
/// the result is always f32.
#[derive(Debug)]
pub struct ClipTextEncoder {
    model: ClipTextModelWithProjection,
    config: ClipTextConfig,
    device: Device,
}

impl ClipTextEncoder {
    /// The checkpoint-to-module name mapping (identity: the module mirrors the checkpoint).
    pub fn key_map() -> KeyMap {
        KeyMap::new()
    }

    /// Loads `text_encoder/` of a model folder (see [`ClipTextEncoder::from_folder`]).
    pub fn from_model_dir(
        model_dir: &Path,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        let folder = component_folder(model_dir, "text_encoder")?;
        Self::from_folder(&folder, device, dtype)
    }

    /// Loads `config.json` and `model.safetensors` (or its sharded index) from `folder` onto
    /// `device`, holding the weights in `dtype` whatever type the file stores.
    pub fn from_folder(
        folder: &Path,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        let config = ClipTextConfig::from_file(&folder.join("config.json"))?;
        let files = WeightFiles::discover(folder, "model")?;
        Self::load(config, &files, device, dtype)
    }

    /// Loads `files` into a model built from `config`.
    pub fn load(
        config: ClipTextConfig,
        files: &WeightFiles,
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, TextError> {
        dtype.check_device(device)?;
        let model = ClipTextModelWithProjection::new(&config, device);
        let mut model = load_module(model, files, &Self::key_map(), dtype)?;
        model.text_model.embeddings.token_embedding = TokenTable::load(
            files,
            TOKEN_EMBEDDING,
            [config.vocab_size, config.hidden_size],
            device,
            dtype,
        )?;
        Ok(Self {
            model,
            config,
            device: device.clone(),
        })
    }

    /// The model with lazily initialised parameters: building allocates nothing (so the
    /// released configuration can be inspected with [`ClipTextEncoder::parameter_table`]); a
    /// forward pass materialises random weights (transformers-like initialisers, zeroed norms
    /// for Gemma), which is only useful for benchmarks.
    pub fn new(config: ClipTextConfig, device: &Device) -> Self {
        Self {
            model: ClipTextModelWithProjection::new(&config, device),
            config,
            device: device.clone(),
        }
    }

    /// Checkpoint names and shapes of every tensor the model reads.
    pub fn parameter_table(&self) -> Vec<editmgt_core::shapes::ParamEntry> {
        let mut table = vec![editmgt_core::shapes::ParamEntry {
            module_path: TOKEN_EMBEDDING.into(),
            checkpoint_name: TOKEN_EMBEDDING.into(),
            shape: self
                .model
                .text_model
                .embeddings
                .token_embedding
                .shape()
                .to_vec(),
        }];
        table.extend(editmgt_core::shapes::parameter_table(
            &self.model,
            &Self::key_map(),
        ));
        table
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the model on a batch of token rows and returns the pooled, projected vector and the
    /// final hidden state; `hidden_states` is filled when `with_hidden_states` is set.
    ///
    /// The pooled row is the end token: with the legacy `eos_token_id == 2` configuration (the
    /// released one) the position of the largest id in the row (the first, on ties), otherwise
    /// the first position holding `eos_token_id` (position 0 if there is none, as in
    /// transformers).
    pub fn forward(
        &self,
        ids: &TokenIds,
        with_hidden_states: bool,
    ) -> Result<ClipOutput, TextError> {
        let [b, t] = [ids.batch_size(), ids.seq_len()];
        if t > self.config.max_position_embeddings {
            return Err(TextError::SequenceTooLong {
                model: "CLIP",
                found: t,
                max: self.config.max_position_embeddings,
            });
        }
        if t == 0 {
            return Err(TextError::SequenceTooLong {
                model: "CLIP (an empty row has no end token)",
                found: 0,
                max: self.config.max_position_embeddings,
            });
        }
        ids.check_vocab(self.config.vocab_size)?;
        let text = &self.model.text_model;
        let tokens = text
            .embeddings
            .token_embedding
            .lookup(ids.as_slice())
            .cast(DType::F32)
            .reshape([ids.batch_size(), t, self.config.hidden_size]);
        let positions = text
            .embeddings
            .position_embedding
            .weight
            .val()
            .narrow(0, 0, t)
            .cast(DType::F32)
            .unsqueeze_dim::<3>(0);
        let mut x = tokens + positions;
        let mut hidden_states = Vec::new();
        if with_hidden_states {
            hidden_states.push(x.clone());
        }
        for layer in &text.encoder.layers {
            x = layer.forward(x);
            if with_hidden_states {
                hidden_states.push(x.clone());
            }
        }
        let last_hidden_state = layer_norm(&text.final_layer_norm, x, self.config.layer_norm_eps);

        let pooled_rows: Vec<i64> = ids
            .rows()
            .enumerate()
            .map(|(row, tokens)| (row * t + self.pool_position(tokens)) as i64)
            .collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(pooled_rows, [b]), &self.device);
        let hidden = last_hidden_state.dims()[2];
        let pooled = last_hidden_state
            .clone()
            .reshape([b * t, hidden])
            .select(0, index);
        let text_embeds = linear(&self.model.text_projection, pooled);
        Ok(ClipOutput {
            text_embeds,
            last_hidden_state,
            hidden_states,
        })
    }

    /// The pooled (end-token) position of one row.
    fn pool_position(&self, row: &[u32]) -> usize {
        match self.config.eos_token_id {
            Some(eos) if eos != 2 => row.iter().position(|&id| id == eos).unwrap_or(0),
            _ => {
                // First position of the maximum (torch.argmax returns the first on ties).
                let mut best = 0;
                for (i, &id) in row.iter().enumerate() {
                    if id > row[best] {
                        best = i;
                    }
                }
                best
            }
        }
    }
}
