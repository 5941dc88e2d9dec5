//! Scaled dot-product attention with a fused CPU kernel where it pays.
//!
//! [`attention`] is the one entry point the models call. On Burn's `flex` CPU backend (with this
//! crate's `flex` feature) it runs [`kernel`]: query rows in cache-sized blocks, both products
//! through `gemm`, an exact row softmax with a vectorised `exp`, inputs read in place whatever
//! their strides, and the output written in the layout in which heads are merged afterwards.
//! Every other device (wgpu, CUDA, and autodiff tensors, which need Burn's backward) gets Burn's
//! own `attention` op: one model code path, the kernel an implementation detail of one backend.
//!
//! [`kernel`] knows nothing of EditMGT or of Burn's tensor types; it could move into burn-flex.
//!
//! `EDITMGT_FUSED_ATTENTION=0` in the environment turns the kernel off (Burn's op everywhere), for
//! side-by-side measurements and for ruling it out when a result looks wrong.

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernel;
#[cfg(feature = "flex")]
mod softmax;

use burn::tensor::Tensor;
use burn::tensor::ops::AttentionModuleOptions;

/// Whether [`attention`] runs the fused CPU kernel for a query like `query` (a plain `flex`
/// tensor of `f32`, `f16` or `bf16`, with this crate's `flex` feature); otherwise it runs
/// Burn's op.
pub fn runs_fused(query: &Tensor<4>) -> bool {
    #[cfg(feature = "flex")]
    {
        enabled() && flex::is_flex_float(query)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = query;
        false
    }
}

/// `softmax(query key^T * scale + bias) value`.
///
/// `query` is `[B, H, Sq, d]`, `key` `[B, Hk, Skv, d]` and `value` `[B, Hk, Skv, dv]` with `H` a
/// multiple of `Hk` (grouped-query attention), `bias` broadcasts as `[1|B, 1|H, Sq, Skv]`, `scale`
/// defaults to `1 / sqrt(d)`. Returns `[B, H, Sq, dv]`, the same values as
/// `burn::tensor::module::attention` up to float rounding.
pub fn attention(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: Option<f64>,
) -> Tensor<4> {
    let scale = scale.unwrap_or_else(|| 1.0 / (query.dims()[3].max(1) as f64).sqrt());
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(out) = flex::attention(&query, &key, &value, bias.as_ref(), scale as f32, None)
    {
        return out;
    }
    let [_, heads, _, _] = query.dims();
    let kv_heads = key.dims()[1];
    let (key, value) = if kv_heads != heads && kv_heads > 0 {
        (
            repeat_heads(key, heads / kv_heads),
            repeat_heads(value, heads / kv_heads),
        )
    } else {
        (key, value)
    };
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: false,
    };
    burn::tensor::module::attention(query, key, value, None, bias, options)
}

/// [`attention`] with both products in bf16 (scaled queries, keys, softmax numerators and values
/// rounded to bf16; sums and the softmax in `f32`) where [`crate::bf16_products::isa`] says the
/// CPU can (`flex` tensors only); [`attention`] everywhere else. What `--dtype bf16` runs on the
/// CPU.
pub fn attention_bf16(
    query: Tensor<4>,
    key: Tensor<4>,
    value: Tensor<4>,
    bias: Option<Tensor<4>>,
    scale: Option<f64>,
) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(isa) = crate::bf16_products::isa()
    {
        let scale = scale.unwrap_or_else(|| 1.0 / (query.dims()[3].max(1) as f64).sqrt());
        if let Some(out) =
            flex::attention(&query, &key, &value, bias.as_ref(), scale as f32, Some(isa))
        {
            return out;
        }
    }
    attention(query, key, value, bias, scale)
}

/// Name of the environment variable that turns the fused kernel off when set to `0`.
pub const FUSED_ATTENTION_ENV: &str = "EDITMGT_FUSED_ATTENTION";

/// Whether the fused kernel may run (`$EDITMGT_FUSED_ATTENTION` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(FUSED_ATTENTION_ENV).map_or(true, |v| v.trim() != "0"))
}

/// `[B, Hk, S, d]` to `[B, Hk * group, S, d]`, each head repeated `group` times in a row.
fn repeat_heads(x: Tensor<4>, group: usize) -> Tensor<4> {
    if group == 1 {
        return x;
    }
    let [b, h, s, d] = x.dims();
    x.reshape([b, h, 1, s, d])
        .expand([b, h, group, s, d])
        .reshape([b, h * group, s, d])
}
