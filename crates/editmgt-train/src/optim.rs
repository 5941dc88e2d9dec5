//! AdamW with the reference's decay groups, global gradient-norm clipping and the EMA of the
//! weights, on flat per-parameter tensors keyed by checkpoint name.
//!
//! The update is PyTorch's `AdamW` (decoupled decay `p *= 1 - lr wd`, then
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`); clipping is
//! `torch.nn.utils.clip_grad_norm_` (every gradient times `min(1, max / (norm + 1e-6))`, the
//! norm taken over all gradients together).

use std::collections::BTreeMap;

use burn::tensor::Tensor;

use crate::config::{EmaConfig, OptimizerConfig};

/// The first and second moments of one parameter.
#[derive(Debug, Clone)]
pub struct Moments {
    /// `m`.
    pub exp_avg: Tensor<1>,
    /// `v`.
    pub exp_avg_sq: Tensor<1>,
}

/// AdamW state: the moments of every trained parameter and the number of steps taken.
#[derive(Debug, Clone, Default)]
pub struct AdamW {
    /// Moments by checkpoint name.
    pub moments: BTreeMap<String, Moments>,
    /// Steps taken (PyTorch's `step`, the same for every parameter).
    pub steps: u64,
}

impl AdamW {
    /// One AdamW update of the parameter `name` (flat `param` and `grad`, same device) at
    /// learning rate `lr`; `decay` chooses the group. Call [`AdamW::finish_step`] after every
    /// parameter of a step.
    pub fn update(
        &mut self,
        config: &OptimizerConfig,
        name: &str,
        param: Tensor<1>,
        grad: Tensor<1>,
        lr: f64,
        decay: bool,
    ) -> Tensor<1> {
        let (b1, b2) = config.betas;
        let t = (self.steps + 1) as i32;
        let moments = self.moments.remove(name).unwrap_or_else(|| Moments {
            exp_avg: grad.zeros_like(),
            exp_avg_sq: grad.zeros_like(),
        });
        let param = if decay && config.weight_decay > 0.0 {
            param * (1.0 - lr * config.weight_decay)
        } else {
            param
        };
        let exp_avg = moments.exp_avg * b1 + grad.clone() * (1.0 - b1);
        let exp_avg_sq = moments.exp_avg_sq * b2 + grad.clone() * grad * (1.0 - b2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bias1;
        let denom = exp_avg_sq.clone().sqrt() / bias2_sqrt + config.eps;
        let param = param - exp_avg.clone() / denom * step_size;
        self.moments.insert(
            name.to_string(),
            Moments {
                exp_avg,
                exp_avg_sq,
            },
        );
        param
    }

    /// Marks the end of an optimizer step.
    pub fn finish_step(&mut self) {
        self.steps += 1;
    }
}

/// The global L2 norm of `grads` (one read-back).
pub fn global_norm<'a>(grads: impl IntoIterator<Item = &'a Tensor<1>>) -> f64 {
    let squares: Vec<Tensor<1>> = grads
        .into_iter()
        .map(|g| g.clone().square().sum())
        .collect();
    if squares.is_empty() {
        return 0.0;
    }
    let total = Tensor::cat(squares, 0).sum();
    let value = total
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN);
    value.sqrt()
}

/// `clip_grad_norm_`'s factor for total norm `norm` and limit `max_norm`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The EMA of the trained weights (diffusers' `EMAModel`).
#[derive(Debug, Clone, Default)]
pub struct Ema {
    /// The averaged weights by checkpoint name (flat, checkpoint layout).
    pub shadow: BTreeMap<String, Tensor<1>>,
    /// Updates so far (`optimization_step`).
    pub updates: u64,
}

impl Ema {
    /// The decay diffusers uses at update number `step` (1-based).
    pub fn decay_at(config: &EmaConfig, step: u64) -> f64 {
        let k = step.saturating_sub(config.update_after_step + 1);
        if k == 0 {
            return 0.0;
        }
        ((1.0 + k as f64) / (10.0 + k as f64)).min(config.decay)
    }

    /// Starts a new update (call once per optimizer step, before [`Ema::update`]); returns the
    /// decay of this update.
    pub fn begin(&mut self, config: &EmaConfig) -> f64 {
        self.updates += 1;
        Self::decay_at(config, self.updates)
    }

    /// Moves the average of `name` towards `param`: `s -= (1 - decay) (s - p)`.
    pub fn update(&mut self, name: &str, param: &Tensor<1>, decay: f64) {
        let next = match self.shadow.remove(name) {
            Some(s) => s.clone() - (s - param.clone()) * (1.0 - decay),
            None => param.clone(),
        };
        self.shadow.insert(name.to_string(), next);
    }
}
