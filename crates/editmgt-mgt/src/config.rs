//! The transformer's configuration (`editmgt/config.json`).
//!
//! The released EditMGT checkpoint and plain Meissonic checkpoints share the reference's
//! `Transformer2DModel` configuration. Fields a checkpoint leaves out take the reference
//! constructor's defaults (as diffusers does when it instantiates the model). Values this port
//! does not implement are refused with [`LoadError::Unsupported`], naming the field.

use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::{Requirements, component_folder, from_json_value, read_json};
use serde::{Deserialize, Serialize};

/// The component sub-folder of a model folder that holds the transformer.
pub const SUBFOLDER: &str = "editmgt";

/// Width of each micro-conditioning value's sinusoidal embedding (5 values make 1280).
pub const MICRO_COND_EMBED_DIM: usize = 256;

/// Number of micro-conditioning values per row: `[width, height, crop_top, crop_left, aesthetic]`.
pub const MICRO_COND_VALUES: usize = 5;

/// Width of the sinusoidal timestep embedding fed to `time_text_embed`.
pub const TIMESTEP_EMBED_DIM: usize = 256;

/// Rotary base frequency (`theta`) of the positional embedding.
pub const ROPE_THETA: f64 = 10_000.0;

/// Epsilon of every RMSNorm, LayerNorm and q/k norm in the transformer.
pub const NORM_EPS: f64 = 1e-6;

/// `Transformer2DModel` configuration, as stored in `editmgt/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgtConfig {
    /// Patch size (only 1 is supported; the reference ignores other values).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    /// Unused by the computation (the reference keeps it as `out_channels`).
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Number of double-stream blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// Number of single-stream blocks.
    #[serde(default = "default_num_single_layers")]
    pub num_single_layers: usize,
    /// Width of one attention head.
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: usize,
    /// Number of attention heads; the transformer width is `heads * head_dim`.
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the text encoder states (`encoder_hidden_states`) fed to the connector.
    #[serde(default = "default_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Width of the pooled text embedding.
    #[serde(default = "default_pooled_projection_dim")]
    pub pooled_projection_dim: usize,
    /// Guidance embedding (FLUX-dev style); must be false.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Rotary dimensions of the three position axes; they must sum to the head width.
    #[serde(default = "default_axes_dims_rope")]
    pub axes_dims_rope: Vec<usize>,
    /// Number of token ids the embedding accepts (codebook plus the mask token).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Number of logits per position (VQ codebook size).
    #[serde(default = "default_codebook_size")]
    pub codebook_size: usize,
    /// Whether the token grid is halved (2x2 patches) before the blocks.
    #[serde(default)]
    pub downsample: bool,
    /// Whether the grid is doubled again (transposed 2x2 convolution) after the blocks.
    #[serde(default)]
    pub upsample: bool,
    /// Text encoders the model was trained with: `CLIP` (Meissonic) or `CLIP_Gemma2` (EditMGT).
    #[serde(default = "default_text_encoder_architecture")]
    pub text_encoder_architecture: String,
    /// Projection of the text encoder states: `linear` (EditMGT) or absent/`none` (Meissonic).
    #[serde(default)]
    pub connector_type: Option<String>,
}

fn default_patch_size() -> usize {
    1
}
fn default_in_channels() -> usize {
    64
}
fn default_num_layers() -> usize {
    19
}
fn default_num_single_layers() -> usize {
    38
}
fn default_attention_head_dim() -> usize {
    128
}
fn default_num_attention_heads() -> usize {
    24
}
fn default_joint_attention_dim() -> usize {
    4096
}
fn default_pooled_projection_dim() -> usize {
    768
}
fn default_axes_dims_rope() -> Vec<usize> {
    vec![16, 56, 56]
}
fn default_vocab_size() -> usize {
    8256
}
fn default_codebook_size() -> usize {
    8192
}
fn default_text_encoder_architecture() -> String {
    "CLIP".to_string()
}

/// How `encoder_hidden_states` reach the transformer width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// No connector: `context_embedder` takes the encoder states directly (Meissonic).
    None,
    /// `connector.projector`: one Linear with bias from `joint_attention_dim` (EditMGT).
    Linear,
}

/// The text encoders a checkpoint was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderArchitecture {
    /// CLIP only (Meissonic): 77 text positions.
    Clip,
    /// CLIP pooled vector plus Gemma-2 hidden states (EditMGT): 256 text positions.
    ClipGemma2,
}

impl TextEncoderArchitecture {
    /// The text length the reference pipeline passes (its `txt_ids` rows).
    pub fn text_length(self) -> usize {
        match self {
            TextEncoderArchitecture::Clip => 77,
            TextEncoderArchitecture::ClipGemma2 => 256,
        }
    }
}

impl MgtConfig {
    /// Reads `<folder>/config.json` (a transformer folder such as `model/editmgt`) and checks it.
    pub fn from_folder(folder: &Path) -> Result<Self, LoadError> {
        let path = folder.join("config.json");
        let config: MgtConfig = read_json(&path, "the transformer configuration")?;
        config.validate(&path)?;
        Ok(config)
    }

    /// Reads `<model>/editmgt/config.json` from a model folder in the released layout.
    pub fn from_model_dir(model: &Path) -> Result<Self, LoadError> {
        Self::from_folder(&component_folder(model, SUBFOLDER)?)
    }

    /// Parses and checks a configuration given as JSON (`path` only names it in errors).
    pub fn from_json_value(value: serde_json::Value, path: &Path) -> Result<Self, LoadError> {
        let config: MgtConfig = from_json_value(value, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Refuses what this port does not implement, naming the field (`path` names the file).
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let mut req = Requirements::new(path);
        req.equal("patch_size", &self.patch_size, &1);
        req.equal("guidance_embeds", &self.guidance_embeds, &false);
        req.check(
            "connector_type",
            &self.connector_type,
            self.parse_connector().is_some(),
            "only \"linear\" (EditMGT) or no connector (Meissonic) is supported",
        );
        req.check(
            "text_encoder_architecture",
            &self.text_encoder_architecture,
            self.parse_text_encoder().is_some(),
            "only \"CLIP_Gemma2\" (EditMGT) and \"CLIP\" (Meissonic) are supported",
        );
        req.check(
            "num_attention_heads",
            &self.num_attention_heads,
            self.num_attention_heads > 0,
            "must be positive",
        );
        req.check(
            "attention_head_dim",
            &self.attention_head_dim,
            self.attention_head_dim > 0 && self.attention_head_dim.is_multiple_of(2),
            "must be positive and even (rotary pairs)",
        );
        req.check(
            "axes_dims_rope",
            &self.axes_dims_rope,
            self.axes_dims_rope.len() == 3
                && self
                    .axes_dims_rope
                    .iter()
                    .all(|d| *d > 0 && d.is_multiple_of(2))
                && self.axes_dims_rope.iter().sum::<usize>() == self.attention_head_dim,
            "must be three positive even widths summing to attention_head_dim",
        );
        req.check(
            "codebook_size",
            &self.codebook_size,
            self.codebook_size > 0 && self.codebook_size <= self.vocab_size,
            "must be positive and at most vocab_size",
        );
        req.check(
            "joint_attention_dim",
            &self.joint_attention_dim,
            self.joint_attention_dim > 0,
            "must be positive",
        );
        req.check(
            "pooled_projection_dim",
            &self.pooled_projection_dim,
            self.pooled_projection_dim > 0,
            "must be positive",
        );
        req.finish()
    }

    fn parse_connector(&self) -> Option<Connector> {
        match self.connector_type.as_deref() {
            None | Some("none") | Some("None") => Some(Connector::None),
            Some("linear") => Some(Connector::Linear),
            Some(_) => None,
        }
    }

    fn parse_text_encoder(&self) -> Option<TextEncoderArchitecture> {
        match self.text_encoder_architecture.as_str() {
            "CLIP" => Some(TextEncoderArchitecture::Clip),
            "CLIP_Gemma2" => Some(TextEncoderArchitecture::ClipGemma2),
            _ => None,
        }
    }

    /// The connector (a validated configuration always has one of the two).
    pub fn connector(&self) -> Connector {
        self.parse_connector().unwrap_or(Connector::None)
    }

    /// The text encoder architecture (a validated configuration always has one of the two).
    pub fn text_encoder(&self) -> TextEncoderArchitecture {
        self.parse_text_encoder()
            .unwrap_or(TextEncoderArchitecture::Clip)
    }

    /// Transformer width: `num_attention_heads * attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Width `encoder_hidden_states` must have: `joint_attention_dim` (both with and without a
    /// connector; without one it is also `context_embedder`'s input width).
    pub fn text_state_dim(&self) -> usize {
        self.joint_attention_dim
    }

    /// Total number of blocks; capture indices count double-stream blocks first.
    pub fn num_blocks(&self) -> usize {
        self.num_layers + self.num_single_layers
    }

    /// Input width of `cond_embed`: the pooled vector plus five 256-wide micro-cond embeddings.
    pub fn cond_embed_in_dim(&self) -> usize {
        self.pooled_projection_dim + MICRO_COND_VALUES * MICRO_COND_EMBED_DIM
    }

    /// Factor between the token grid and the transformer's grid (2 with `downsample`).
    pub fn grid_factor(&self) -> usize {
        if self.downsample { 2 } else { 1 }
    }
}
