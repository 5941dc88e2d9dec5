//! The one-pass adaptive-LayerNorm steps against the same formulas as Burn operations, through
//! the public entry points, on flex tensors (the kernels) and autodiff tensors (Burn's ops):
//! groups of rows, views that are not contiguous, and a residual whose buffer another tensor
//! still shares.

use burn::tensor::module::layer_norm as burn_layer_norm;
use burn::tensor::{Device, Distribution, Tensor};
use editmgt_core::adaln::{gated_residual, layer_norm, layer_norm_modulate, rms_norm};

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// Largest `|a - b|` relative to `max |b|`.
fn relative_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>();
    let err = (a - b).abs().max().into_scalar::<f32>();
    err / scale.max(f32::MIN_POSITIVE)
}

/// The formula as Burn operations.
fn modulate_by_hand(x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    let [b, r, d] = x.dims();
    let g = shift.dims()[1];
    let ones = Tensor::<1>::ones([d], &x.device());
    let normed = burn_layer_norm(x, ones, None, 1e-6).reshape([b, g, r / g, d]);
    (normed * (scale.unsqueeze_dim::<4>(2) + 1.0) + shift.unsqueeze_dim::<4>(2)).reshape([b, r, d])
}

#[test]
fn modulated_layer_norm_in_groups_of_rows() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        for (b, g, rows, d) in [(1, 1, 1, 1), (2, 1, 7, 33), (2, 2, 300, 64)] {
            let x = random([b, g * rows, d], &device) * 3.0 + 1.0;
            let shift = random([b, g, d], &device);
            let scale = random([b, g, d], &device);
            let got = layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), 1e-6);
            let want = modulate_by_hand(x, shift, scale);
            let err = relative_error(got, want);
            assert!(err < 1e-5, "{b}x{g}x{rows}x{d}: relative error {err:e}");
        }
    }
}

#[test]
fn views_that_are_not_contiguous() {
    let device = Device::flex();
    // The text modulation: the first of the image stream's groups, `[B, 1, D]` from `[B, 2, D]`.
    let m = random([2, 2, 16], &device);
    let shift = m.clone().narrow(1, 0, 1);
    let scale = m.narrow(1, 1, 1);
    // The last block's image rows: the first half of the image stream.
    let x = random([2, 40, 16], &device).narrow(1, 0, 20);
    let got = layer_norm_modulate(x.clone(), shift.clone(), scale.clone(), 1e-6);
    let want = modulate_by_hand(x.clone(), shift.clone(), scale);
    assert!(relative_error(got, want) < 1e-5);
    let y = random([2, 20, 16], &device);
    let got = gated_residual(x.clone(), y.clone(), shift.clone());
    let want = x + y * shift;
    assert!(relative_error(got, want) < 1e-6);
}

#[test]
fn the_gated_residual_leaves_a_shared_buffer_alone() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        let (b, g, rows, d) = (2, 2, 50, 24);
        let x = random([b, g * rows, d], &device);
        let y = random([b, g * rows, d], &device);
        let gate = random([b, g, d], &device);
        let before = x.to_data();
        let kept = x.clone();
        let want = (x.clone().reshape([b, g, rows, d])
            + y.clone().reshape([b, g, rows, d]) * gate.clone().unsqueeze_dim::<4>(2))
        .reshape([b, g * rows, d]);
        let got = gated_residual(x, y, gate);
        assert!(relative_error(got, want) < 1e-6);
        // `kept` shares `x`'s buffer: the sum must not have been written into it.
        kept.to_data().assert_eq(&before, true);
    }
}

#[test]
fn rms_norm_and_plain_layer_norm() {
    for device in [Device::flex(), Device::flex().autodiff()] {
        let x = random([2, 30, 4, 40], &device) * 2.0;
        let gamma = random([40], &device);
        let got = rms_norm(x.clone(), gamma.clone(), 1e-6);
        let inv = (x.clone().square().mean_dim(3) + 1e-6).sqrt().recip();
        let want = x.clone() * inv * gamma.unsqueeze::<4>();
        assert!(relative_error(got, want) < 1e-5);
        let ones = Tensor::<1>::ones([40], &device);
        let want = burn_layer_norm(x.clone(), ones, None, 1e-6);
        assert!(relative_error(layer_norm(x, 1e-6), want) < 1e-6);
    }
}

#[test]
fn autodiff_tensors_keep_their_gradients() {
    let device = Device::flex().autodiff();
    let x = random([1, 6, 8], &device).require_grad();
    let gate = random([1, 2, 8], &device);
    let y = gated_residual(
        layer_norm_modulate(x.clone(), gate.clone(), gate.clone(), 1e-6),
        x.clone(),
        gate,
    );
    let grads = rms_norm(y, Tensor::ones([8], &device), 1e-6)
        .sum()
        .backward();
    assert_eq!(x.grad(&grads).expect("a gradient").dims(), [1, 6, 8]);
}
