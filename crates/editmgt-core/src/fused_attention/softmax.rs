//! The row softmax of the fused attention: bias add, maximum, a vectorised `exp` and the sum, in
//! two passes over a row of scores.
//!
//! The body is plain Rust written in fixed-width lanes so that the compiler vectorises it; it is
//! compiled three times (baseline x86-64, AVX2+FMA, AVX-512F) and the widest one the running CPU
//! supports is chosen at run time.

/// Lanes of the accumulators: two AVX2 registers or one AVX-512 register of `f32`.
const LANES: usize = 16;

use crate::vector_math::exp;

widest! {
    /// Softmax numerators of one row in place: `row[j] = exp(row[j] + bias[j] - max)` where `max`
    /// is the row's maximum after the bias; returns the sum of the numerators (at least 1 unless
    /// the row is empty or holds a NaN).
    ///
    /// `bias`, when given, is at least as long as `row`.
    pub(crate) fn exp_row(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
        let mut max = [f32::NEG_INFINITY; LANES];
        match bias {
            Some(bias) => {
                let bias = &bias[..row.len()];
                let mut rows = row.chunks_exact_mut(LANES);
                let mut biases = bias.chunks_exact(LANES);
                for (r, b) in (&mut rows).zip(&mut biases) {
                    for j in 0..LANES {
                        let v = r[j] + b[j];
                        r[j] = v;
                        max[j] = if v > max[j] { v } else { max[j] };
                    }
                }
                for (r, b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
                    *r += b;
                    max[0] = if *r > max[0] { *r } else { max[0] };
                }
            }
            None => {
                let mut rows = row.chunks_exact(LANES);
                for r in &mut rows {
                    for j in 0..LANES {
                        max[j] = if r[j] > max[j] { r[j] } else { max[j] };
                    }
                }
                for &r in rows.remainder() {
                    max[0] = if r > max[0] { r } else { max[0] };
                }
            }
        }
        let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        // A row of -inf only (every key masked): every numerator is exp(-inf - -inf); keep it 0.
        let max = if max == f32::NEG_INFINITY { 0.0 } else { max };
        let mut sum = [0.0f32; LANES];
        let mut rows = row.chunks_exact_mut(LANES);
        for r in &mut rows {
            for j in 0..LANES {
                let e = exp(r[j] - max);
                r[j] = e;
                sum[j] += e;
            }
        }
        let mut tail = 0.0;
        for r in rows.into_remainder() {
            *r = exp(*r - max);
            tail += *r;
        }
        sum.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_becomes_its_softmax_numerators() {
        for len in [1usize, 7, 16, 33, 100] {
            let row: Vec<f32> = (0..len)
                .map(|j| ((j * 37 % 11) as f32) * 0.7 - 3.0)
                .collect();
            let bias: Vec<f32> = (0..len).map(|j| (j % 3) as f32 * -0.25).collect();
            for with_bias in [false, true] {
                let mut got = row.clone();
                let sum = exp_row(&mut got, with_bias.then_some(&bias[..]));
                let biased: Vec<f64> = row
                    .iter()
                    .zip(&bias)
                    .map(|(&r, &b)| r as f64 + if with_bias { b as f64 } else { 0.0 })
                    .collect();
                let max = biased.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let want: Vec<f64> = biased.iter().map(|v| (v - max).exp()).collect();
                let want_sum: f64 = want.iter().sum();
                assert!((sum as f64 - want_sum).abs() < 1e-5 * want_sum, "len {len}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-6, "len {len}: {g} vs {w}");
                }
            }
        }
    }
}
