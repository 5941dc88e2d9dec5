//! The direct CPU convolution against Burn's own op, through the public entry points: taken
//! for plain `f32` flex tensors with stride 1, and giving Burn's values for the paddings the VQ
//! uses (symmetric, a band's one-sided rows, none) and for a `Conv2d` module; everything else
//! (strides, half types, autodiff) takes Burn's op. A normalised input (GroupNorm affine and
//! SiLU applied in the kernel's input copy) gives Burn's convolution of the normalised tensor,
//! for a band of rows read in place too, and on the generic path.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Distribution, Tensor};
use editmgt_core::direct_conv::{
    InputNorm, conv2d, conv2d_module, conv2d_normalized, conv2d_upsampled, nearest_2x, runs_direct,
};
use editmgt_core::group_norm::{group_stats, group_stats_by_bands};

fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn relative_error(a: Tensor<4>, b: Tensor<4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let scale = b.clone().abs().max().into_scalar::<f32>();
    (a - b).abs().max().into_scalar::<f32>() / scale.max(f32::MIN_POSITIVE)
}

#[test]
fn paddings_of_the_vq_match_burns_op() {
    let device = Device::flex();
    let x = random([2, 5, 13, 17], &device);
    let w = random([6, 5, 3, 3], &device);
    let b = random([6], &device);
    for padding in [
        [(1, 1), (1, 1)],
        [(0, 1), (1, 1)],
        [(1, 0), (1, 1)],
        [(0, 0), (0, 0)],
    ] {
        let options = ConvOptions::new_with_padding([1, 1], padding, [1, 1], 1);
        assert!(runs_direct(&x, &options));
        for bias in [None, Some(b.clone())] {
            let got = conv2d(x.clone(), w.clone(), bias.clone(), options.clone());
            let want = burn_conv2d(x.clone(), w.clone(), bias, options.clone());
            let err = relative_error(got, want);
            assert!(err < 1e-5, "{padding:?}: {err:e}");
        }
    }
}

#[test]
fn modules_and_views_match_burns_op() {
    let device = Device::flex();
    let conv = Conv2dConfig::new([8, 4], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(&device);
    // A non-contiguous input (a channel-last view).
    let x = random([1, 9, 11, 8], &device).permute([0, 3, 1, 2]);
    let err = relative_error(conv2d_module(&conv, x.clone()), conv.forward(x));
    assert!(err < 1e-5, "{err:e}");
    let one = Conv2dConfig::new([8, 3], [1, 1]).init(&device);
    let x = random([2, 8, 6, 7], &device);
    let err = relative_error(conv2d_module(&one, x.clone()), one.forward(x));
    assert!(err < 1e-5, "{err:e}");
}

#[test]
fn other_convolutions_take_burns_op() {
    let device = Device::flex();
    let x = random([1, 4, 8, 8], &device);
    let strided = ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 1);
    assert!(!runs_direct(&x, &strided));
    let w = random([3, 4, 3, 3], &device);
    let err = relative_error(
        conv2d(x.clone(), w.clone(), None, strided.clone()),
        burn_conv2d(x.clone(), w, None, strided),
    );
    assert!(err < 1e-6, "{err:e}");
    let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    assert!(!runs_direct(&x.clone().cast(DType::F16), &same));
    assert!(!runs_direct(
        &random([1, 4, 8, 8], &device.autodiff()),
        &same
    ));
}

/// The normalisation of a GroupNorm of `x` (`groups` groups) with random affine parameters.
fn group_norm_of(x: &Tensor<4>, groups: usize, silu: bool) -> InputNorm {
    let device = x.device();
    let c = x.dims()[1];
    let (mean, std) = group_stats(x, groups, 1e-6, 3);
    let gamma = random([1, c, 1, 1], &device);
    InputNorm {
        mean,
        scale: gamma / std,
        shift: random([1, c, 1, 1], &device),
        silu,
    }
}

#[test]
fn normalised_inputs_match_burns_op_on_the_normalised_tensor() {
    let device = Device::flex();
    let x = random([2, 8, 12, 9], &device) * 3.0 + 0.5;
    let w = random([5, 8, 3, 3], &device);
    let b = random([5], &device);
    for silu in [false, true] {
        let norm = group_norm_of(&x, 4, silu);
        // The whole tensor, and a band of rows read in place (a narrowed view).
        for (input, padding) in [
            (x.clone(), [(1, 1), (1, 1)]),
            (x.clone().narrow(2, 3, 6), [(0, 0), (1, 1)]),
            (x.clone().narrow(2, 0, 5), [(1, 0), (1, 1)]),
        ] {
            let options = ConvOptions::new_with_padding([1, 1], padding, [1, 1], 1);
            assert!(runs_direct(&input, &options));
            let got = conv2d_normalized(
                input.clone(),
                w.clone(),
                Some(b.clone()),
                options.clone(),
                &norm,
            );
            let want = burn_conv2d(norm.apply(input), w.clone(), Some(b.clone()), options);
            let err = relative_error(got, want);
            assert!(err < 1e-5, "silu {silu}, {padding:?}: {err:e}");
        }
    }
    // Autodiff tensors take Burn's operations (and keep their graph).
    let ad = device.autodiff();
    let x = random([1, 4, 6, 6], &ad).require_grad();
    let norm = group_norm_of(&x, 2, true);
    let out = conv2d_normalized(
        x.clone(),
        random([2, 4, 3, 3], &ad),
        None,
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        &norm,
    );
    let grads = out.sum().backward();
    assert!(x.grad(&grads).is_some());
}

#[test]
fn group_statistics_match_the_banded_reduction() {
    let device = Device::flex();
    let x = random([2, 6, 40, 33], &device) * 2.0 - 7.0;
    for groups in [1, 3, 6] {
        let (mean, std) = group_stats(&x, groups, 1e-6, 7);
        let (want_mean, want_std) = group_stats_by_bands(&x, groups, 1e-6, 7);
        assert_eq!(mean.dims(), [2, 6, 1, 1]);
        let err = relative_error(mean, want_mean);
        assert!(err < 1e-5, "mean, {groups} groups: {err:e}");
        let err = relative_error(std, want_std);
        assert!(err < 1e-5, "std, {groups} groups: {err:e}");
    }
}

#[test]
fn upsampled_rows_match_burns_op_on_the_upsampled_tensor() {
    let device = Device::flex();
    let x = random([2, 4, 7, 6], &device);
    let w = random([3, 4, 3, 3], &device);
    let b = random([3], &device);
    // Whole, a band from an even row, a band from an odd row of a narrowed input.
    for (input, first_row, rows, padding) in [
        (x.clone(), 0, 14, [(1, 1), (1, 1)]),
        (x.clone().narrow(2, 2, 4), 0, 7, [(0, 0), (1, 1)]),
        (x.clone().narrow(2, 3, 4), 1, 7, [(0, 1), (1, 1)]),
    ] {
        let options = ConvOptions::new_with_padding([1, 1], padding, [1, 1], 1);
        let got = conv2d_upsampled(
            input.clone(),
            w.clone(),
            Some(b.clone()),
            options.clone(),
            first_row,
            rows,
        );
        let up = nearest_2x(input).narrow(2, first_row, rows);
        let want = burn_conv2d(up, w.clone(), Some(b.clone()), options);
        let err = relative_error(got, want);
        assert!(err < 1e-5, "rows {first_row}+{rows}: {err:e}");
    }
    // Half precision takes Burn's ops on the upsampled tensor.
    let half = x.clone().cast(DType::F16);
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let got = conv2d_upsampled(
        half.clone(),
        w.clone().cast(DType::F16),
        None,
        options.clone(),
        0,
        14,
    );
    let want = burn_conv2d(nearest_2x(x), w, None, options);
    let err = relative_error(got.cast(DType::F32), want);
    assert!(err < 1e-2, "f16: {err:e}");
}
