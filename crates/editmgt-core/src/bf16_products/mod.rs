//! Linear layers with bf16 products and f32 sums on CPUs that have AMX-BF16 or AVX512-BF16.
//!
//! What `--dtype bf16` means on the CPU: activations stay in `f32`, every [`Linear`] layer's
//! weight is held in bf16 (half the memory), and [`linear`] rounds its input to bf16 and sums the
//! products in `f32` with the CPU's bf16 instructions ([`kernel`]: AMX tiles where the CPU and
//! the OS allow them, otherwise AVX512-BF16). On a CPU without either, [`hold_weights_in_bf16`]
//! leaves the weights in `f32` and everything runs in `f32` as before (the fallback), so asking
//! for bf16 never makes a CPU run slower.
//!
//! [`linear`] is the one entry point the models call for a linear layer: it runs the kernel when
//! the layer's weight is bf16 and its input an `f32` tensor on Burn's `flex` backend, and Burn's
//! own `linear` everywhere else (GPU backends, autodiff tensors, `f32` weights), with the weight
//! cast to the input's float type if they differ. One model code path; the kernel is an
//! implementation detail of one backend.
//!
//! `EDITMGT_BF16_PRODUCTS=0` in the environment turns the kernel off ([`isa`] returns `None`),
//! for side-by-side measurements.
//!
//! The same entry point also holds the `f32` linear layers' fast path on `flex` (one `gemm`
//! product written straight into an output that starts as the bias rows; see
//! [`linear_weights`]), so every linear layer of every model goes through this module whatever
//! its dtype.

#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
pub mod kernel;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor};

/// The instructions the bf16 products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Intel AMX tiles (`tdpbf16ps`): Sapphire Rapids and later Xeons.
    Amx,
    /// AVX-512 with the BF16 extension (`vdpbf16ps`): Cooper Lake, Sapphire Rapids, AMD Zen 4.
    Avx512Bf16,
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Amx => "AMX-BF16",
            Isa::Avx512Bf16 => "AVX512-BF16",
        })
    }
}

/// Name of the environment variable that turns the bf16 products off when set to `0`.
pub const BF16_PRODUCTS_ENV: &str = "EDITMGT_BF16_PRODUCTS";

/// The instruction set the bf16 products run on in this process, or `None` when the CPU has
/// neither AMX-BF16 nor AVX512-BF16, this crate was built without its `flex` feature, or
/// `$EDITMGT_BF16_PRODUCTS` is `0`.
pub fn isa() -> Option<Isa> {
    #[cfg(feature = "flex")]
    {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let enabled = *ENABLED
            .get_or_init(|| std::env::var(BF16_PRODUCTS_ENV).map_or(true, |v| v.trim() != "0"));
        if enabled {
            return Isa::best();
        }
        None
    }
    #[cfg(not(feature = "flex"))]
    {
        None
    }
}

/// `x W + b` for the layer `layer` and `x` `[.., d_in]`: [`linear_weights`] with the layer's
/// weight and bias.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    linear_weights(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// Name of the environment variable that turns [`linear_weights`]' direct `f32` product off when
/// set to `0` (Burn's `linear` then runs).
pub const DIRECT_LINEAR_ENV: &str = "EDITMGT_DIRECT_LINEAR";

/// Whether the direct `f32` product may run (`$EDITMGT_DIRECT_LINEAR` is not `0`), read once.
#[cfg(feature = "flex")]
fn direct_linear() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(DIRECT_LINEAR_ENV).map_or(true, |v| v.trim() != "0"))
}

/// `x weight + bias` for `x` `[.., k]`, `weight` `[k, n]` (any strides: a slice of a larger
/// weight is read in place) and `bias` `[n]`.
///
/// With a bf16 weight and an `f32` input on the `flex` backend (and [`isa`] not `None`) this is
/// the bf16 kernel. With both in `f32` on `flex` it is one `gemm` product written straight into
/// the output, which starts as the bias rows ([`DIRECT_LINEAR_ENV`] turns that off). Otherwise,
/// and for autodiff tensors, it is Burn's `linear`, the weight and bias cast to `x`'s float type
/// when they differ from it. The result has `x`'s float type.
pub fn linear_weights<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    if let Some(out) = kernel_product(&x, &weight, bias.as_ref()) {
        return out;
    }
    #[cfg(feature = "flex")]
    if direct_linear()
        && let Some(out) = flex::linear_f32(&x, &weight, bias.as_ref())
    {
        return out;
    }
    let dtype = x.dtype();
    let (weight, bias) = if weight.dtype() == dtype {
        (weight, bias)
    } else {
        (weight.cast(dtype), bias.map(|b| b.cast(dtype)))
    };
    burn::tensor::module::linear(x, weight, bias)
}

/// The bf16 kernel's `x weight + bias` when it takes these tensors: a bf16 `weight` and an `f32`
/// `x` on the `flex` backend, with [`isa`] not `None`; `None` otherwise (for callers that have
/// their own fallback, such as the text encoders' products in the weights' type).
pub fn kernel_product<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    #[cfg(feature = "flex")]
    if weight.dtype() == DType::BF16 && x.dtype() == DType::F32 {
        return flex::linear(x, weight, bias);
    }
    let _ = (x, weight, bias);
    None
}

/// `a b` for `a` `[m, k]` and `b` `[k, n]` (any strides) with both rounded to bf16 and the
/// sums in `f32`, on the bf16 kernel for `f32` `flex` tensors where [`isa`] is not `None`;
/// Burn's `matmul` everywhere else. For products whose operands are not a layer's weight (the
/// MGT head's logits, `--dtype bf16` on the CPU).
pub fn matmul_bf16(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "flex")]
    if a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && let Some(out) = flex::linear(&a, &b, None)
    {
        return out;
    }
    a.matmul(b)
}

/// `module` with the weight of every [`Linear`] layer in it cast to bf16 when [`isa`] says the
/// CPU can multiply in bf16, and unchanged otherwise (biases and every other parameter stay as
/// they are). Returns the module and whether it cast.
///
/// Meant for modules on the `flex` backend whose forward calls [`linear`]; on other backends
/// load the model in [`crate::FloatType::BF16`] instead.
pub fn hold_weights_in_bf16<M: Module>(module: M) -> (M, bool) {
    hold_weights_in_bf16_of(module, &["Linear"])
}

/// [`hold_weights_in_bf16`] for the `weight` parameter of every module whose type is named in
/// `types` (e.g. `["Linear", "PointwiseConv"]`): for models whose own product layers call
/// [`linear_weights`] with their weight.
pub fn hold_weights_in_bf16_of<M: Module>(module: M, types: &[&str]) -> (M, bool) {
    if isa().is_none() {
        return (module, false);
    }
    let mut mapper = LinearWeights {
        path: Vec::new(),
        containers: types.iter().map(|t| format!("Struct:{t}")).collect(),
    };
    (module.map(&mut mapper), true)
}

/// Casts the `weight` parameter of every module of the chosen types to bf16.
struct LinearWeights {
    /// `(field, container type)` of every module entered and not yet left.
    path: Vec<(String, String)>,
    /// `Struct:<type>` of the chosen types.
    containers: Vec<String>,
}

impl ModuleMapper for LinearWeights {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.path.last() {
            Some((name, container)) if name == "weight" && self.containers.contains(container) => {
                param.map(|t| t.cast(DType::BF16))
            }
            _ => param,
        }
    }
}
