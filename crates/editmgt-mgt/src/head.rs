//! The masked-token prediction head (`mlm_layer`, Meissonic's `ConvMlmLayer`).

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use editmgt_core::bf16_products::matmul_bf16;

use crate::norm::RmsNorm;
use crate::sampling::PointwiseConv;

/// 1x1 convolution, RMSNorm over channels, 1x1 convolution to the codebook logits.
#[derive(Module, Debug)]
pub struct MlmLayer {
    /// Width to width.
    pub conv1: PointwiseConv,
    /// RMSNorm over channels.
    pub layer_norm: RmsNorm,
    /// Width to `codebook_size`.
    pub conv2: PointwiseConv,
}

impl MlmLayer {
    /// The head for `dim` channels and `codebook_size` logits.
    pub fn new(dim: usize, codebook_size: usize, device: &Device) -> Self {
        Self {
            conv1: PointwiseConv::new(dim, dim, device),
            layer_norm: RmsNorm::new(dim, device),
            conv2: PointwiseConv::new(dim, codebook_size, device),
        }
    }

    /// Channels-last `[B, H, W, C]` to float32 logits `[B, codebook_size, H, W]`.
    ///
    /// The last product is computed as `W [codebook, C] x h^T [C, H*W]` per batch row, which
    /// writes the logits directly in channels-first order (no transpose of the large output).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(x, false)
    }

    /// [`MlmLayer::forward`], with the logits' product in bf16 (f32 sums) when `bf16_products`
    /// (a model with bf16 products on the CPU; [`editmgt_core::bf16_products::matmul_bf16`]).
    pub(crate) fn forward_with(&self, x: Tensor<4>, bf16_products: bool) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let x = self.conv1.forward(x.reshape([b, h * w, c]));
        let x = self.layer_norm.forward(x);
        let weight = self.conv2.matrix();
        let codebook = weight.dims()[0];
        let logits = if bf16_products {
            let rows = (0..b)
                .map(|i| {
                    let x = x.clone().narrow(0, i, 1).reshape([h * w, c]);
                    matmul_bf16(weight.clone().cast(DType::F32), x.transpose())
                })
                .collect();
            Tensor::stack::<3>(rows, 0)
        } else {
            weight.unsqueeze::<3>().matmul(x.swap_dims(1, 2))
        };
        logits.reshape([b, codebook, h, w]).cast(DType::F32)
    }
}
