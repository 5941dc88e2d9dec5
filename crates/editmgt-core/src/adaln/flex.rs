//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use super::kernel;

/// `x`'s values in row-major order when it is a plain `f32` flex tensor: the tensor (made
/// contiguous when it was not) and the index of its first value.
fn plain<const D: usize>(x: &Tensor<D>) -> Option<(FlexTensor, usize)> {
    if x.dtype() != DType::F32 {
        return None;
    }
    let t = x.clone().try_into_primitive::<Flex>().ok()?;
    let t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    let start = t.layout().start_offset();
    Some((t, start))
}

fn values(t: &(FlexTensor, usize), len: usize) -> &[f32] {
    &t.0.storage::<f32>()[t.1..t.1 + len]
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// The groups of `x` `[B, R, D]` for modulation `[B, G, D]`: rows per group, when they fit.
fn group_rows(x: [usize; 3], modulation: [usize; 3]) -> Option<usize> {
    let [b, r, d] = x;
    let [mb, g, md] = modulation;
    (mb == b && md == d && g > 0 && r % g == 0 && d > 0).then_some(r / g)
}

pub(super) fn layer_norm_modulate(
    x: &Tensor<3>,
    shift: &Tensor<3>,
    scale: &Tensor<3>,
    eps: f64,
) -> Option<Tensor<3>> {
    let dims = x.dims();
    let rows = group_rows(dims, shift.dims())?;
    if scale.dims() != shift.dims() {
        return None;
    }
    let n = dims.iter().product::<usize>();
    let m = shift.dims().iter().product::<usize>();
    let (xs, shift, scale) = (plain(x)?, plain(shift)?, plain(scale)?);
    let out = kernel::layer_norm_modulate(
        values(&xs, n),
        dims[2],
        rows,
        values(&shift, m),
        values(&scale, m),
        eps as f32,
    );
    Some(tensor(out, dims))
}

/// The kernel's `x + y * gate`, in `x`'s buffer when `x` owns it; `x` back when the kernel does
/// not take these tensors (boxed: a tensor is large).
pub(super) fn gated_residual(
    x: Tensor<3>,
    y: &Tensor<3>,
    gate: &Tensor<3>,
) -> Result<Tensor<3>, Box<Tensor<3>>> {
    let dims = x.dims();
    let Some(rows) = group_rows(dims, gate.dims()) else {
        return Err(Box::new(x));
    };
    if y.dims() != dims || x.dtype() != DType::F32 {
        return Err(Box::new(x));
    }
    let (Some(ys), Some(gs)) = (plain(y), plain(gate)) else {
        return Err(Box::new(x));
    };
    let Ok(t) = x.clone().try_into_primitive::<Flex>() else {
        return Err(Box::new(x));
    };
    drop(x);
    let n = dims.iter().product::<usize>();
    let m = gate.dims().iter().product::<usize>();
    let mut t = if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    };
    let out = match t.try_storage_mut::<f32>() {
        // `x` owns its data: add where it is.
        Some(xs) if xs.len() >= n => {
            kernel::gated_residual(&mut xs[..n], values(&ys, n), dims[2], rows, values(&gs, m));
            t
        }
        _ => {
            let start = t.layout().start_offset();
            let mut xs = t.storage::<f32>()[start..start + n].to_vec();
            kernel::gated_residual(&mut xs, values(&ys, n), dims[2], rows, values(&gs, m));
            FlexTensor::from_data(TensorData::new(xs, dims))
        }
    };
    Ok(Tensor::from_primitive::<Flex>(out))
}

pub(super) fn rms_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let dims = x.dims();
    let d = dims[D - 1];
    if gamma.dims() != [d] || d == 0 {
        return None;
    }
    let n = dims.iter().product::<usize>();
    let (xs, gamma) = (plain(x)?, plain(gamma)?);
    let out = kernel::rms_norm(values(&xs, n), d, values(&gamma, d), eps as f32);
    Some(tensor(out, dims))
}
