//! Convolutions that accumulate in `f32` whatever the compute type.
//!
//! Burn 0.22's convolution on wgpu accumulates in its input's float type. In `f16` that loses
//! accuracy with the number of products per output: measured on Mesa's lavapipe against `f32`,
//! a 3x3 convolution's relative error is 4e-3 over 16 input channels, 2e-2 over 128 and 1e-1
//! over 512 (the released VQ's widest level), where a matrix product in `f16` stays at 4e-4 and
//! the CPU backend's `f16` convolution at 1e-3. So a half-precision VQ widens each convolution's
//! input and weights to `f32` for the convolution and narrows the result back; `f32` models run
//! the convolution unchanged. Every backend runs the same code; on the CPU the convolutions go
//! through [`editmgt_core::direct_conv`] (a direct kernel without im2col).

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use editmgt_core::direct_conv::{
    InputNorm, conv2d, conv2d_module, conv2d_normalized, conv2d_upsampled,
};

/// `conv.forward(x)`, accumulated in `f32` when `x` is in half precision.
pub(crate) fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return conv2d_module(conv, x);
    }
    let mut wide = conv.clone();
    wide.weight = Param::from_tensor(conv.weight.val().cast(DType::F32));
    wide.bias = conv
        .bias
        .as_ref()
        .map(|b| Param::from_tensor(b.val().cast(DType::F32)));
    conv2d_module(&wide, x.cast(DType::F32)).cast(dtype)
}

/// `conv2d(x)` with `conv`'s weights and bias and the given options (in place of the module's
/// own padding), accumulated in `f32` when `x` is in half precision.
pub(crate) fn conv2d_with(conv: &Conv2d, x: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    in_f32(conv, x, |x, weight, bias| conv2d(x, weight, bias, options))
}

/// `conv2d` of `norm.apply(x)` with `conv`'s weights and bias and the given options, in `f32`
/// (the result cast back to `x`'s float type). On the CPU the normalisation runs inside the
/// convolution's input copy ([`conv2d_normalized`]).
pub(crate) fn conv2d_normalized_with(
    conv: &Conv2d,
    x: Tensor<4>,
    options: ConvOptions<2>,
    norm: &InputNorm,
) -> Tensor<4> {
    in_f32(conv, x, |x, weight, bias| {
        conv2d_normalized(x, weight, bias, options, norm)
    })
}

/// `conv2d` of rows `[first_row, first_row + rows)` of `nearest_2x(x)` with `conv`'s weights and
/// bias and the given options, accumulated in `f32` when `x` is in half precision. On the CPU
/// the upsampling runs inside the convolution's input copy ([`conv2d_upsampled`]).
pub(crate) fn conv2d_upsampled_with(
    conv: &Conv2d,
    x: Tensor<4>,
    options: ConvOptions<2>,
    first_row: usize,
    rows: usize,
) -> Tensor<4> {
    in_f32(conv, x, |x, weight, bias| {
        conv2d_upsampled(x, weight, bias, options, first_row, rows)
    })
}

/// `convolve(x, weight, bias)` with `conv`'s weights and bias, all widened to `f32` when `x` is
/// in half precision and the result narrowed back.
fn in_f32(
    conv: &Conv2d,
    x: Tensor<4>,
    convolve: impl FnOnce(Tensor<4>, Tensor<4>, Option<Tensor<1>>) -> Tensor<4>,
) -> Tensor<4> {
    let dtype = x.dtype();
    let bias = conv.bias.as_ref().map(|b| b.val());
    if dtype == DType::F32 {
        return convolve(x, conv.weight.val(), bias);
    }
    convolve(
        x.cast(DType::F32),
        conv.weight.val().cast(DType::F32),
        bias.map(|b| b.cast(DType::F32)),
    )
    .cast(dtype)
}
