//! Training settings (serde structs; the defaults are the released `train.py`'s).

use editmgt_mgt::LoraStreams;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The parameter-name substrings the reference exempts from weight decay.
pub const NO_DECAY_SUBSTRINGS: [&str; 4] = [
    "bias",
    "layer_norm.weight",
    "mlm_ln.weight",
    "embeddings.weight",
];

/// AdamW settings (PyTorch's `AdamW`, with the reference's two decay groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    /// `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay of the decay group.
    pub weight_decay: f64,
    /// Parameters whose checkpoint name contains one of these get no weight decay.
    pub no_decay: Vec<String>,
    /// Global gradient-norm clipping (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Linear warm-up over this many optimizer steps (diffusers' `constant_with_warmup`: the
    /// factor at step `s` is `s / warmup`, so the first step runs at 0), then constant.
    pub warmup_steps: u64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
            no_decay: NO_DECAY_SUBSTRINGS.iter().map(|s| s.to_string()).collect(),
            max_grad_norm: Some(10.0),
            warmup_steps: 0,
        }
    }
}

impl OptimizerConfig {
    /// The learning rate at optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            self.lr * step as f64 / self.warmup_steps.max(1) as f64
        } else {
            self.lr
        }
    }

    /// Whether the parameter `name` (checkpoint naming) is in the decay group.
    pub fn decays(&self, name: &str) -> bool {
        !self.no_decay.iter().any(|s| name.contains(s.as_str()))
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &'static str, value: f64, reason: &str| TrainError::Config {
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(bad("lr", self.lr, "must be finite and >= 0"));
        }
        for (field, b) in [("betas.0", self.betas.0), ("betas.1", self.betas.1)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(field, b, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(bad("eps", self.eps, "must be finite and > 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight_decay",
                self.weight_decay,
                "must be finite and >= 0",
            ));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return Err(bad("max_grad_norm", n, "must be finite and > 0"));
        }
        Ok(())
    }
}

/// Exponential moving average of the trained weights (diffusers' `EMAModel`: the decay at
/// update `k` is `min(decay, (1 + k') / (10 + k'))`, `k' = k - update_after_step - 1`, and 0
/// while `k' <= 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmaConfig {
    /// Upper bound of the decay.
    pub decay: f64,
    /// Updates before the average starts to lag behind the weights.
    pub update_after_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            decay: 0.9999,
            update_after_step: 0,
        }
    }
}

/// LoRA settings (peft's `LoraConfig` fields that matter here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha`; the adapters are scaled by `alpha / r`.
    pub alpha: f64,
    /// peft `target_modules` (last name segments: `to_q`, `to_k`, `to_v`, `to_out.0`, ...).
    pub targets: Vec<String>,
    /// Which streams the adapters apply to (the reference's edit training: the reference
    /// stream only).
    pub streams: LoraStreams,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            targets: ["to_q", "to_k", "to_v"].map(String::from).to_vec(),
            streams: LoraStreams::Reference,
        }
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scaling(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }
}

/// What one training run does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// AdamW, clipping and learning-rate schedule.
    pub optimizer: OptimizerConfig,
    /// `None`: full fine-tuning; otherwise LoRA with base weights frozen.
    pub lora: Option<LoraConfig>,
    /// Optional EMA of the trained weights.
    pub ema: Option<EmaConfig>,
    /// Examples per micro-batch (per device with several devices).
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged before each optimizer step.
    pub accumulation: usize,
    /// Optimizer steps to run.
    pub steps: u64,
    /// Lower bound of the mask ratio (`min_masking_rate`).
    pub min_masking_rate: f64,
    /// Probability of replacing an example's prompt by the empty prompt.
    pub cond_dropout: f64,
    /// Seed of masks, dropout, data order and LoRA initialisation.
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (0: only at the end).
    pub save_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerConfig::default(),
            lora: None,
            ema: None,
            batch_size: 1,
            accumulation: 1,
            steps: 1000,
            min_masking_rate: 0.0,
            cond_dropout: 0.0,
            seed: 0,
            save_every: 0,
        }
    }
}

impl TrainConfig {
    /// Checks every range.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.optimizer.validate()?;
        let bad = |field: &'static str, value: String, reason: &str| TrainError::Config {
            field,
            value,
            reason: reason.to_string(),
        };
        if self.batch_size == 0 {
            return Err(bad("batch_size", "0".into(), "must be at least 1"));
        }
        if self.accumulation == 0 {
            return Err(bad("accumulation", "0".into(), "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.min_masking_rate) {
            return Err(bad(
                "min_masking_rate",
                self.min_masking_rate.to_string(),
                "must be in [0, 1]",
            ));
        }
        if !(0.0..=1.0).contains(&self.cond_dropout) {
            return Err(bad(
                "cond_dropout",
                self.cond_dropout.to_string(),
                "must be in [0, 1]",
            ));
        }
        if let Some(lora) = &self.lora {
            if lora.rank == 0 {
                return Err(bad("lora.rank", "0".into(), "must be at least 1"));
            }
            if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
                return Err(bad("lora.alpha", lora.alpha.to_string(), "must be > 0"));
            }
            if lora.targets.is_empty() {
                return Err(bad("lora.targets", "[]".into(), "name at least one module"));
            }
            for t in &lora.targets {
                if !editmgt_mgt::lora::SUPPORTED_TARGETS.contains(&t.as_str()) {
                    return Err(bad(
                        "lora.targets",
                        t.clone(),
                        &format!(
                            "unsupported; supported: {}",
                            editmgt_mgt::lora::SUPPORTED_TARGETS.join(", ")
                        ),
                    ));
                }
            }
        }
        if let Some(ema) = &self.ema
            && !(0.0..=1.0).contains(&ema.decay)
        {
            return Err(bad("ema.decay", ema.decay.to_string(), "must be in [0, 1]"));
        }
        Ok(())
    }
}
