//! Linear layers with bf16 products, through the public entry points: on a CPU with AMX-BF16 or
//! AVX512-BF16 the weights of a module's `Linear` layers become bf16 and `linear` takes the
//! kernel, agreeing with the f32 product within bf16 rounding; on any other CPU nothing is cast
//! and `linear` is Burn's product. Slices of a weight, odd sizes, autodiff tensors and tensors
//! whose float types differ take the right path.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Distribution, Tensor};
use editmgt_core::bf16_products::{hold_weights_in_bf16, isa, linear, linear_weights};

/// A module with a `Linear` inside and a 2-D parameter that is not a `Linear`'s weight.
#[derive(Module, Debug)]
struct TwoLayers {
    first: Linear,
    second: Linear,
    table: Param<Tensor<2>>,
}

fn layers(device: &Device, d_in: usize, d_hidden: usize, d_out: usize) -> TwoLayers {
    TwoLayers {
        first: LinearConfig::new(d_in, d_hidden).init(device),
        second: LinearConfig::new(d_hidden, d_out)
            .with_bias(false)
            .init(device),
        table: Param::from_tensor(Tensor::random(
            [4, 4],
            Distribution::Normal(0.0, 1.0),
            device,
        )),
    }
}

/// Largest `|a - b|` relative to `max |b|`.
fn relative_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let scale = b.clone().abs().max().into_scalar::<f32>();
    let err = (a - b).abs().max().into_scalar::<f32>();
    err / scale.max(f32::MIN_POSITIVE)
}

#[test]
fn linear_weights_become_bf16_exactly_when_the_cpu_multiplies_in_bf16() {
    let device = Device::flex();
    let model = layers(&device, 8, 8, 8);
    let (model, cast) = hold_weights_in_bf16(model);
    assert_eq!(cast, isa().is_some(), "cast iff the CPU has bf16 products");
    let want = if cast { DType::BF16 } else { DType::F32 };
    assert_eq!(model.first.weight.val().dtype(), want);
    assert_eq!(model.second.weight.val().dtype(), want);
    // Biases and other parameters stay as they are.
    let bias = model.first.bias.as_ref().expect("bias").val();
    assert_eq!(bias.dtype(), DType::F32);
    assert_eq!(model.table.val().dtype(), DType::F32);
}

#[test]
fn bf16_products_agree_with_f32_within_bf16_rounding() {
    let device = Device::flex();
    // Sizes that are not multiples of the kernel's tiles, and a batch of rows.
    for (d_in, d_hidden, d_out, rows) in [(8, 8, 8, 1), (100, 70, 33, 37), (256, 512, 96, 130)] {
        let model = layers(&device, d_in, d_hidden, d_out);
        let x = Tensor::<3>::random([2, rows, d_in], Distribution::Normal(0.0, 1.0), &device);
        let want = linear(&model.second, linear(&model.first, x.clone()));
        let (model, cast) = hold_weights_in_bf16(model);
        let got = linear(&model.second, linear(&model.first, x));
        assert_eq!(got.dtype(), DType::F32);
        assert_eq!(got.dims(), [2, rows, d_out]);
        let err = relative_error(got, want);
        if cast {
            // Two layers of inputs and weights rounded to 8 significant bits.
            assert!(
                err < 2e-2,
                "{d_in}x{d_hidden}x{d_out}: relative error {err:e}"
            );
            assert!(err > 0.0, "the bf16 products were not taken");
        } else {
            assert_eq!(err, 0.0, "without bf16 products nothing changes");
        }
    }
}

#[test]
fn the_kernel_gives_the_products_of_the_rounded_values() {
    let device = Device::flex();
    let (k, n, m) = (96, 40, 50);
    let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    let w16 = w.cast(DType::BF16);
    let got = linear_weights(x.clone(), w16.clone(), Some(b.clone()));
    // Burn's product of the same bf16-rounded values, in f32.
    let rounded_x = x.cast(DType::BF16).cast(DType::F32);
    let want = burn::tensor::module::linear(rounded_x, w16.cast(DType::F32), Some(b));
    let err = relative_error(got, want);
    if isa().is_some() {
        assert!(err < 1e-5, "relative error {err:e}");
    } else {
        // Without the kernel the input is not rounded: the error is the input's rounding alone.
        assert!(err < 1e-2, "relative error {err:e}");
    }
}

#[test]
fn slices_and_transposed_views_of_a_weight_are_read_in_place() {
    let device = Device::flex();
    let (k, n, m) = (64, 48, 20);
    let full =
        Tensor::<2>::random([2 * k, n], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
    // The single-stream block's split of `proj_out` (rows of the weight from an offset).
    let lower = full.clone().narrow(0, k, k);
    let got = linear_weights(x.clone(), lower.clone(), None);
    assert_eq!(lower.dtype(), DType::BF16);
    let want = linear_weights(
        x.clone(),
        Tensor::from_data(lower.to_data(), (&device, DType::BF16)),
        None,
    );
    assert_eq!(relative_error(got, want), 0.0);
    // A transposed view (a weight stored `[n, k]`).
    let stored =
        Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &device).cast(DType::BF16);
    let got = linear_weights(x.clone(), stored.clone().transpose(), None);
    let contiguous = Tensor::from_data(stored.transpose().to_data(), (&device, DType::BF16));
    let want = linear_weights(x, contiguous, None);
    assert_eq!(relative_error(got, want), 0.0);
}

#[test]
fn autodiff_tensors_take_burns_product_and_keep_their_gradients() {
    let device = Device::flex().autodiff();
    // Training's case: the product is Burn's and differentiable.
    let w = Tensor::<2>::random([16, 8], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let x = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 1.0), &device);
    let y = linear_weights(x, w.clone(), None);
    let grads = y.sum().backward();
    let grad = w.grad(&grads).expect("a gradient for the weight");
    assert_eq!(grad.dims(), [16, 8]);
}

#[test]
fn f32_products_equal_burns_linear() {
    // `f32` weights take the direct `gemm` product on flex: the same values as Burn's `linear`
    // up to the order of the bias addition, for slices and transposed views of a weight, inputs
    // that are views, and products large enough to run on the thread pool.
    let device = Device::flex();
    let normal = Distribution::Normal(0.0, 1.0);
    let (k, n) = (70, 45);
    let full = Tensor::<2>::random([2 * k, n], normal, &device);
    let stored = Tensor::<2>::random([n, k], normal, &device);
    let b = Tensor::<1>::random([n], normal, &device);
    let x = Tensor::<3>::random([2, 33, k], normal, &device);
    for weight in [
        full.clone().narrow(0, k, k),
        full.narrow(0, 0, k),
        stored.transpose(),
    ] {
        for bias in [Some(b.clone()), None] {
            let got = linear_weights(x.clone(), weight.clone(), bias.clone());
            let want = burn::tensor::module::linear(x.clone(), weight.clone(), bias);
            assert_eq!(got.dims(), [2, 33, n]);
            let err = relative_error(got, want);
            assert!(err < 1e-6, "relative error {err:e}");
        }
    }
    let x = Tensor::<2>::random([k, 20], normal, &device).transpose();
    let w = Tensor::<2>::random([k, n], normal, &device);
    let got = linear_weights(x.clone(), w.clone(), Some(b.clone()));
    let want = burn::tensor::module::linear(x, w, Some(b));
    assert!(relative_error(got, want) < 1e-6);
    let (m, k, n) = (300, 256, 200);
    let x = Tensor::<2>::random([m, k], normal, &device);
    let w = Tensor::<2>::random([k, n], normal, &device);
    let b = Tensor::<1>::random([n], normal, &device);
    let got = linear_weights(x.clone(), w.clone(), Some(b.clone()));
    let want = burn::tensor::module::linear(x, w, Some(b));
    assert_eq!(got.dims(), [m, n]);
    assert!(relative_error(got, want) < 1e-6);
}
