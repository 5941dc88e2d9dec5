use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::{Requirements, read_json};
use serde::{Deserialize, Serialize};

/// The configuration of diffusers' `VQModel` (`vqvae/config.json`), with diffusers' defaults.
///
/// Only the architecture EditMGT releases is implemented: `DownEncoderBlock2D` /
/// `UpDecoderBlock2D` blocks, SiLU, group normalisation, no mid-block attention and codebook
/// lookup on decode. [`VqConfig::validate`] refuses anything else by field name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VqConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Encoder block types (one per resolution level).
    pub down_block_types: Vec<String>,
    /// Decoder block types (one per resolution level).
    pub up_block_types: Vec<String>,
    /// Channels per resolution level, from the image side.
    pub block_out_channels: Vec<usize>,
    /// ResNet blocks per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// Activation function.
    pub act_fn: String,
    /// Channels of the latent grid.
    pub latent_channels: usize,
    /// Nominal latent size (informational).
    pub sample_size: usize,
    /// Codebook size.
    pub num_vq_embeddings: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Codebook vector width (defaults to `latent_channels`).
    pub vq_embed_dim: Option<usize>,
    /// Latent scaling factor (informational, unused by tokenisation).
    pub scaling_factor: f64,
    /// Decoder normalisation (`group` or `spatial`).
    pub norm_type: String,
    /// Whether the mid blocks have self-attention.
    pub mid_block_add_attention: bool,
    /// Whether decoding looks token ids up in the codebook.
    pub lookup_from_codebook: bool,
    /// Whether half-precision decoding should be upcast (informational).
    pub force_upcast: bool,
}

impl Default for VqConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 3,
            sample_size: 32,
            num_vq_embeddings: 256,
            norm_num_groups: 32,
            vq_embed_dim: None,
            scaling_factor: 0.18215,
            norm_type: "group".into(),
            mid_block_add_attention: true,
            lookup_from_codebook: false,
            force_upcast: false,
        }
    }
}

impl VqConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path, "VQ model configuration")?;
        config.validate(path)?;
        Ok(config)
    }

    /// Refuses values this implementation does not support, naming the field (`path` is the
    /// file named in the error).
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let levels = self.block_out_channels.len();
        let mut req = Requirements::new(path);
        req.check(
            "block_out_channels",
            &self.block_out_channels,
            levels > 0 && self.block_out_channels.iter().all(|&c| c > 0),
            "at least one level of non-zero width",
        )
        .check(
            "down_block_types",
            &self.down_block_types,
            self.down_block_types.len() == levels
                && self
                    .down_block_types
                    .iter()
                    .all(|t| t == "DownEncoderBlock2D"),
            "one \"DownEncoderBlock2D\" per entry of block_out_channels",
        )
        .check(
            "up_block_types",
            &self.up_block_types,
            self.up_block_types.len() == levels
                && self.up_block_types.iter().all(|t| t == "UpDecoderBlock2D"),
            "one \"UpDecoderBlock2D\" per entry of block_out_channels",
        )
        .equal("act_fn", &self.act_fn.as_str(), &"silu")
        .equal("norm_type", &self.norm_type.as_str(), &"group")
        .equal(
            "mid_block_add_attention",
            &self.mid_block_add_attention,
            &false,
        )
        .equal("lookup_from_codebook", &self.lookup_from_codebook, &true)
        .check(
            "norm_num_groups",
            &self.norm_num_groups,
            self.norm_num_groups > 0
                && self
                    .block_out_channels
                    .iter()
                    .all(|c| c % self.norm_num_groups == 0),
            "must divide every entry of block_out_channels",
        )
        .check(
            "layers_per_block",
            &self.layers_per_block,
            self.layers_per_block > 0,
            "at least one ResNet block per level",
        )
        .check(
            "num_vq_embeddings",
            &self.num_vq_embeddings,
            self.num_vq_embeddings > 0,
            "a non-empty codebook",
        )
        .check(
            "latent_channels",
            &self.latent_channels,
            self.latent_channels > 0,
            "non-zero",
        )
        .check(
            "vq_embed_dim",
            &self.vq_embed_dim,
            self.vq_embed_dim != Some(0),
            "non-zero",
        );
        req.finish()
    }

    /// The codebook vector width.
    pub fn embed_dim(&self) -> usize {
        self.vq_embed_dim.unwrap_or(self.latent_channels)
    }

    /// The spatial downsampling factor: `2^(levels - 1)` (16 for the released model).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}
