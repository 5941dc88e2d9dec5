//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use super::kernel::{self, ConvShape};

/// Whether the kernel takes `input` with `options`.
pub(super) fn takes(input: &Tensor<4>, options: &ConvOptions<2>) -> bool {
    options.stride == [1, 1]
        && options.dilation == [1, 1]
        && options.groups == 1
        && input.dtype() == DType::F32
        && input.clone().try_into_primitive::<Flex>().is_ok()
}

/// The kernel's convolution when the input, weight and bias are plain `f32` flex tensors and the
/// options are stride 1, dilation 1, one group; `None` otherwise.
pub(super) fn conv2d(
    input: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
) -> Option<Tensor<4>> {
    if !takes(input, options) {
        return None;
    }
    let x = contiguous_f32(input.clone().try_into_primitive::<Flex>().ok()?)?;
    let w = contiguous_f32(weight.clone().try_into_primitive::<Flex>().ok()?)?;
    let b = match bias {
        Some(b) => Some(contiguous_f32(
            b.clone().try_into_primitive::<Flex>().ok()?,
        )?),
        None => None,
    };
    let [batch, in_channels, h, width] = input.dims();
    let [out_channels, weight_in, kh, kw] = weight.dims();
    if weight_in != in_channels {
        return None;
    }
    let [(top, bottom), (left, right)] = options.padding;
    let shape = ConvShape {
        batch,
        in_channels,
        size: [h, width],
        out_channels,
        kernel: [kh, kw],
        padding: [[top, bottom], [left, right]],
    };
    let [ho, wo] = shape.output()?;
    let out = kernel::conv2d(data(&x), data(&w), b.as_ref().map(data), shape).ok()?;
    let out = FlexTensor::from_data(TensorData::new(out, [batch, out_channels, ho, wo]));
    Some(Tensor::<4>::from_primitive::<Flex>(out))
}

/// `t` with a contiguous layout (copied when it is not), if it holds `f32`.
fn contiguous_f32(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    t.is_contiguous().then_some(t)
}

/// The elements of a contiguous tensor, in order.
fn data(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}
