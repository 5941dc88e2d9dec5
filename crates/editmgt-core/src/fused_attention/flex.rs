//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use super::kernel::{self, StridedView};

/// The kernel's attention when every input is a plain (not autodiff) `flex` tensor of a float
/// type; `None` otherwise, and the caller runs Burn's op.
pub(super) fn attention(
    query: &Tensor<4>,
    key: &Tensor<4>,
    value: &Tensor<4>,
    bias: Option<&Tensor<4>>,
    scale: f32,
    bf16: Option<crate::bf16_products::Isa>,
) -> Option<Tensor<4>> {
    let dtype = query.dtype();
    if !is_flex_float(query) {
        return None;
    }
    let q = flex_f32(query)?;
    let k = flex_f32(key)?;
    let v = flex_f32(value)?;
    let bias = match bias {
        Some(bias) => Some(flex_f32(bias)?),
        None => None,
    };
    let (q, k, v) = (held(&q)?, held(&k)?, held(&v)?);
    let bias = match &bias {
        Some(b) => Some(held(b)?),
        None => None,
    };
    let [batch, heads, rows, _] = q.1;
    let value_dim = v.1[3];
    let bias = match &bias {
        Some(b) => Some(view(b)?),
        None => None,
    };
    let out = match bf16 {
        None => kernel::attention(view(&q)?, view(&k)?, view(&v)?, bias, scale),
        Some(isa) => kernel::attention_bf16(isa, view(&q)?, view(&k)?, view(&v)?, bias, scale),
    }
    .ok()?;
    // The kernel writes `[B, Sq, H, dv]`; the swap is a view, and merging heads afterwards is a
    // reshape without a copy.
    let out = FlexTensor::from_data(TensorData::new(out, [batch, rows, heads, value_dim]));
    let out = Tensor::<4>::from_primitive::<Flex>(out).swap_dims(1, 2);
    Some(if dtype == DType::F32 {
        out
    } else {
        out.cast(dtype)
    })
}

/// Whether `x` is a plain flex tensor of a float type the kernel takes.
pub(super) fn is_flex_float(x: &Tensor<4>) -> bool {
    matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
        && x.clone().try_into_primitive::<Flex>().is_ok()
}

/// The flex primitive of `x` in f32, or `None` when `x` is not a plain flex tensor.
fn flex_f32(x: &Tensor<4>) -> Option<FlexTensor> {
    let t = x.clone().try_into_primitive::<Flex>().ok()?;
    if t.dtype() == DType::F32 {
        return Some(t);
    }
    x.clone().cast(DType::F32).try_into_primitive::<Flex>().ok()
}

/// A flex tensor with non-negative strides (copied when they are not), its shape and strides.
type Held = (FlexTensor, [usize; 4], [usize; 4]);

fn held(t: &FlexTensor) -> Option<Held> {
    let shape: [usize; 4] = t.layout().shape().to_vec().try_into().ok()?;
    let (t, strides) = crate::flex_values::forward_strides(t.clone());
    Some((t, shape, strides.try_into().ok()?))
}

fn view(held: &Held) -> Option<StridedView<'_>> {
    let (t, shape, strides) = held;
    StridedView::new(
        t.storage::<f32>(),
        t.layout().start_offset(),
        *shape,
        *strides,
    )
}
