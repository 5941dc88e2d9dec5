//! Rescaling scores to `[0, 1]`.

use burn::tensor::Tensor;

/// The epsilon the reference adds to the range: `(s - min) / (max - min + 1e-8)`.
pub const RESCALE_EPSILON: f32 = 1e-8;

/// Rescales every row of `scores` `[B, N]` to `[0, 1]` on its own:
/// `(s - min) / (max - min + 1e-8)`, in `f32` operation by operation as the reference computes
/// it, so a constant row becomes all zeros (not NaN).
pub fn rescale_rows(scores: Tensor<2>) -> Tensor<2> {
    let min = scores.clone().min_dim(1);
    let max = scores.clone().max_dim(1);
    let denominator = (max - min.clone()) + RESCALE_EPSILON;
    (scores - min) / denominator
}
