use std::path::Path;

use editmgt_core::LoadError;
use editmgt_core::config::{Requirements, from_json_value, read_json};
use serde::{Deserialize, Serialize};

/// The configuration of transformers' `Gemma2ForCausalLM` (`llm_encoder/config.json`), with
/// transformers' `Gemma2Config` defaults (which are gemma-2-2b's).
///
/// [`Gemma2Config::validate`] refuses another architecture (`model_type`, `architectures`), an
/// activation other than `gelu_pytorch_tanh`, and RoPE scaling, by field name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gemma2Config {
    /// `gemma2` (absent in some exported configurations).
    pub model_type: Option<String>,
    /// The model classes the checkpoint was saved from.
    pub architectures: Option<Vec<String>>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the gated MLP.
    pub intermediate_size: usize,
    /// Decoder layers in the checkpoint (the encoder runs all but the last).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// MLP activation (`gelu_pytorch_tanh`).
    pub hidden_activation: Option<String>,
    /// Positions the model was trained for (informational).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling (unsupported; must be absent or null).
    pub rope_scaling: Option<serde_json::Value>,
    /// Attention logits are soft-capped `c * tanh(x / c)` with this `c` (none when null).
    pub attn_logit_softcapping: Option<f64>,
    /// Output logit cap of the language-model head (unused: the encoder has no head).
    pub final_logit_softcapping: Option<f64>,
    /// Window of the sliding-window attention of even layers (none when null).
    pub sliding_window: Option<usize>,
    /// Whether q/k/v/o projections have biases.
    pub attention_bias: bool,
    /// Padding id (informational: no attention mask is used, pads are ordinary tokens).
    pub pad_token_id: Option<u32>,
    /// `<bos>` id (informational).
    pub bos_token_id: Option<u32>,
    /// `<eos>` id (informational).
    pub eos_token_id: Option<serde_json::Value>,
}

impl Default for Gemma2Config {
    fn default() -> Self {
        Self {
            model_type: None,
            architectures: None,
            vocab_size: 256000,
            hidden_size: 2304,
            intermediate_size: 9216,
            num_hidden_layers: 26,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            head_dim: 256,
            query_pre_attn_scalar: 256.0,
            hidden_activation: None,
            max_position_embeddings: 8192,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            sliding_window: Some(4096),
            attention_bias: false,
            pad_token_id: Some(0),
            bos_token_id: Some(2),
            eos_token_id: None,
        }
    }
}

/// The architecture this crate implements (its tensors are prefixed `model.`).
pub(crate) const GEMMA_ARCHITECTURE: &str = "Gemma2ForCausalLM";

impl Gemma2Config {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let config: Self = read_json(path, "Gemma-2 configuration")?;
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
            req.equal("model_type", model_type, &"gemma2".to_string());
        }
        if let Some(architectures) = &self.architectures {
            req.check(
                "architectures",
                architectures,
                architectures.iter().any(|a| a == GEMMA_ARCHITECTURE),
                &format!("only {GEMMA_ARCHITECTURE} is supported"),
            );
        }
        req.check(
            "hidden_activation",
            &self.hidden_activation,
            self.activation() == "gelu_pytorch_tanh",
            "only \"gelu_pytorch_tanh\" is supported",
        );
        req.check(
            "rope_scaling",
            &self.rope_scaling,
            self.rope_scaling.as_ref().is_none_or(|v| v.is_null()),
            "RoPE scaling is not supported",
        );
        req.check(
            "num_key_value_heads",
            &self.num_key_value_heads,
            self.num_key_value_heads > 0
                && self
                    .num_attention_heads
                    .is_multiple_of(self.num_key_value_heads),
            "must divide num_attention_heads",
        );
        req.check(
            "head_dim",
            &self.head_dim,
            self.head_dim > 0 && self.head_dim.is_multiple_of(2),
            "must be positive and even (rotary embedding rotates halves)",
        );
        req.check(
            "num_hidden_layers",
            &self.num_hidden_layers,
            self.num_hidden_layers > 0,
            "at least one layer is needed",
        );
        req.check(
            "query_pre_attn_scalar",
            &self.query_pre_attn_scalar,
            self.query_pre_attn_scalar > 0.0,
            "must be positive",
        );
        req.check(
            "attn_logit_softcapping",
            &self.attn_logit_softcapping,
            self.attn_logit_softcapping.is_none_or(|c| c > 0.0),
            "must be positive or null",
        );
        req.check(
            "sliding_window",
            &self.sliding_window,
            self.sliding_window.is_none_or(|w| w > 0),
            "must be positive or null",
        );
        req.finish()
    }

    /// The MLP activation's name (`hidden_activation`, transformers' default when absent).
    pub fn activation(&self) -> &str {
        self.hidden_activation
            .as_deref()
            .unwrap_or("gelu_pytorch_tanh")
    }

    /// The decoder layers the encoder runs and loads: all but the last, because EditMGT uses
    /// `hidden_states[-2]`, the residual stream entering the last layer.
    pub fn encoder_layers(&self) -> usize {
        self.num_hidden_layers.saturating_sub(1)
    }
}
