//! The whole transformer: loading, input checks and the forward pass.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Int, Tensor};
use editmgt_core::bf16_products::{Isa, hold_weights_in_bf16_of, isa, linear};
use editmgt_core::config::component_folder;
use editmgt_core::limits::is_cpu;
use editmgt_core::{FloatType, KeyMap, WeightFiles, load_module};

use crate::MgtError;
use crate::attention::{JointContext, QueryRows};
use crate::capture::{CaptureRequest, CapturedAttention};
use crate::config::{MICRO_COND_EMBED_DIM, MICRO_COND_VALUES, MgtConfig, SUBFOLDER};
use crate::double_block::{BlockConditioning, DoubleStreamBlock};
use crate::embeddings::{MlpEmbedding, TimeTextEmbedding, sinusoid_rows};
use crate::head::MlmLayer;
use crate::lora::LoraStreams;
use crate::norm::{RmsNorm, activate};
use crate::rotary::{Positions, RotaryTable};
use crate::sampling::{Downsample, TokenEmbedding, Upsample};
use crate::single_block::SingleStreamBlock;

/// The weights' file stem in the transformer folder (`.safetensors` or a sharded index).
pub const WEIGHTS_STEM: &str = "diffusion_pytorch_model";

/// The largest finite float16 value; float16 streams are clipped to it after every block, as
/// the reference does.
const F16_MAX: f64 = 65504.0;

/// One forward's inputs.
///
/// Build it with [`MgtInput::new`] and the `with_*` methods. Every tensor must be on the
/// model's device; float inputs may be in any float type (they are cast to the model's).
#[derive(Debug, Clone)]
pub struct MgtInput {
    /// Current token grid `[B, H, W]` (mask tokens where unknown).
    pub tokens: Tensor<3, Int>,
    /// Source image tokens `[B, H, W]`, injected into every attention layer (editing), or
    /// `None` (text-to-image).
    pub reference: Option<Tensor<3, Int>>,
    /// Text encoder states `[B, T, joint_attention_dim]` (Gemma-2 penultimate layer for EditMGT).
    pub encoder_hidden_states: Tensor<3>,
    /// Pooled text embedding `[B, pooled_projection_dim]` (CLIP's projected pooled output).
    pub pooled: Tensor<2>,
    /// Micro-conditioning `[B, 5]`: `[width, height, crop_top, crop_left, aesthetic_score]`
    /// (the pipeline passes `[1024, 1024, 0, 0, 6]`).
    pub micro_conds: Tensor<2>,
    /// The step's timestep index `t` (the model embeds `t * 1000`).
    pub timestep: f32,
    /// Per-example timesteps `[B]` replacing `timestep` (training passes the float
    /// `mask_ratio * 1000` of each example); `None` uses `timestep` for every row.
    pub timesteps: Option<Vec<f32>>,
    /// Reference strength: `log(strength)` is added to the attention logits between reference
    /// and non-reference tokens (1: no bias). A per-call value; nothing is kept on the model.
    pub reference_strength: f32,
    /// Attention maps to return.
    pub capture: CaptureRequest,
    /// Rotary table; `None` uses the reference pipeline's positions for this grid and text
    /// length (build one with [`MgtTransformer::rotary_table`] to reuse it across steps).
    pub rotary: Option<RotaryTable>,
}

impl MgtInput {
    /// Text-to-image inputs: no reference, strength 1, no capture, standard positions.
    pub fn new(
        tokens: Tensor<3, Int>,
        encoder_hidden_states: Tensor<3>,
        pooled: Tensor<2>,
        micro_conds: Tensor<2>,
        timestep: f32,
    ) -> Self {
        Self {
            tokens,
            reference: None,
            encoder_hidden_states,
            pooled,
            micro_conds,
            timestep,
            timesteps: None,
            reference_strength: 1.0,
            capture: CaptureRequest::none(),
            rotary: None,
        }
    }

    /// Injects the reference grid with the given strength.
    pub fn with_reference(mut self, reference: Tensor<3, Int>, strength: f32) -> Self {
        self.reference = Some(reference);
        self.reference_strength = strength;
        self
    }

    /// One timestep per batch row (each embedded as `t * 1000`), as training uses.
    pub fn with_timesteps(mut self, timesteps: Vec<f32>) -> Self {
        self.timesteps = Some(timesteps);
        self
    }

    /// Requests attention maps.
    pub fn with_capture(mut self, capture: CaptureRequest) -> Self {
        self.capture = capture;
        self
    }

    /// Uses a prepared rotary table.
    pub fn with_rotary(mut self, rotary: RotaryTable) -> Self {
        self.rotary = Some(rotary);
        self
    }
}

/// One forward's outputs.
#[derive(Debug, Clone)]
pub struct MgtOutput {
    /// Float32 logits `[B, codebook_size, H', W']` (`H' = H` with both down- and up-sampling).
    pub logits: Tensor<4>,
    /// The requested maps, in the order of the request (duplicates removed).
    pub captures: Vec<CapturedAttention>,
}

/// What [`MgtTransformer::forward_features`] returns.
#[derive(Debug, Clone)]
pub struct MgtFeatures {
    /// The head's input, channels-last `[B, H', W', C]` in the model's float type.
    pub features: Tensor<4>,
    /// The requested maps, in the order of the request (duplicates removed).
    pub captures: Vec<CapturedAttention>,
}

impl MgtOutput {
    /// The map captured at `block`, if it was requested.
    pub fn capture(&self, block: usize) -> Option<&Tensor<3>> {
        self.captures
            .iter()
            .find(|c| c.block == block)
            .map(|c| &c.text_to_image)
    }
}

/// EditMGT's masked generative transformer (the reference's `Transformer2DModel`).
///
/// Field names follow the checkpoint; [`MgtTransformer::checkpoint_keys`] maps the few that
/// differ. See the crate documentation for the computation.
#[derive(Module, Debug)]
pub struct MgtTransformer {
    /// `connector.projector` (EditMGT): `joint_attention_dim -> width`.
    pub connector: Option<Linear>,
    /// Text states to the transformer width.
    pub context_embedder: Linear,
    /// RMSNorm of the text states.
    pub encoder_proj_layer_norm: RmsNorm,
    /// Pooled vector plus micro-conds to the conditioning vector (no biases).
    pub cond_embed: MlpEmbedding,
    /// Timestep and conditioning vector to `temb`.
    pub time_text_embed: TimeTextEmbedding,
    /// Token embedding.
    pub embed: TokenEmbedding,
    /// `down_block.downsample`.
    pub downsample: Option<Downsample>,
    /// RMSNorm before `project_to_hidden`.
    pub project_to_hidden_norm: RmsNorm,
    /// Grid channels to the transformer width (no bias).
    pub project_to_hidden: Linear,
    /// Double-stream blocks.
    pub transformer_blocks: Vec<DoubleStreamBlock>,
    /// Single-stream blocks.
    pub single_transformer_blocks: Vec<SingleStreamBlock>,
    /// RMSNorm before `project_from_hidden`.
    pub project_from_hidden_norm: RmsNorm,
    /// Transformer width back to grid channels (no bias).
    pub project_from_hidden: Linear,
    /// `up_block.upsample`.
    pub upsample: Option<Upsample>,
    /// The logits head.
    pub mlm_layer: MlmLayer,
    #[module(skip)]
    config: MgtConfig,
    #[module(skip)]
    float: FloatType,
    /// The float type activations are computed in (`float`, except `f32` on the CPU).
    #[module(skip)]
    compute: FloatType,
    /// The CPU instructions the linear layers' bf16 products run on, if they do.
    #[module(skip)]
    products: Option<Isa>,
    #[module(skip)]
    lora_streams: LoraStreams,
}

/// Checked input shapes.
struct Shapes {
    batch: usize,
    grid_h: usize,
    grid_w: usize,
    text_len: usize,
}

impl MgtTransformer {
    /// Builds the model for `config` with lazily initialised random weights (nothing is
    /// allocated until a weight is read or loaded), in float32.
    pub fn new(config: &MgtConfig, device: &Device) -> Result<Self, MgtError> {
        config.validate(Path::new("editmgt/config.json"))?;
        let (heads, head_dim) = (config.num_attention_heads, config.attention_head_dim);
        let dim = config.inner_dim();
        let linear = |d_in: usize, d_out: usize, bias: bool| {
            LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
        };
        let connector = match config.connector() {
            crate::config::Connector::Linear => Some(linear(config.joint_attention_dim, dim, true)),
            crate::config::Connector::None => None,
        };
        let context_in = if connector.is_some() {
            dim
        } else {
            config.joint_attention_dim
        };
        Ok(Self {
            connector,
            context_embedder: linear(context_in, dim, true),
            encoder_proj_layer_norm: RmsNorm::new(dim, device),
            cond_embed: MlpEmbedding::new(config.cond_embed_in_dim(), dim, dim, false, device),
            time_text_embed: TimeTextEmbedding::new(dim, device),
            embed: TokenEmbedding::new(config.vocab_size, dim, device),
            downsample: config.downsample.then(|| Downsample::new(dim, device)),
            project_to_hidden_norm: RmsNorm::new(dim, device),
            project_to_hidden: linear(dim, dim, false),
            transformer_blocks: (0..config.num_layers)
                .map(|_| DoubleStreamBlock::new(heads, head_dim, device))
                .collect(),
            single_transformer_blocks: (0..config.num_single_layers)
                .map(|_| SingleStreamBlock::new(heads, head_dim, device))
                .collect(),
            project_from_hidden_norm: RmsNorm::new(dim, device),
            project_from_hidden: linear(dim, dim, false),
            upsample: config.upsample.then(|| Upsample::new(dim, device)),
            mlm_layer: MlmLayer::new(dim, config.codebook_size, device),
            config: config.clone(),
            float: FloatType::F32,
            compute: FloatType::F32,
            products: None,
            lora_streams: LoraStreams::default(),
        })
    }

    /// Loads `<model_dir>/editmgt` (configuration and weights) onto `device` in `float`.
    pub fn load(model_dir: &Path, device: &Device, float: FloatType) -> Result<Self, MgtError> {
        let folder = component_folder(model_dir, SUBFOLDER)?;
        Self::load_folder(&folder, device, float)
    }

    /// Loads a transformer folder holding `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or a sharded `diffusion_pytorch_model.safetensors.index.json`), stored in float32,
    /// float16 or bfloat16, converting the weights to `float`.
    ///
    /// On the CPU, [`FloatType::BF16`] means bf16 products: activations stay in `f32` and the
    /// linear layers' weights are held in bf16 and multiplied with the CPU's bf16 instructions,
    /// summing in `f32` ([`editmgt_core::bf16_products`]), where the CPU has AMX-BF16 or
    /// AVX512-BF16 ([`MgtTransformer::bf16_products`] says which); elsewhere the model runs in
    /// `f32`. On GPU backends every weight and activation is bf16.
    pub fn load_folder(folder: &Path, device: &Device, float: FloatType) -> Result<Self, MgtError> {
        float.check_device(device)?;
        let config = MgtConfig::from_folder(folder)?;
        let files = WeightFiles::discover(folder, WEIGHTS_STEM)?;
        let model = Self::new(&config, device)?;
        let cpu_bf16 = float == FloatType::BF16 && is_cpu(device);
        let compute = if cpu_bf16 { FloatType::F32 } else { float };
        let mut model = load_module(model, &files, &Self::checkpoint_keys(), compute)?;
        model.float = float;
        model.compute = compute;
        if cpu_bf16 {
            model = model.with_bf16_products();
        }
        Ok(model)
    }

    /// This `f32` model on the CPU with bf16 products: the linear layers' weights cast to bf16
    /// and multiplied with the CPU's AMX-BF16 or AVX512-BF16 instructions, activations in `f32`
    /// (what loading in [`FloatType::BF16`] gives on the CPU). Unchanged when the CPU has
    /// neither, when the model is not on the CPU, or when it is not an `f32` model.
    pub fn with_bf16_products(self) -> Self {
        let device = self.context_embedder.weight.val().device();
        if !is_cpu(&device) || self.compute != FloatType::F32 || self.products.is_some() {
            return self;
        }
        let (mut model, cast) = hold_weights_in_bf16_of(
            self,
            &["Linear", "PointwiseConv", "PatchConv", "PatchConvTranspose"],
        );
        if cast {
            model.products = isa();
            model.float = FloatType::BF16;
        }
        model
    }

    /// The CPU instructions the linear layers' bf16 products run on (`Some` only for a model
    /// loaded in [`FloatType::BF16`] on a CPU that has AMX-BF16 or AVX512-BF16).
    pub fn bf16_products(&self) -> Option<Isa> {
        self.products
    }

    /// Checkpoint names to module paths: the renames where our modules differ from the
    /// reference's (`ff.net.0.proj`, `ff.net.2`, `attn.to_out.0`, `connector.projector`,
    /// `down_block.downsample`, `up_block.upsample`).
    pub fn checkpoint_keys() -> KeyMap {
        KeyMap::new()
            .rename("connector.projector", "connector")
            .rename("down_block.downsample", "downsample")
            .rename("up_block.upsample", "upsample")
            .rename("attn.to_out.0", "attn.to_out")
            .rename("ff.net.0.proj", "ff.proj_in")
            .rename("ff.net.2", "ff.proj_out")
            .rename("ff_context.net.0.proj", "ff_context.proj_in")
            .rename("ff_context.net.2", "ff_context.proj_out")
    }

    pub(crate) fn lora_streams_value(&self) -> LoraStreams {
        self.lora_streams
    }

    pub(crate) fn set_lora_streams_value(&mut self, streams: LoraStreams) {
        self.lora_streams = streams;
    }

    /// The configuration.
    pub fn config(&self) -> &MgtConfig {
        &self.config
    }

    /// The float type the model was loaded in (see [`MgtTransformer::load_folder`] for what
    /// [`FloatType::BF16`] means on the CPU).
    pub fn float_type(&self) -> FloatType {
        self.float
    }

    /// Number of blocks (double-stream first, then single-stream), the range of capture indices.
    pub fn num_blocks(&self) -> usize {
        self.transformer_blocks.len() + self.single_transformer_blocks.len()
    }

    /// The reference pipeline's positions for a `height x width` token grid and `text_len`
    /// text rows (image positions on the transformer's grid, halved with `downsample`).
    pub fn positions(&self, text_len: usize, height: usize, width: usize) -> Positions {
        let f = self.config.grid_factor();
        Positions::grid(text_len, height / f, width / f)
    }

    /// A rotary table for `positions`, to reuse across forwards.
    pub fn rotary_table(&self, positions: &Positions, device: &Device) -> RotaryTable {
        RotaryTable::new(positions, &self.config.axes_dims_rope, device)
    }

    /// One forward pass: logits for every position and the requested attention maps.
    ///
    /// Bad inputs (mismatched batches, grids or widths, token ids outside the vocabulary, text
    /// length different from the positions, unknown capture blocks or rows) are reported as
    /// [`MgtError`] before anything is computed.
    pub fn forward(&self, input: MgtInput) -> Result<MgtOutput, MgtError> {
        let features = self.forward_features(input)?;
        Ok(MgtOutput {
            logits: self.logits(features.features),
            captures: features.captures,
        })
    }

    /// The masked-token head ([`MlmLayer::forward`]) on features from
    /// [`MgtTransformer::forward_features`]: channels-last `[B, H, W, C]` to float32 logits
    /// `[B, codebook_size, H, W]`. Any subset of batch rows (or of grid rows) can be passed, so
    /// a caller bounded in buffer size computes the logits a few rows at a time.
    pub fn logits(&self, features: Tensor<4>) -> Tensor<4> {
        self.mlm_layer
            .forward_with(features, self.products.is_some())
    }

    /// [`MgtTransformer::forward`] up to, not including, the masked-token head: the features
    /// `[B, H, W, C]` the head reads, and the requested attention maps. The logits are
    /// `codebook_size / C` times larger than the features (8 for the released model; 256 MiB in
    /// `f32` for a guidance batch of one edit), so a caller that must bound its buffers takes
    /// them from [`MgtTransformer::logits`] in parts.
    pub fn forward_features(&self, input: MgtInput) -> Result<MgtFeatures, MgtError> {
        let shapes = self.check(&input)?;
        let MgtInput {
            tokens,
            reference,
            encoder_hidden_states,
            pooled,
            micro_conds,
            timestep,
            timesteps,
            reference_strength,
            capture,
            rotary,
        } = input;
        let device = tokens.device();
        let dtype = self.compute.dtype();
        let config = &self.config;
        let double = self.transformer_blocks.len();
        let capture = capture.resolve(
            self.num_blocks(),
            double,
            shapes.batch,
            shapes.text_len,
            &device,
        )?;
        let rotary = rotary.unwrap_or_else(|| {
            let positions = Positions::grid(shapes.text_len, shapes.grid_h, shapes.grid_w);
            self.rotary_table(&positions, &device)
        });

        // Text states.
        let mut text = encoder_hidden_states.cast(dtype);
        if let Some(connector) = &self.connector {
            text = linear(connector, text);
        }
        let text = self
            .encoder_proj_layer_norm
            .forward(linear(&self.context_embedder, text));

        // Conditioning: c = cond_embed([pooled, micro-conds]); temb (and reference_temb, t = 0).
        let micro = sinusoid_rows(micro_conds, MICRO_COND_EMBED_DIM).cast(dtype);
        let c = self
            .cond_embed
            .forward(Tensor::cat(vec![pooled.cast(dtype), micro], 1));
        let pooled_emb = self.time_text_embed.text_embedder.forward(c);
        let step_emb = match &timesteps {
            Some(steps) => self.time_text_embed.timesteps(steps, dtype, &device),
            None => self.time_text_embed.timestep(timestep, dtype, &device),
        };
        let temb = pooled_emb.clone() + step_emb;
        let with_reference = reference.is_some();
        let streams = if with_reference {
            let reference_temb = pooled_emb + self.time_text_embed.timestep(0.0, dtype, &device);
            Tensor::stack(vec![temb.clone(), reference_temb], 1)
        } else {
            temb.clone().unsqueeze_dim(1)
        };
        let cond = BlockConditioning {
            text: activate(temb),
            streams: activate(streams),
        };

        // Image (and reference) tokens, interleaved per batch row so that one pass embeds both
        // and the result is [B, streams * N, D] without a copy.
        let [batch, height, width] = tokens.dims();
        let grid = match reference {
            Some(reference) => {
                Tensor::stack::<4>(vec![tokens, reference], 1).reshape([2 * batch, height, width])
            }
            None => tokens,
        };
        let mut image = self.embed_grid(grid);
        let [rows, n, dim] = image.dims();
        image = image.reshape([batch, rows / batch * n, dim]);

        let mut ctx = JointContext::new(
            config.num_attention_heads,
            &rotary,
            with_reference,
            reference_strength,
            dtype,
            &device,
        );
        ctx.lora = self.lora_streams;
        ctx.bf16_products = self.products.is_some();
        let clip = |x: Tensor<3>| {
            if dtype == DType::F16 {
                x.clamp(-F16_MAX, F16_MAX)
            } else {
                x
            }
        };

        let mut captured = BTreeMap::new();
        let mut text = text;
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            let (t, x, map) = block.forward(&ctx, &cond, text, image, capture.for_block(i));
            text = clip(t);
            image = clip(x);
            if let Some(map) = map {
                captured.insert(i, map);
            }
        }
        let singles = self.single_transformer_blocks.len();
        let mut text = Some(text);
        for (j, block) in self.single_transformer_blocks.iter().enumerate() {
            let Some(text_in) = text.take() else {
                break;
            };
            let rows = if j + 1 == singles {
                QueryRows::ImageOnly
            } else {
                QueryRows::All
            };
            let (t, x, map) = block.forward(
                &ctx,
                &cond,
                text_in,
                image,
                capture.for_block(double + j),
                rows,
            );
            text = t.map(clip);
            image = clip(x);
            if let Some(map) = map {
                captured.insert(double + j, map);
            }
        }
        // The image tokens only (the last single block already dropped the reference).
        let image = image.narrow(1, 0, shapes.grid_h * shapes.grid_w);

        let x = linear(
            &self.project_from_hidden,
            self.project_from_hidden_norm.forward(image),
        )
        .reshape([batch, shapes.grid_h, shapes.grid_w, dim]);
        let x = match &self.upsample {
            Some(upsample) => upsample.forward(x),
            None => x,
        };
        let captures = capture
            .blocks
            .iter()
            .filter_map(|block| {
                captured.remove(block).map(|map| CapturedAttention {
                    block: *block,
                    text_to_image: map,
                })
            })
            .collect();
        Ok(MgtFeatures {
            features: x,
            captures,
        })
    }

    /// Token grid `[B', H, W]` to transformer tokens `[B', N, D]`.
    fn embed_grid(&self, grid: Tensor<3, Int>) -> Tensor<3> {
        let x = self.embed.forward(grid);
        let x = match &self.downsample {
            Some(downsample) => downsample.forward(x),
            None => x,
        };
        let [b, h, w, c] = x.dims();
        let x = self
            .project_to_hidden_norm
            .forward(x.reshape([b, h * w, c]));
        linear(&self.project_to_hidden, x)
    }

    /// Validates the inputs against each other and the configuration.
    fn check(&self, input: &MgtInput) -> Result<Shapes, MgtError> {
        let config = &self.config;
        let [batch, height, width] = input.tokens.dims();
        if batch == 0 || height == 0 || width == 0 {
            return Err(MgtError::InvalidGrid {
                height,
                width,
                reason: "the batch and both sides must be non-empty",
            });
        }
        if config.downsample && (!height.is_multiple_of(2) || !width.is_multiple_of(2)) {
            return Err(MgtError::InvalidGrid {
                height,
                width,
                reason: "the model halves the grid (downsample), so both sides must be even",
            });
        }
        let batch_of = |input: &'static str, found: usize| {
            if found == batch {
                Ok(())
            } else {
                Err(MgtError::BatchMismatch {
                    input,
                    expected: batch,
                    found,
                })
            }
        };
        let width_of = |input: &'static str, found: usize, expected: usize| {
            if found == expected {
                Ok(())
            } else {
                Err(MgtError::WidthMismatch {
                    input,
                    expected,
                    found,
                })
            }
        };
        if let Some(reference) = &input.reference {
            let [rb, rh, rw] = reference.dims();
            batch_of("reference", rb)?;
            if [rh, rw] != [height, width] {
                return Err(MgtError::GridMismatch {
                    tokens: [height, width],
                    reference: [rh, rw],
                });
            }
        }
        let [eb, text_len, ew] = input.encoder_hidden_states.dims();
        batch_of("encoder_hidden_states", eb)?;
        width_of("encoder_hidden_states", ew, config.text_state_dim())?;
        let [pb, pw] = input.pooled.dims();
        batch_of("pooled", pb)?;
        width_of("pooled", pw, config.pooled_projection_dim)?;
        let [mb, mw] = input.micro_conds.dims();
        batch_of("micro_conds", mb)?;
        width_of("micro_conds", mw, MICRO_COND_VALUES)?;
        if !input.timestep.is_finite() {
            return Err(MgtError::InvalidTimestep(input.timestep));
        }
        if let Some(steps) = &input.timesteps {
            batch_of("timesteps", steps.len())?;
            if let Some(bad) = steps.iter().find(|t| !t.is_finite()) {
                return Err(MgtError::InvalidTimestep(*bad));
            }
        }
        let strength = input.reference_strength;
        if !(strength.is_finite() && strength > 0.0) {
            return Err(MgtError::InvalidStrength(strength));
        }

        let f = config.grid_factor();
        let (grid_h, grid_w) = (height / f, width / f);
        if let Some(rotary) = &input.rotary {
            if rotary.text_len() != text_len {
                return Err(MgtError::TextLength {
                    positions: rotary.text_len(),
                    found: text_len,
                });
            }
            if rotary.image_len() != grid_h * grid_w {
                return Err(MgtError::ImagePositions {
                    positions: rotary.image_len(),
                    tokens: grid_h * grid_w,
                });
            }
            if rotary.head_dim() != config.attention_head_dim {
                return Err(MgtError::InvalidPositions {
                    reason: format!(
                        "the rotary table is {} wide, the heads {}",
                        rotary.head_dim(),
                        config.attention_head_dim
                    ),
                });
            }
        }

        check_ids("tokens", &input.tokens, config.vocab_size)?;
        if let Some(reference) = &input.reference {
            check_ids("reference", reference, config.vocab_size)?;
        }
        Ok(Shapes {
            batch,
            grid_h,
            grid_w,
            text_len,
        })
    }
}

/// Every id of `grid` must be in `[0, vocab_size)` (one small read-back).
fn check_ids(
    input: &'static str,
    grid: &Tensor<3, Int>,
    vocab_size: usize,
) -> Result<(), MgtError> {
    let flat = grid.clone().flatten::<1>(0, 2);
    let bounds = Tensor::cat(vec![flat.clone().min(), flat.max()], 0)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap_or_default();
    if let [min, max] = bounds[..] {
        if min < 0 {
            return Err(MgtError::TokenOutOfRange {
                input,
                id: min,
                vocab_size,
            });
        }
        if max >= vocab_size as i64 {
            return Err(MgtError::TokenOutOfRange {
                input,
                id: max,
                vocab_size,
            });
        }
    }
    Ok(())
}
