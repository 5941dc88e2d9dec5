//! What the CPU kernels' unit tests share: deterministic inputs and the error against an `f64`
//! definition.

/// `n` values in `[-1, 1)` from a multiplicative hash of the index and `seed`.
pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97));
            ((x >> 8) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// The largest `|got - want|`.
pub(crate) fn worst_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}
