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

/// Products this large (`m n k`) spread over the rayon pool; smaller ones run on the calling
/// thread (burn-flex's threshold).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// `x weight + bias` for `f32` `x` and `weight` on `flex` (not autodiff): one `gemm` product
/// written straight into the output's buffer, which starts as the bias rows (or zeros). Burn's
/// `linear` writes each output twice before its product starts (burn-flex allocates the output
/// and copies it into an aligned buffer) and adds the bias in a second pass. `None` for any
/// other tensors, and the caller runs Burn's op.
pub(super) fn linear_f32<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let [k, n] = weight.dims();
    if dims[D - 1] != k || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    let m = dims[..D - 1].iter().product::<usize>();
    let xs = RowMajor::of(x)?;
    let (w, strides) = forward_strides(weight.clone().try_into_primitive::<Flex>().ok()?);
    let [row_stride, column_stride]: [usize; 2] = strides.try_into().ok()?;
    let bias = match bias {
        Some(b) if b.dims() == [n] => Some(RowMajor::of(&b.clone().cast(DType::F32))?),
        Some(_) => return None,
        None => None,
    };
    let mut out = match &bias {
        Some(b) => b.values().repeat(m),
        None => vec![0.0f32; m * n],
    };
    if m > 0 && n > 0 && k > 0 {
        let data = w.storage::<f32>();
        let offset = w.layout().start_offset();
        let last = offset + (k - 1) * row_stride + (n - 1) * column_stride;
        if last >= data.len() {
            return None;
        }
        let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: `out` holds `m x n` values with row stride `n`; `x` holds `m x k` values in
        // row-major order (`RowMajor`); every weight element `offset + i * row_stride + j *
        // column_stride` for `i < k`, `j < n` is at most `last`, inside `data` (checked above).
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                xs.values().as_ptr(),
                1,
                k as isize,
                data.as_ptr().add(offset),
                column_stride as isize,
                row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    let mut shape = dims;
    shape[D - 1] = n;
    Some(tensor(out, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn only_f32_flex_tensors_take_the_direct_product() {
        let device = Device::flex();
        let x = Tensor::<2>::random([5, 7], Distribution::Default, &device);
        let w = Tensor::<2>::random([7, 3], Distribution::Default, &device);
        let b = Tensor::<1>::random([3], Distribution::Default, &device);
        let out = linear_f32(&x, &w, Some(&b)).expect("f32 on flex");
        assert_eq!(out.dims(), [5, 3]);
        assert!(linear_f32(&x, &w.clone().cast(DType::BF16), None).is_none());
        assert!(linear_f32(&x, &w.clone().narrow(1, 0, 2), Some(&b)).is_none());
        assert!(linear_f32(&x.clone().narrow(1, 0, 6), &w, None).is_none());
        let autodiff = Device::flex().autodiff();
        let x = Tensor::<2>::random([5, 7], Distribution::Default, &autodiff);
        let w = Tensor::<2>::random([7, 3], Distribution::Default, &autodiff);
        assert!(linear_f32(&x, &w, None).is_none());
    }
}
