//! The adaptive-LayerNorm steps of a transformer block, each in one pass on the CPU: the
//! modulated LayerNorm `layer_norm(x) * (1 + scale) + shift`, the gated residual
//! `x + y * gate`, and the RMSNorm of queries and keys.
//!
//! As Burn operations each is several element-wise passes over the block's activations, each
//! allocating a tensor as large as them (`[2, 4608, 1024]` in `f32`, 38 MB, in the MGT at the
//! released width). On Burn's `flex` backend (this crate's `flex` feature) plain `f32` tensors go
//! through [`kernel`]: one pass per row, statistics in `f32` as Burn's ops compute them. Every
//! other tensor (wgpu, CUDA, autodiff, half precision) gets the Burn operations, the same
//! formulas. `EDITMGT_FUSED_ADALN=0` turns the kernels off.
//!
//! Modulation rows come in groups: `x` is `[B, R, D]` and `shift`, `scale` and `gate` are
//! `[B, G, D]` with `G` dividing `R`; rows `[g R / G, (g + 1) R / G)` of a batch row take
//! modulation row `g` (the MGT's image stream: the image rows, then the reference rows, each with
//! its own modulation).

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernel;

use burn::tensor::module::layer_norm as burn_layer_norm;
use burn::tensor::{DType, Tensor};

/// Name of the environment variable that turns the one-pass kernels off when set to `0`.
pub const FUSED_ADALN_ENV: &str = "EDITMGT_FUSED_ADALN";

/// Whether the kernels may run (`$EDITMGT_FUSED_ADALN` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(FUSED_ADALN_ENV).map_or(true, |v| v.trim() != "0"))
}

/// LayerNorm without affine parameters over the last dimension (biased variance, `eps` inside
/// the square root), statistics in `f32` whatever `x`'s float type; the result in `x`'s type.
pub fn layer_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let dim = x.dims()[D - 1];
    let ones = Tensor::<1>::ones([dim], (&x.device(), DType::F32));
    burn_layer_norm(x, ones, None, eps).cast(dtype)
}

/// `layer_norm(x) * (1 + scale) + shift` for `x` `[B, R, D]` and `shift`, `scale` `[B, G, D]`
/// (see the module documentation for the groups).
pub fn layer_norm_modulate(
    x: Tensor<3>,
    shift: Tensor<3>,
    scale: Tensor<3>,
    eps: f64,
) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) = flex::layer_norm_modulate(&x, &shift, &scale, eps)
    {
        return out;
    }
    let [b, r, d] = x.dims();
    let g = shift.dims()[1];
    let normed = layer_norm(x, eps).reshape([b, g, r / g, d]);
    (normed * (scale.unsqueeze_dim::<4>(2) + 1.0) + shift.unsqueeze_dim::<4>(2)).reshape([b, r, d])
}

/// `x + y * gate` for `x`, `y` `[B, R, D]` and `gate` `[B, G, D]` (see the module documentation
/// for the groups).
pub fn gated_residual(x: Tensor<3>, y: Tensor<3>, gate: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    let (x, y) = if enabled() {
        match flex::gated_residual(x, &y, &gate) {
            Ok(out) => return out,
            Err(x) => (*x, y),
        }
    } else {
        (x, y)
    };
    let [b, r, d] = x.dims();
    let g = gate.dims()[1];
    let per_group = |t: Tensor<3>| t.reshape([b, g, r / g, d]);
    (per_group(x) + per_group(y) * gate.unsqueeze_dim::<4>(2)).reshape([b, r, d])
}

/// RMSNorm over the last dimension, `x * rsqrt(mean(x^2) + eps) * gamma`: statistics and
/// scaling in `f32` whatever `x`'s float type, the result cast back before `gamma` is applied.
pub fn rms_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) = flex::rms_norm(&x, &gamma, eps)
    {
        return out;
    }
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean_square = x.clone().square().mean_dim(D - 1);
    let inv = (mean_square + eps).sqrt().recip();
    let normed = (x * inv).cast(dtype);
    normed * gamma.unsqueeze::<D>()
}
