//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};

use super::kernel::{self, Weight};
use crate::flex_values::{RowMajor, forward_strides, tensor};

/// The kernel's `x w + b` when `x` is a plain `f32` flex tensor and `weight` a plain bf16 or
/// `f32` flex tensor (rounded to bf16 as it is packed), and [`super::isa`] is not `None`; `None`
/// otherwise, and the caller runs Burn's op.
pub(super) fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let isa = super::isa()?;
    let dims = x.dims();
    let [k, n] = weight.dims();
    if dims[D - 1] != k {
        return None;
    }
    let m = dims[..D - 1].iter().product::<usize>();
    let x = x.clone().try_into_primitive::<Flex>().ok()?;
    let w = weight.clone().try_into_primitive::<Flex>().ok()?;
    if x.dtype() != DType::F32 || !matches!(w.dtype(), DType::BF16 | DType::F32) {
        return None;
    }
    let xs = RowMajor::of_flex(x)?;
    let x_values = xs.values();
    let (w, strides) = forward_strides(w);
    let strides: [usize; 2] = strides.try_into().ok()?;
    let (offset, shape) = (w.layout().start_offset(), [k, n]);
    let bias: Option<Vec<f32>> = bias.map(|b| {
        b.clone()
            .cast(DType::F32)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    });
    let bias = bias.as_deref();
    let out = if w.dtype() == DType::BF16 {
        let weight = Weight {
            data: w.storage::<half::bf16>(),
            offset,
            shape,
            strides,
        };
        kernel::linear(isa, x_values, m, weight, bias)
    } else {
        let weight = Weight {
            data: w.storage::<f32>(),
            offset,
            shape,
            strides,
        };
        kernel::linear(isa, x_values, m, weight, bias)
    }
    .ok()?;
    let mut shape = dims;
    shape[D - 1] = n;
    Some(tensor(out, shape))
}
