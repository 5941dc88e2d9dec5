//! 2-D convolution with a direct CPU kernel where it pays.
//!
//! [`conv2d`] (and [`conv2d_module`] for a `burn::nn::conv::Conv2d`) is what the VQ model calls.
//! On Burn's `flex` CPU backend (with this crate's `flex` feature), convolutions of stride 1,
//! dilation 1 and one group in `f32` run [`kernel`]: one zero-padded copy of the input and one
//! matrix product per kernel tap on a shifted view of it, no im2col patch matrix. Every other
//! case (other strides, half-precision tensors, autodiff tensors, GPU backends) gets Burn's own
//! `conv2d`: one model code path.
//!
//! [`conv2d_normalized`] convolves a normalised input ([`InputNorm`]: a GroupNorm's per-channel
//! affine, optionally followed by SiLU). On the CPU the kernel applies the normalisation while it
//! makes its padded copy of the input, so the normalised input is never stored on its own, and it
//! reads a band of rows of a larger tensor in place; elsewhere the normalisation runs as Burn
//! operations before the convolution. [`conv2d_upsampled`] convolves rows of the x2 nearest
//! upsampling of its input, which the kernel likewise makes while it copies the input.
//!
//! 3x3 convolutions with even output sizes, enough output (at least 256 2x2 tiles per image,
//! so 32x32 and up) and at least 4 channels in and out run Winograd's `F(2x2, 3x3)` on the same padded copy instead of the
//! nine tap products: 16 products over transformed tiles, 2.25 times fewer multiplications, the
//! same values up to float rounding. `EDITMGT_WINOGRAD=0` ([`WINOGRAD_ENV`]) keeps the tap
//! products.
//!
//! [`kernel`] knows nothing of EditMGT or of Burn's tensor types; it could move into burn-flex.
//! `EDITMGT_DIRECT_CONV=0` in the environment turns it off.

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernel;
#[cfg(feature = "flex")]
mod winograd;

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

/// Name of the environment variable that turns the direct kernel off when set to `0`.
pub const DIRECT_CONV_ENV: &str = "EDITMGT_DIRECT_CONV";

/// Whether the direct kernel may run (`$EDITMGT_DIRECT_CONV` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(DIRECT_CONV_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Name of the environment variable that, set to `0`, makes the direct kernel compute 3x3
/// convolutions tap by tap instead of by Winograd's `F(2x2, 3x3)`.
pub const WINOGRAD_ENV: &str = "EDITMGT_WINOGRAD";

/// Whether the direct kernel may use Winograd's algorithm (`$EDITMGT_WINOGRAD` is not `0`),
/// read once.
#[cfg(feature = "flex")]
fn winograd_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(WINOGRAD_ENV).map_or(true, |v| v.trim() != "0"))
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

/// A per-channel normalisation of a convolution's input: `y = (x - mean) * scale + shift`, then
/// `silu(y)` when `silu` is set. `mean`, `scale` and `shift` are `[B or 1, C, 1, 1]` in `f32`; a
/// GroupNorm is `mean` and `scale = gamma / sqrt(var + eps)` per image and channel, `shift = beta`.
#[derive(Debug, Clone)]
pub struct InputNorm {
    /// Subtracted first, `[B or 1, C, 1, 1]`.
    pub mean: Tensor<4>,
    /// Then multiplied, `[B or 1, C, 1, 1]`.
    pub scale: Tensor<4>,
    /// Then added, `[B or 1, C, 1, 1]`.
    pub shift: Tensor<4>,
    /// Whether SiLU follows.
    pub silu: bool,
}

impl InputNorm {
    /// The normalised input by Burn's operations, in `f32` whatever `x`'s float type.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        let y = (x - self.mean.clone()) * self.scale.clone() + self.shift.clone();
        if self.silu { silu(y) } else { y }
    }
}

/// [`conv2d`] of `norm.apply(input)`, in `f32`. On the CPU (a plain `f32` flex input, stride 1,
/// dilation 1, one group) the kernel normalises while it copies the input and reads `input`
/// through its strides; otherwise the normalised input is made first.
pub fn conv2d_normalized(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    norm: &InputNorm,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) = flex::conv2d_normalized(&input, &weight, bias.as_ref(), &options, norm)
    {
        return out;
    }
    conv2d(norm.apply(input), weight, bias, options)
}

/// Nearest-neighbour x2 upsampling (PyTorch's `interpolate(scale_factor=2, mode="nearest")`):
/// every pixel repeated into a 2x2 block.
pub fn nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// [`conv2d`] of rows `[first_row, first_row + rows)` of `nearest_2x(input)`. On the CPU (a plain
/// `f32` flex input, stride 1, dilation 1, one group) the kernel upsamples while it copies the
/// input, so the upsampled tensor (four times the input) is never stored; otherwise it is made
/// first.
///
/// # Panics
///
/// When `first_row + rows` exceeds twice the input's height.
pub fn conv2d_upsampled(
    input: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
    first_row: usize,
    rows: usize,
) -> Tensor<4> {
    let height = input.dims()[2];
    assert!(
        first_row + rows <= 2 * height,
        "conv2d_upsampled: rows {first_row}..{} of an upsampled height of {}",
        first_row + rows,
        2 * height
    );
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) =
            flex::conv2d_upsampled(&input, &weight, bias.as_ref(), &options, first_row, rows)
    {
        return out;
    }
    conv2d(
        nearest_2x(input).narrow(2, first_row, rows),
        weight,
        bias,
        options,
    )
}
