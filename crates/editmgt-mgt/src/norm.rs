//! Normalisations: RMSNorm (computed in float32) and adaptive LayerNorm-Zero modulation.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::module::layer_norm as fused_layer_norm;
use burn::tensor::{DType, Device, Tensor};

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

    /// Normalises `x` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().square().mean_dim(D - 1);
        let inv = (mean_square + NORM_EPS).sqrt().recip();
        let normed = (x * inv).cast(dtype);
        normed * self.gamma.val().unsqueeze::<D>()
    }
}

/// LayerNorm without affine parameters (eps 1e-6) over the last dimension, with float32
/// statistics.
pub(crate) fn layer_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let dim = x.dims()[D - 1];
    let ones = Tensor::<1>::ones([dim], (&x.device(), DType::F32));
    fused_layer_norm(x, ones, None, NORM_EPS).cast(dtype)
}

/// `norm * (1 + scale) + shift`, the adaptive modulation (all operands broadcast).
pub(crate) fn modulate<const D: usize>(
    normed: Tensor<D>,
    shift: Tensor<D>,
    scale: Tensor<D>,
) -> Tensor<D> {
    normed * (scale + 1.0) + shift
}

/// The AdaLN input of the image stream `[B, streams * N, D]`: each stream's rows normalised and
/// modulated by that stream's `shift` / `scale` (`[B, streams, 1, D]`).
pub(crate) fn modulate_streams(
    image: Tensor<3>,
    streams: usize,
    shift: Tensor<4>,
    scale: Tensor<4>,
) -> Tensor<3> {
    let [b, sn, d] = image.dims();
    let per_stream = layer_norm(image).reshape([b, streams, sn / streams, d]);
    modulate(per_stream, shift, scale).reshape([b, sn, d])
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
        self.linear.forward(activated).chunk(chunks, D - 1)
    }
}

/// `silu(temb)`, the input every AdaLN projection shares (computed once per forward).
pub(crate) fn activate<const D: usize>(temb: Tensor<D>) -> Tensor<D> {
    silu(temb)
}
