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
use editmgt_core::bf16_products::kernel_product;

/// `layer(x)` with `x` and the result in f32 and the product in the weight's float type: bf16
/// weights on the CPU go through the bf16 kernel where the CPU has AMX-BF16 or AVX512-BF16
/// ([`editmgt_core::bf16_products`]: `x` rounded to bf16, sums in f32).
pub(crate) fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    let weight = layer.weight.val();
    let dtype = weight.dtype();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let x = x.cast(DType::F32);
    if let Some(out) = kernel_product(&x, &weight, bias.as_ref()) {
        return out;
    }
    burn::tensor::module::linear(x.cast(dtype), weight, bias).cast(DType::F32)
}

/// Layer normalisation over the last dimension, computed in f32 whatever the weights' type.
pub(crate) fn layer_norm<const D: usize>(norm: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    let gamma = norm.gamma.val().cast(DType::F32);
    let beta = norm.beta.as_ref().map(|b| b.val().cast(DType::F32));
    burn::tensor::module::layer_norm(x.cast(DType::F32), gamma, beta, eps)
}

/// GELU with the tanh approximation (PyTorch `gelu(approximate="tanh")`, transformers'
/// `gelu_pytorch_tanh`), in one CPU pass on `flex` (see [`editmgt_core::activation`]).
pub(crate) use editmgt_core::activation::gelu_tanh;

/// GELU with the exact error function (PyTorch `gelu`, transformers' `gelu`).
pub(crate) fn gelu_erf<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::gelu(x)
}

/// OpenAI CLIP's `quick_gelu`: `x * sigmoid(1.702 x)`.
pub(crate) fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * burn::tensor::activation::sigmoid(x * 1.702)
}
