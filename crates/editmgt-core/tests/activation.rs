//! The one-pass GELU against the tanh definition through the public entry point: plain `f32`
//! flex tensors (owned, shared with another handle, strided views) give the definition's values
//! and never change another handle's data; autodiff tensors keep their graph.

use burn::tensor::{Device, Distribution, Tensor};
use editmgt_core::activation::gelu_tanh;

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` by Burn's operations.
fn definition<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone() * x.clone() * x.clone() * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

fn max_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn matches_the_definition_and_leaves_shared_data_alone() {
    let device = Device::flex();
    let x = Tensor::<3>::random([3, 37, 129], Distribution::Normal(0.0, 4.0), &device);
    let before = x.clone().into_data();
    let want = definition(x.clone());
    // Shared with `x`: computed into a new buffer.
    let got = gelu_tanh(x.clone());
    assert!(max_error(got, want.clone()) < 1e-5);
    assert_eq!(
        x.clone().into_data(),
        before,
        "the input's other handle changed"
    );
    // Owned: in place.
    let owned = x.clone() * 1.0;
    assert!(max_error(gelu_tanh(owned), want.clone()) < 1e-5);
    // A strided view.
    let view = x.clone().swap_dims(1, 2);
    let err = max_error(gelu_tanh(view), want.swap_dims(1, 2));
    assert!(err < 1e-5, "{err:e}");
}

#[test]
fn autodiff_tensors_keep_their_graph() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 2.0), &device).require_grad();
    let y = gelu_tanh(x.clone());
    let err = max_error(y.clone(), definition(x.clone()));
    assert!(err < 1e-5, "{err:e}");
    let grads = y.sum().backward();
    assert!(x.grad(&grads).is_some());
}
