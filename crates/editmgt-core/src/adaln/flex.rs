//! The bridge from Burn tensors on the `flex` backend to [`super::kernel`].

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};

use super::kernel;
use crate::flex_values::{RowMajor, tensor, update_f32};

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
    let of = RowMajor::of::<3>;
    let (xs, shift, scale) = (of(x)?, of(shift)?, of(scale)?);
    let out = kernel::layer_norm_modulate(
        xs.values(),
        dims[2],
        rows,
        shift.values(),
        scale.values(),
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
    let (Some(ys), Some(gs)) = (RowMajor::of(y), RowMajor::of(gate)) else {
        return Err(Box::new(x));
    };
    let Ok(t) = x.clone().try_into_primitive::<Flex>() else {
        return Err(Box::new(x));
    };
    drop(x);
    let out = update_f32(t, |xs| {
        kernel::gated_residual(xs, ys.values(), dims[2], rows, gs.values())
    });
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
    let (xs, gamma) = (RowMajor::of(x)?, RowMajor::of(gamma)?);
    let out = kernel::rms_norm(xs.values(), d, gamma.values(), eps as f32);
    Some(tensor(out, dims))
}
