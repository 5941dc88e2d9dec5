//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;

use super::InputNorm;
use super::kernel::{self, ConvShape, Input, InputMap, Upsample};
use crate::flex_values::{RowMajor, forward_strides, tensor};

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
    run(input, weight, bias, options, None, None)
}

/// [`conv2d`] of upsampled rows `[first_row, first_row + rows)` of `input` (nearest, x2), the
/// upsampling done by the kernel as it copies the input; `None` when the kernel does not take
/// the tensors.
pub(super) fn conv2d_upsampled(
    input: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
    first_row: usize,
    rows: usize,
) -> Option<Tensor<4>> {
    let [_, _, h, w] = input.dims();
    if first_row + rows > 2 * h {
        return None;
    }
    let upsample = (Upsample { first_row }, [rows, 2 * w]);
    run(input, weight, bias, options, None, Some(upsample))
}

/// [`conv2d`] of `norm.apply(input)`, the normalisation applied by the kernel as it copies the
/// input; `None` when the kernel does not take the tensors.
pub(super) fn conv2d_normalized(
    input: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
    norm: &InputNorm,
) -> Option<Tensor<4>> {
    let [batch, channels, _, _] = input.dims();
    let per_image = |t: &Tensor<4>| -> Option<Vec<f32>> {
        let [b, c, h, w] = t.dims();
        if (b != 1 && b != batch) || c != channels || h != 1 || w != 1 {
            return None;
        }
        let t = t.clone().cast(DType::F32).expand([batch, channels, 1, 1]);
        t.into_data().try_to_vec::<f32>().ok()
    };
    let mean = per_image(&norm.mean)?;
    let scale = per_image(&norm.scale)?;
    let shift = per_image(&norm.shift)?;
    let map = InputMap {
        mean: &mean,
        scale: &scale,
        shift: &shift,
        silu: norm.silu,
    };
    run(input, weight, bias, options, Some(map), None)
}

fn run(
    input: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
    map: Option<InputMap<'_>>,
    upsample: Option<(Upsample, [usize; 2])>,
) -> Option<Tensor<4>> {
    if !takes(input, options) {
        return None;
    }
    let (x, strides) = rows_contiguous(input.clone().try_into_primitive::<Flex>().ok()?)?;
    let w = RowMajor::of(weight)?;
    let b = match bias {
        Some(b) => Some(RowMajor::of(b)?),
        None => None,
    };
    let [batch, in_channels, h, width] = input.dims();
    let [h, width] = upsample.map_or([h, width], |(_, size)| size);
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
    let start = x.layout().start_offset();
    let input = Input {
        data: &x.storage::<f32>()[start..],
        strides,
        map,
        upsample: upsample.map(|(up, _)| up),
    };
    let out =
        kernel::conv2d_input(input, w.values(), b.as_ref().map(RowMajor::values), shape).ok()?;
    Some(tensor(out, [batch, out_channels, ho, wo]))
}

/// `t` (an `f32` tensor) with contiguous rows and its image, channel and row strides; copied
/// when its layout is not such.
fn rows_contiguous(t: FlexTensor) -> Option<(FlexTensor, [usize; 3])> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (t, s) = forward_strides(t);
    let &[images, channels, rows, columns] = &s[..] else {
        return None;
    };
    let [_, c, h, w]: [usize; 4] = t.layout().shape().to_vec().try_into().ok()?;
    if columns == 1 || w <= 1 {
        return Some((t, [images, channels, rows]));
    }
    Some((t.to_contiguous(), [c * h * w, h * w, w]))
}
