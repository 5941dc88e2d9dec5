//! Double-stream blocks: text and image streams with their own weights, one joint attention.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use editmgt_core::bf16_products::linear;

use crate::attention::{DoubleStreamAttention, JointContext};
use crate::capture::CaptureRows;
use crate::norm::{AdaLayerNormZero, gated, modulated};

/// Linear, tanh-approximated GELU, Linear (diffusers' `FeedForward` with
/// `activation_fn="gelu-approximate"`; `net.0.proj` and `net.2` in the checkpoint).
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `dim -> 4 dim` (`net.0.proj`).
    pub proj_in: Linear,
    /// `4 dim -> dim` (`net.2`).
    pub proj_out: Linear,
}

impl FeedForward {
    /// The MLP of width `dim` (hidden `4 dim`).
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            proj_in: LinearConfig::new(dim, 4 * dim).init(device),
            proj_out: LinearConfig::new(4 * dim, dim).init(device),
        }
    }

    /// Applies the MLP to `[.., dim]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(&self.proj_out, gelu_tanh(linear(&self.proj_in, x)))
    }
}

/// The tanh approximation of GELU (one CPU pass on `flex`; see [`editmgt_core::activation`]).
pub(crate) use editmgt_core::activation::gelu_tanh;

/// The conditioning every block of one forward reads: `silu(temb)` for the text stream and
/// `silu([temb, reference_temb])` for the image stream's parts.
pub(crate) struct BlockConditioning {
    /// `[B, D]`.
    pub text: Tensor<2>,
    /// `[B, streams, D]`: the image part, then (with a reference) the reference part.
    pub streams: Tensor<3>,
}

/// One double-stream block (the reference's `TransformerBlock`).
///
/// The image stream `[B, streams * N, D]` holds the image tokens followed by the reference
/// tokens: they share every weight and differ only in their AdaLN modulation (`temb` vs
/// `reference_temb`), so each linear layer runs once over both.
#[derive(Module, Debug)]
pub struct DoubleStreamBlock {
    /// AdaLN-Zero of the image stream (6 modulation vectors).
    pub norm1: AdaLayerNormZero,
    /// AdaLN-Zero of the text stream.
    pub norm1_context: AdaLayerNormZero,
    /// Joint attention.
    pub attn: DoubleStreamAttention,
    /// Image MLP.
    pub ff: FeedForward,
    /// Text MLP.
    pub ff_context: FeedForward,
}

impl DoubleStreamBlock {
    /// A block of `heads x head_dim`.
    pub fn new(heads: usize, head_dim: usize, device: &Device) -> Self {
        let dim = heads * head_dim;
        Self {
            norm1: AdaLayerNormZero::new(dim, 6, device),
            norm1_context: AdaLayerNormZero::new(dim, 6, device),
            attn: DoubleStreamAttention::new(heads, head_dim, device),
            ff: FeedForward::new(dim, device),
            ff_context: FeedForward::new(dim, device),
        }
    }

    /// Updates the text `[B, T, D]` and image `[B, streams * N, D]` streams.
    pub(crate) fn forward(
        &self,
        ctx: &JointContext,
        cond: &BlockConditioning,
        text: Tensor<3>,
        image: Tensor<3>,
        capture: Option<&CaptureRows>,
    ) -> (Tensor<3>, Tensor<3>, Option<Tensor<3>>) {
        // [B, 1, D] for the text, [B, streams, D] for the image stream.
        let tm: Vec<Tensor<3>> = self
            .norm1_context
            .chunks(cond.text.clone(), 6)
            .into_iter()
            .map(|m| m.unsqueeze_dim(1))
            .collect();
        let im: Vec<Tensor<3>> = self.norm1.chunks(cond.streams.clone(), 6);

        let text_normed = modulated(text.clone(), tm[0].clone(), tm[1].clone());
        let image_normed = modulated(image.clone(), im[0].clone(), im[1].clone());

        let (text_attn, image_attn, captured) =
            self.attn.forward(ctx, text_normed, image_normed, capture);

        let image = gated(image, image_attn, im[2].clone());
        let image_ff = self
            .ff
            .forward(modulated(image.clone(), im[3].clone(), im[4].clone()));
        let image = gated(image, image_ff, im[5].clone());

        let text = gated(text, text_attn, tm[2].clone());
        let text_ff =
            self.ff_context
                .forward(modulated(text.clone(), tm[3].clone(), tm[4].clone()));
        let text = gated(text, text_ff, tm[5].clone());

        (text, image, captured)
    }
}
