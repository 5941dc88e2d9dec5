//! The token grid's way in and out: token embedding, 2x2 down-sampling and up-sampling.
//!
//! Activations stay channels-last (`[B, H, W, C]`) so that every RMSNorm "over channels" is a
//! norm over the last dimension, 1x1 convolutions are plain matrix products, and the 2x2
//! stride-2 (transposed) convolutions are patch rearrangements around one matrix product.

use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};
use editmgt_core::bf16_products::linear_weights;

use crate::norm::RmsNorm;

fn conv_init(fan_in: usize, shape: [usize; 4], device: &Device) -> Param<Tensor<4>> {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
    .init_with(shape, Some(fan_in), None, device)
}

/// A 1x1 convolution without bias, weight `[out, in, 1, 1]` as in the checkpoint.
#[derive(Module, Debug)]
pub struct PointwiseConv {
    /// `[out, in, 1, 1]`.
    pub weight: Param<Tensor<4>>,
}

impl PointwiseConv {
    /// `d_in -> d_out`.
    pub fn new(d_in: usize, d_out: usize, device: &Device) -> Self {
        Self {
            weight: conv_init(d_in, [d_out, d_in, 1, 1], device),
        }
    }

    /// The weight as a `[out, in]` matrix.
    pub(crate) fn matrix(&self) -> Tensor<2> {
        let weight = self.weight.val();
        let [out, d_in, _, _] = weight.dims();
        weight.reshape([out, d_in])
    }

    /// Applies the convolution to channels-last `[.., in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear_weights(x, self.matrix().transpose(), None)
    }
}

/// A 2x2 stride-2 convolution without bias, weight `[out, in, 2, 2]`.
#[derive(Module, Debug)]
pub struct PatchConv {
    /// `[out, in, 2, 2]`.
    pub weight: Param<Tensor<4>>,
}

/// A 2x2 stride-2 transposed convolution without bias, weight `[in, out, 2, 2]` (PyTorch's
/// `ConvTranspose2d` layout).
#[derive(Module, Debug)]
pub struct PatchConvTranspose {
    /// `[in, out, 2, 2]`.
    pub weight: Param<Tensor<4>>,
}

/// `embed`: Embedding, RMSNorm, 1x1 convolution (Meissonic's `UVit2DConvEmbed`).
#[derive(Module, Debug)]
pub struct TokenEmbedding {
    /// `[vocab_size, width]`.
    pub embeddings: Embedding,
    /// RMSNorm over the embedding.
    pub layer_norm: RmsNorm,
    /// 1x1 convolution, no bias.
    pub conv: PointwiseConv,
}

impl TokenEmbedding {
    /// Embeds `vocab_size` ids into `dim` channels.
    pub fn new(vocab_size: usize, dim: usize, device: &Device) -> Self {
        Self {
            embeddings: EmbeddingConfig::new(vocab_size, dim).init(device),
            layer_norm: RmsNorm::new(dim, device),
            conv: PointwiseConv::new(dim, dim, device),
        }
    }

    /// `[B, H, W]` token ids to channels-last `[B, H, W, C]`.
    pub fn forward(&self, tokens: Tensor<3, Int>) -> Tensor<4> {
        let [b, h, w] = tokens.dims();
        let x = self.embeddings.forward(tokens.reshape([b, h * w]));
        let x = self.conv.forward(self.layer_norm.forward(x));
        let c = x.dims()[2];
        x.reshape([b, h, w, c])
    }
}

/// `down_block.downsample`: RMSNorm over channels, then a 2x2 stride-2 convolution.
#[derive(Module, Debug)]
pub struct Downsample {
    /// RMSNorm over channels.
    pub norm: RmsNorm,
    /// The 2x2 stride-2 convolution.
    pub conv: PatchConv,
}

impl Downsample {
    /// Halves a `dim`-channel grid.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            norm: RmsNorm::new(dim, device),
            conv: PatchConv {
                weight: conv_init(4 * dim, [dim, dim, 2, 2], device),
            },
        }
    }

    /// `[B, H, W, C]` (even `H`, `W`) to `[B, H/2, W/2, C_out]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let (h2, w2) = (h / 2, w / 2);
        let x = self.norm.forward(x);
        // Patch vectors in the weight's (in, kh, kw) order.
        let patches = x
            .reshape([b, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 5, 2, 4])
            .reshape([b * h2 * w2, c * 4]);
        let weight = self.conv.weight.val();
        let [out, c_in, kh, kw] = weight.dims();
        let weight = weight.reshape([out, c_in * kh * kw]);
        linear_weights(patches, weight.transpose(), None).reshape([b, h2, w2, out])
    }
}

/// `up_block.upsample`: RMSNorm over channels, then a 2x2 stride-2 transposed convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    /// RMSNorm over channels.
    pub norm: RmsNorm,
    /// The 2x2 stride-2 transposed convolution.
    pub conv: PatchConvTranspose,
}

impl Upsample {
    /// Doubles a `dim`-channel grid.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            norm: RmsNorm::new(dim, device),
            conv: PatchConvTranspose {
                weight: conv_init(4 * dim, [dim, dim, 2, 2], device),
            },
        }
    }

    /// `[B, h, w, C]` to `[B, 2h, 2w, C_out]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let x = self.norm.forward(x).reshape([b * h * w, c]);
        let weight = self.conv.weight.val();
        let [c_in, out, kh, kw] = weight.dims();
        let weight = weight.reshape([c_in, out * kh * kw]);
        linear_weights(x, weight, None)
            .reshape([b, h, w, out, 2, 2])
            .permute([0, 1, 4, 2, 5, 3])
            .reshape([b, 2 * h, 2 * w, out])
    }
}
