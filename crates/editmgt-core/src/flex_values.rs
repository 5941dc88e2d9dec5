//! The `f32` values of Burn tensors on the `flex` backend: how every CPU kernel's bridge
//! ([`crate::adaln`], [`crate::group_norm`], [`crate::direct_conv`], [`crate::bf16_products`],
//! [`crate::activation`]) reads a tensor's values, and hands its results back as tensors.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

/// A flex tensor's `f32` values in row-major order; the tensor is copied into a contiguous
/// layout when it was not in one.
pub(crate) struct RowMajor(FlexTensor);

impl RowMajor {
    /// The values of `x` when it is an `f32` tensor on `flex`; `None` for any other tensor.
    pub(crate) fn of<const D: usize>(x: &Tensor<D>) -> Option<Self> {
        Self::of_flex(x.clone().try_into_primitive::<Flex>().ok()?)
    }

    /// The values of `t` when it holds `f32`; `None` for any other element type.
    pub(crate) fn of_flex(t: FlexTensor) -> Option<Self> {
        if t.dtype() != DType::F32 {
            return None;
        }
        Some(Self(if t.is_contiguous() {
            t
        } else {
            t.to_contiguous()
        }))
    }

    /// The values, in row-major order.
    pub(crate) fn values(&self) -> &[f32] {
        let layout = self.0.layout();
        let start = layout.start_offset();
        &self.0.storage::<f32>()[start..start + layout.num_elements()]
    }
}

/// A tensor on `flex` that holds `values` in `shape`.
pub(crate) fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// `t` (which holds `f32`) after `update` has changed its values, given in row-major order: in
/// `t`'s own buffer when `t` owns it and lays it out plainly, else in a copy.
pub(crate) fn update_f32(t: FlexTensor, update: impl FnOnce(&mut [f32])) -> FlexTensor {
    let n = t.layout().num_elements();
    let mut t = if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    };
    if let Some(values) = t.try_storage_mut::<f32>()
        && values.len() >= n
    {
        update(&mut values[..n]);
        return t;
    }
    let start = t.layout().start_offset();
    let mut values = t.storage::<f32>()[start..start + n].to_vec();
    update(&mut values);
    FlexTensor::from_data(TensorData::new(values, t.layout().shape().clone()))
}

/// `t` and its strides when none is negative, for kernels that read a strided view in place;
/// else `t` copied into a contiguous layout, and that layout's strides.
pub(crate) fn forward_strides(t: FlexTensor) -> (FlexTensor, Vec<usize>) {
    let strides: Option<Vec<usize>> = t
        .layout()
        .strides()
        .iter()
        .map(|&s| usize::try_from(s).ok())
        .collect();
    match strides {
        Some(strides) => (t, strides),
        None => {
            let t = t.to_contiguous();
            let strides = t
                .layout()
                .strides()
                .iter()
                .map(|s| s.unsigned_abs())
                .collect();
            (t, strides)
        }
    }
}
