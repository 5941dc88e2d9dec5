//! Single-stream blocks: text, image and reference tokens share every weight.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use editmgt_core::bf16_products::{linear, linear_weights};

use crate::attention::{JointContext, QueryRows, SingleStreamAttention};
use crate::capture::CaptureRows;
use crate::double_block::{BlockConditioning, gelu_tanh};
use crate::norm::{AdaLayerNormZero, gated, modulated};

/// One single-stream block (the reference's `SingleTransformerBlock`): AdaLN-Zero (shift,
/// scale, gate), attention and a tanh-GELU MLP in parallel, `proj_out(concat(attn, mlp))`
/// gated into the residual.
///
/// Text and image tokens use `temb`, reference tokens `reference_temb`. The streams are kept
/// apart (text `[B, T, D]`, image `[B, streams * N, D]`) so that modulation and gating never
/// copy; `proj_out` is applied as two products on the halves of its weight instead of on a
/// concatenation.
#[derive(Module, Debug)]
pub struct SingleStreamBlock {
    /// AdaLN-Zero (3 modulation vectors).
    pub norm: AdaLayerNormZero,
    /// `dim -> 4 dim`.
    pub proj_mlp: Linear,
    /// `5 dim -> dim`.
    pub proj_out: Linear,
    /// Attention (no output projection).
    pub attn: SingleStreamAttention,
}

impl SingleStreamBlock {
    /// A block of `heads x head_dim`.
    pub fn new(heads: usize, head_dim: usize, device: &Device) -> Self {
        let dim = heads * head_dim;
        Self {
            norm: AdaLayerNormZero::new(dim, 3, device),
            proj_mlp: LinearConfig::new(dim, 4 * dim).init(device),
            proj_out: LinearConfig::new(5 * dim, dim).init(device),
            attn: SingleStreamAttention::new(heads, head_dim, device),
        }
    }

    /// `proj_out(concat(attn, gelu(proj_mlp(normed))))`.
    fn output(&self, attn: Tensor<3>, normed: Tensor<3>) -> Tensor<3> {
        let mlp = gelu_tanh(linear(&self.proj_mlp, normed));
        let weight = self.proj_out.weight.val();
        let [rows, _] = weight.dims();
        let dim = attn.dims()[2];
        let bias = self.proj_out.bias.as_ref().map(|b| b.val());
        linear_weights(attn, weight.clone().narrow(0, 0, dim), bias)
            + linear_weights(mlp, weight.narrow(0, dim, rows - dim), None)
    }

    /// Updates the text `[B, T, D]` and image `[B, streams * N, D]` streams. With
    /// [`QueryRows::ImageOnly`] (the last block) only the image tokens are updated and returned
    /// (`[B, N, D]`; the text is `None`): nothing reads the others afterwards.
    pub(crate) fn forward(
        &self,
        ctx: &JointContext,
        cond: &BlockConditioning,
        text: Tensor<3>,
        image: Tensor<3>,
        capture: Option<&CaptureRows>,
        rows: QueryRows,
    ) -> (Option<Tensor<3>>, Tensor<3>, Option<Tensor<3>>) {
        let n = ctx.image_len;
        // [B, streams, D] for the image stream.
        let m = self.norm.chunks(cond.streams.clone(), 3);
        // The text rows use `temb`, which is the image stream's first part.
        let tm: Vec<Tensor<3>> = m.iter().map(|m| m.clone().narrow(1, 0, 1)).collect();

        let text_normed = modulated(text.clone(), tm[0].clone(), tm[1].clone());
        let image_normed = modulated(image.clone(), m[0].clone(), m[1].clone());

        let (text_attn, image_attn, captured) = self.attn.forward(
            ctx,
            text_normed.clone(),
            image_normed.clone(),
            capture,
            rows,
        );

        match (rows, text_attn) {
            (QueryRows::All, Some(text_attn)) => {
                let image_out = self.output(image_attn, image_normed);
                let image = gated(image, image_out, m[2].clone());
                let text_out = self.output(text_attn, text_normed);
                let text = gated(text, text_out, tm[2].clone());
                (Some(text), image, captured)
            }
            _ => {
                let image_normed = image_normed.narrow(1, 0, n);
                let image_out = self.output(image_attn, image_normed);
                let image = gated(image.narrow(1, 0, n), image_out, tm[2].clone());
                (None, image, captured)
            }
        }
    }
}
