//! Rescaling scores to `[0, 1]`.

use ndarray::{Array2, ArrayView2};

/// The epsilon the reference adds to the range: `(s - min) / (max - min + 1e-8)`.
pub const RESCALE_EPSILON: f32 = 1e-8;

/// Rescales one grid (or any set of scores) to `[0, 1]`: `(s - min) / (max - min + 1e-8)`.
///
/// Computed in `f32` operation by operation as the reference does, so a constant map becomes all
/// zeros (not NaN). Empty input gives empty output. See [`ScoreMap::rescale`](crate::ScoreMap::rescale)
/// for a batch (each batch item is rescaled on its own).
pub fn rescale(scores: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut out = scores.as_standard_layout().into_owned();
    if let Some(slice) = out.as_slice_mut() {
        rescale_in_place(slice);
    }
    out
}

/// [`rescale`] on a plain slice, in place.
pub fn rescale_in_place(scores: &mut [f32]) {
    let Some((min, max)) = min_max(scores) else {
        return;
    };
    let denominator = (max - min) + RESCALE_EPSILON;
    for v in scores.iter_mut() {
        *v = (*v - min) / denominator;
    }
}

/// The minimum and maximum of a slice (NaN values are skipped), `None` when empty.
pub(crate) fn min_max(values: &[f32]) -> Option<(f32, f32)> {
    let mut iter = values.iter().copied().filter(|v| !v.is_nan());
    let first = iter.next()?;
    Some(iter.fold((first, first), |(lo, hi), v| (lo.min(v), hi.max(v))))
}
