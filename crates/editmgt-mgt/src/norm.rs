//! Normalisations: RMSNorm (computed in float32) and adaptive LayerNorm-Zero modulation.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use editmgt_core::adaln;
use editmgt_core::bf16_products::linear;

use crate::config::NORM_EPS;

/// RMSNorm over the last dimension: `x * rsqrt(mean(x^2) + 1e-6) * w`.
///
/// The statistics and the scaling run in float32 whatever the model's float type (as the
/// reference does); the result is cast back before the weight is applied. The checkpoint calls
/// the weight `weight`; it is held as `gamma` (Burn's naming for norms, which the loader maps).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Per-feature scale.
    pub gamma: Param<Tensor<1>>,
}

impl RmsNorm {
    /// A norm over `dim` features, weight initialised to ones (lazily).
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([dim], device),
        }
    }

    /// Normalises `x` over its last dimension (one pass on the CPU; see
    /// [`editmgt_core::adaln`]).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        adaln::rms_norm(x, self.gamma.val(), NORM_EPS)
    }
}

/// `layer_norm(x) * (1 + scale) + shift`, the adaptive modulation of `x` `[B, R, D]` (LayerNorm
/// without affine parameters, eps 1e-6, float32 statistics) by `shift`, `scale` `[B, G, D]`: rows
/// in `G` groups (the image stream's image and reference rows) each with their own modulation.
pub(crate) fn modulated(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    adaln::layer_norm_modulate(x, shift, scale, NORM_EPS)
}

/// `x + y * gate`, the gated residual of `x`, `y` `[B, R, D]` and `gate` `[B, G, D]` (groups as
/// in [`modulated`]).
pub(crate) fn gated(x: Tensor<3>, y: Tensor<3>, gate: Tensor<3>) -> Tensor<3> {
    adaln::gated_residual(x, y, gate)
}

/// AdaLayerNormZero's projection: `Linear(silu(temb))` split into `chunks` modulation vectors
/// (6 in double-stream blocks: shift, scale, gate for attention and for the MLP; 3 in
/// single-stream blocks). The LayerNorm itself has no parameters.
#[derive(Module, Debug)]
pub struct AdaLayerNormZero {
    /// `temb -> chunks * dim`.
    pub linear: Linear,
}

impl AdaLayerNormZero {
    /// Modulation for width `dim` in `chunks` parts.
    pub fn new(dim: usize, chunks: usize, device: &Device) -> Self {
        Self {
            linear: LinearConfig::new(dim, chunks * dim).init(device),
        }
    }

    /// The modulation vectors of `activated` (`silu(temb)`, `[.., dim]`), each `[.., dim]`, in
    /// checkpoint order.
    pub fn chunks<const D: usize>(&self, activated: Tensor<D>, chunks: usize) -> Vec<Tensor<D>> {
        linear(&self.linear, activated).chunk(chunks, D - 1)
    }
}

/// `silu(temb)`, the input every AdaLN projection shares (computed once per forward).
pub(crate) fn activate<const D: usize>(temb: Tensor<D>) -> Tensor<D> {
    silu(temb)
}
