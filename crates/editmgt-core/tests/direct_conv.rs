//! The direct CPU convolution against Burn's own op, through the public entry points: taken
//! for plain `f32` flex tensors with stride 1, and giving Burn's values for the paddings the VQ
//! uses (symmetric, a band's one-sided rows, none) and for a `Conv2d` module; everything else
//! (strides, half types, autodiff) takes Burn's op.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Distribution, Tensor};
use editmgt_core::direct_conv::{conv2d, conv2d_module, runs_direct};

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
