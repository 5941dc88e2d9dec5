//! 2-D convolution with a direct CPU kernel where it pays.
//!
//! [`conv2d`] (and [`conv2d_module`] for a `burn::nn::conv::Conv2d`) is what the VQ model calls.
//! On Burn's `flex` CPU backend (with this crate's `flex` feature), convolutions of stride 1,
//! dilation 1 and one group in `f32` run [`kernel`]: one zero-padded copy of the input and one
//! matrix product per kernel tap on a shifted view of it, no im2col patch matrix. Every other
//! case (other strides, half-precision tensors, autodiff tensors, GPU backends) gets Burn's own
//! `conv2d`: one model code path.
//!
//! [`kernel`] knows nothing of EditMGT or of Burn's tensor types; it could move into burn-flex.
//! `EDITMGT_DIRECT_CONV=0` in the environment turns it off.

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernel;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

/// Name of the environment variable that turns the direct kernel off when set to `0`.
pub const DIRECT_CONV_ENV: &str = "EDITMGT_DIRECT_CONV";

/// Whether the direct kernel may run (`$EDITMGT_DIRECT_CONV` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(DIRECT_CONV_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Whether [`conv2d`] runs the direct kernel for `input` with `options` (a plain `f32` flex
/// tensor, stride 1, dilation 1, one group, with this crate's `flex` feature).
pub fn runs_direct(input: &Tensor<4>, options: &ConvOptions<2>) -> bool {
    #[cfg(feature = "flex")]
    {
        enabled() && flex::takes(input, options)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (input, options);
        false
    }
}

/// `burn::tensor::module::conv2d(input, weight, bias, options)`: the same values up to float
/// rounding, through the direct kernel when the input is a plain `f32` flex tensor and the
/// options are stride 1, dilation 1, one group.
pub fn conv2d(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) = flex::conv2d(&input, &weight, bias.as_ref(), &options)
    {
        return out;
    }
    burn::tensor::module::conv2d(input, weight, bias, options)
}

/// `conv.forward(input)` through [`conv2d`] (`Same` padding, which depends on the input size,
/// runs the module's own forward).
pub fn conv2d_module(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let padding = match &conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
        PaddingConfig2d::Same => return conv.forward(input),
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    conv2d(
        input,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}
