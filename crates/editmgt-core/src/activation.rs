//! Element-wise activations, in one pass on the CPU.
//!
//! [`gelu_tanh`] is the MLP activation of the MGT blocks and of Gemma-2. As Burn operations it
//! is six element-wise passes, each allocating a tensor as large as the MLP's hidden state (in
//! the MGT at the released width, `[2, 8448, 6144]`: 415 MB in `f32`). On Burn's `flex` CPU
//! backend (this crate's `flex` feature) a plain `f32` tensor instead goes through one
//! vectorised pass, in place when the tensor owns its data. Every other tensor (wgpu, CUDA,
//! autodiff, half precision) gets the Burn operations. `EDITMGT_FUSED_ACTIVATION=0` turns the
//! kernel off.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

/// Name of the environment variable that turns the one-pass kernel off when set to `0`.
pub const FUSED_ACTIVATION_ENV: &str = "EDITMGT_FUSED_ACTIVATION";

/// `2 sqrt(2 / pi)`.
const A: f64 = 2.0 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2;
/// `2 sqrt(2 / pi) * 0.044715`.
const B: f64 = A * 0.044715;

/// Whether the kernel may run (`$EDITMGT_FUSED_ACTIVATION` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(FUSED_ACTIVATION_ENV).map_or(true, |v| v.trim() != "0"))
}

/// The tanh approximation of GELU (PyTorch's `gelu(approximate="tanh")`),
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, computed as the same function
/// `x * sigmoid(2 sqrt(2/pi) x (1 + 0.044715 x^2))` (`(1 + tanh z) / 2 = sigmoid(2z)`).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if enabled() && flex::takes(&x) {
        return flex::gelu_tanh(x);
    }
    let z = (x.clone() * x.clone() * B + A) * x.clone();
    sigmoid(z) * x
}

/// `gelu_tanh` of one value, with the vectorisable `exp`.
#[cfg(feature = "flex")]
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    let z = (x * x * B as f32 + A as f32) * x;
    x / (1.0 + crate::vector_math::exp(-z))
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::tensor::{DType, Tensor};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    use super::gelu_one;

    /// Values one task maps.
    const TASK: usize = 1 << 16;

    widest! {
        /// [`gelu_one`] of every value of `dst`, in place.
        fn dispatch(dst: &mut [f32]) {
            for v in dst.iter_mut() {
                *v = gelu_one(*v);
            }
        }
    }

    /// `values` mapped in place, spread over the rayon pool.
    pub(super) fn gelu_in_place(values: &mut [f32]) {
        values.par_chunks_mut(TASK).for_each(dispatch);
    }

    /// Whether `x` is a plain `f32` flex tensor (what [`gelu_tanh`] takes).
    pub(super) fn takes<const D: usize>(x: &Tensor<D>) -> bool {
        x.dtype() == DType::F32 && x.clone().try_into_primitive::<Flex>().is_ok()
    }

    /// The kernel's GELU of a plain `f32` flex tensor (see [`takes`]).
    pub(super) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        let t: FlexTensor = x
            .try_into_primitive::<Flex>()
            .expect("`takes` checked that this is a flex tensor");
        let out = crate::flex_values::update_f32(t, gelu_in_place);
        Tensor::from_primitive::<Flex>(out)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::kernel_tests::values;

    #[test]
    fn one_value_matches_the_tanh_definition() {
        let mut worst = 0.0f64;
        for (i, &v) in values(20_000, 3).iter().enumerate() {
            let x = f64::from(v) * 12.0 + if i % 2 == 0 { 0.0 } else { 0.3 };
            let want = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
            let got = f64::from(gelu_one(x as f32));
            worst = worst.max((got - want).abs() / want.abs().max(1e-2));
        }
        assert!(worst < 2e-6, "worst error {worst:e}");
        assert_eq!(gelu_one(0.0), 0.0);
        assert_eq!(gelu_one(100.0), 100.0);
        assert!(gelu_one(-100.0).abs() < 1e-30);
    }
}
