//! Mixed-precision building blocks shared by both encoders.
//!
//! Weights may be held in f16/bf16 ([`editmgt_core::FloatType`]); activations always travel in
//! f32 between layers. Only the matrix products run in the weights' type: their input is cast
//! down and their output cast back up. Normalisation, activation functions, rotary embedding,
//! attention (softmax and Gemma's logit soft-capping) and the residual stream therefore stay in
//! f32, which keeps Gemma-2's large activations from overflowing f16. With f32 weights every cast
//! is a no-op.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::{DType, Tensor};

/// `layer(x)` with `x` and the result in f32 and the product in the weight's float type.
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    let dtype = weight.dtype();
    let bias = layer.bias.as_ref().map(|b| b.val());
    burn::tensor::module::linear(x.cast(dtype), weight, bias).cast(DType::F32)
}

/// Layer normalisation over the last dimension, computed in f32 whatever the weights' type.
pub(crate) fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    let gamma = norm.gamma.val().cast(DType::F32);
    let beta = norm.beta.as_ref().map(|b| b.val().cast(DType::F32));
    burn::tensor::module::layer_norm(x.cast(DType::F32), gamma, beta, eps)
}

/// GELU with the tanh approximation (PyTorch `gelu(approximate="tanh")`, transformers'
/// `gelu_pytorch_tanh`): `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

/// GELU with the exact error function (PyTorch `gelu`, transformers' `gelu`).
pub(crate) fn gelu_erf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::gelu(x)
}

/// OpenAI CLIP's `quick_gelu`: `x * sigmoid(1.702 x)`.
pub(crate) fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * burn::tensor::activation::sigmoid(x * 1.702)
}
