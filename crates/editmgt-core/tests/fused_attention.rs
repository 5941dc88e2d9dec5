//! The fused CPU attention against Burn's own op, through the public entry point: the kernel is
//! taken for plain flex tensors and gives Burn's values (f32, half types, bias, grouped heads,
//! strided inputs); autodiff tensors take Burn's op and keep their gradients.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Distribution, Tensor};
use editmgt_core::fused_attention::{attention, runs_fused};

fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Largest `|a - b|` relative to `max |b|`.
fn relative_error(a: Tensor<4>, b: Tensor<4>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>();
    let err = (a - b).abs().max().into_scalar::<f32>();
    err / scale.max(f32::MIN_POSITIVE)
}

fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    burn_attention(q, k, v, None, bias, options)
}

#[test]
fn flex_tensors_take_the_kernel_and_match_burns_op() {
    let device = Device::flex();
    let (b, h, s, d) = (2, 3, 150, 16);
    let q = random([b, h, s, d], &device);
    let k = random([b, h, s + 7, d], &device);
    let v = random([b, h, s + 7, d + 4], &device);
    let bias = random([1, 1, s, s + 7], &device);
    assert!(runs_fused(&q));
    for bias in [None, Some(bias)] {
        let got = attention(q.clone(), k.clone(), v.clone(), bias.clone(), None);
        assert_eq!(got.dims(), [b, h, s, d + 4]);
        let want = reference(q.clone(), k.clone(), v.clone(), bias);
        let err = relative_error(got, want);
        assert!(err < 1e-5, "relative error {err:e}");
    }
}

#[test]
fn head_interleaved_views_and_an_explicit_scale() {
    let device = Device::flex();
    // Projections `[B, S, H * d]` viewed as heads, the way the models call it.
    let x = || {
        Tensor::<3>::random([2, 90, 4 * 8], Distribution::Normal(0.0, 1.0), &device)
            .reshape([2, 90, 4, 8])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (x(), x(), x());
    let got = attention(q.clone(), k.clone(), v.clone(), None, Some(0.3));
    let want = reference(q * (0.3 * 8f64.sqrt()), k, v, None);
    let err = relative_error(got, want);
    assert!(err < 1e-5, "relative error {err:e}");
}

#[test]
fn grouped_heads_match_repeated_heads() {
    let device = Device::flex();
    let q = random([1, 4, 33, 8], &device);
    let k = random([1, 2, 40, 8], &device);
    let v = random([1, 2, 40, 8], &device);
    let repeat = |x: Tensor<4>| {
        x.reshape([1, 2, 1, 40, 8])
            .expand([1, 2, 2, 40, 8])
            .reshape([1, 4, 40, 8])
    };
    let got = attention(q.clone(), k.clone(), v.clone(), None, None);
    let want = reference(q, repeat(k), repeat(v), None);
    let err = relative_error(got, want);
    assert!(err < 1e-5, "relative error {err:e}");
}

#[test]
fn half_types_compute_in_f32_and_keep_their_type() {
    let device = Device::flex();
    let q = random([1, 2, 40, 16], &device);
    let k = random([1, 2, 40, 16], &device);
    let v = random([1, 2, 40, 16], &device);
    let want = reference(q.clone(), k.clone(), v.clone(), None);
    for dtype in [DType::F16, DType::BF16] {
        let (qh, kh, vh) = (
            q.clone().cast(dtype),
            k.clone().cast(dtype),
            v.clone().cast(dtype),
        );
        assert!(runs_fused(&qh));
        let got = attention(qh, kh, vh, None, None);
        assert_eq!(got.dtype(), dtype);
        let err = relative_error(got.cast(DType::F32), want.clone());
        assert!(err < 2e-2, "{dtype:?}: relative error {err:e}");
    }
}

#[test]
fn autodiff_tensors_take_burns_op_and_keep_gradients() {
    let device = Device::flex().autodiff();
    let q = random([1, 2, 20, 8], &device).require_grad();
    let k = random([1, 2, 20, 8], &device);
    let v = random([1, 2, 20, 8], &device);
    assert!(!runs_fused(&q));
    let out = attention(q.clone(), k, v, None, None);
    let grads = out.sum().backward();
    let grad = q.grad(&grads).expect("the query has a gradient");
    assert_eq!(grad.dims(), [1, 2, 20, 8]);
}
