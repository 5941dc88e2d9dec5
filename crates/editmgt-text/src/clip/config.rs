use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::{Requirements, from_json_value, read_json};
use serde::{Deserialize, Serialize};

/// The configuration of transformers' `CLIPTextModelWithProjection` (`text_encoder/config.json`),
/// with transformers' `CLIPTextConfig` defaults.
///
/// [`ClipTextConfig::validate`] refuses another architecture (`model_type`, `architectures`) and
/// activations other than `gelu` (exact) and `quick_gelu`, by field name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// `clip_text_model` (absent in some exported configurations).
    pub model_type: Option<String>,
    /// The model classes the checkpoint was saved from.
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Width of the pooled, projected output.
    pub projection_dim: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Positions (the maximum sequence length).
    pub max_position_embeddings: usize,
    /// MLP activation: `gelu` (exact, erf) or `quick_gelu`.
    pub hidden_act: String,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id (informational: CLIP attends to pads under its causal mask).
    pub pad_token_id: Option<u32>,
    /// Start token id (informational).
    pub bos_token_id: Option<u32>,
    /// End token id. `2` selects the legacy pooling rule (position of the largest id in the
    /// row), any other value the first position holding this id.
    pub eos_token_id: Option<u32>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            model_type: None,
            architectures: None,
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
        }
    }
}

/// The architecture this crate implements.
pub(crate) const CLIP_ARCHITECTURE: &str = "CLIPTextModelWithProjection";

impl ClipTextConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path, "CLIP text encoder configuration")?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses and validates a configuration already in memory (`path` names it in errors).
    pub fn from_value(value: serde_json::Value, path: &Path) -> Result<Self, LoadError> {
        let config: Self = from_json_value(value, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Refuses what this implementation does not support, naming the field.
    pub fn validate(&self, path: &Path) -> Result<(), LoadError> {
        let mut req = Requirements::new(path);
        if let Some(model_type) = &self.model_type {
            req.equal("model_type", model_type, &"clip_text_model".to_string());
        }
        if let Some(architectures) = &self.architectures {
            req.check(
                "architectures",
                architectures,
                architectures.iter().any(|a| a == CLIP_ARCHITECTURE),
                &format!("only {CLIP_ARCHITECTURE} (with its text_projection) is supported"),
            );
        }
        req.check(
            "hidden_act",
            &self.hidden_act,
            matches!(self.hidden_act.as_str(), "gelu" | "quick_gelu"),
            "only \"gelu\" and \"quick_gelu\" are supported",
        );
        req.check(
            "num_attention_heads",
            &self.num_attention_heads,
            self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads),
            "must divide hidden_size",
        );
        req.check(
            "num_hidden_layers",
            &self.num_hidden_layers,
            self.num_hidden_layers > 0,
            "at least one layer is needed",
        );
        req.check(
            "max_position_embeddings",
            &self.max_position_embeddings,
            self.max_position_embeddings > 0,
            "must be positive",
        );
        req.finish()
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
