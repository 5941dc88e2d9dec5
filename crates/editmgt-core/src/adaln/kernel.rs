//! One pass over rows of `f32` for the block's element-wise steps, each row's work vectorised
//! (compiled for AVX-512F, AVX2+FMA and baseline x86-64, chosen at run time) and rows spread
//! over the rayon pool. Knows nothing of EditMGT or of Burn: slices in, slices out.
//!
//! Rows are `d` values each, in groups of `group_rows` consecutive rows that share one row of
//! modulation (`shift`, `scale` or `gate`, `[groups, d]`).

#![allow(unsafe_code)]

use rayon::prelude::*;

/// Values one rayon task covers (whole rows, at least one).
const TASK_VALUES: usize = 1 << 15;
/// Lanes of the partial sums (one AVX-512 register).
const LANES: usize = 16;

/// `sum(x)` with [`LANES`] partial sums, so that the loop vectorises.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// `sum((x - mean)^2)`, vectorised as [`sum`].
#[inline(always)]
fn sum_squares(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            let v = c[j] - mean;
            acc[j] += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

widest! {
    /// `out = layer_norm(x) * scale_plus_one + shift` for the rows of `x`; row 0 is row
    /// `first_row` of its groups.
    fn layer_norm_modulate_task(
        x: &[f32],
        out: &mut [f32],
        first_row: usize,
        d: usize,
        group_rows: usize,
        shift: &[f32],
        scale_plus_one: &[f32],
        eps: f32,
    ) {
        for (i, (x, out)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let g = (first_row + i) / group_rows;
            let shift = &shift[g * d..(g + 1) * d];
            let scale = &scale_plus_one[g * d..(g + 1) * d];
            let mean = sum(x) / d as f32;
            let rstd = 1.0 / (sum_squares(x, mean) / d as f32 + eps).sqrt();
            for j in 0..d {
                out[j] = (x[j] - mean) * rstd * scale[j] + shift[j];
            }
        }
    }
}

widest! {
    /// `out = x * rsqrt(mean(x^2) + eps) * gamma` for the rows of `x`.
    fn rms_norm_task(x: &[f32], out: &mut [f32], d: usize, gamma: &[f32], eps: f32) {
        for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let inv = 1.0 / (sum_squares(x, 0.0) / d as f32 + eps).sqrt();
            for j in 0..d {
                out[j] = (x[j] * inv) * gamma[j];
            }
        }
    }
}

widest! {
    /// `x += y * gate` for the rows of `x`; row 0 is row `first_row` of its groups.
    fn gated_residual_task(
        x: &mut [f32],
        y: &[f32],
        first_row: usize,
        d: usize,
        group_rows: usize,
        gate: &[f32],
    ) {
        for (i, (x, y)) in x.chunks_exact_mut(d).zip(y.chunks_exact(d)).enumerate() {
            let g = (first_row + i) / group_rows;
            let gate = &gate[g * d..(g + 1) * d];
            for j in 0..d {
                x[j] += y[j] * gate[j];
            }
        }
    }
}

/// Rows per rayon task for rows of `d` values.
fn task_rows(d: usize) -> usize {
    (TASK_VALUES / d.max(1)).max(1)
}

/// Checks that `x` holds whole rows in whole groups and `modulation` one row per group.
fn check_groups(len: usize, d: usize, group_rows: usize, modulation: &[f32]) {
    assert!(d > 0 && group_rows > 0, "empty rows or groups");
    assert_eq!(len % (d * group_rows), 0, "rows are not whole groups");
    assert_eq!(
        modulation.len(),
        len / group_rows,
        "one modulation row per group"
    );
}

/// `out = layer_norm(x) * (1 + scale) + shift` per row of `d` (LayerNorm without affine
/// parameters, biased variance, `eps` inside the square root); rows in groups of `group_rows`
/// that share a row of `shift` and `scale` (`[groups, d]`).
pub fn layer_norm_modulate(
    x: &[f32],
    d: usize,
    group_rows: usize,
    shift: &[f32],
    scale: &[f32],
    eps: f32,
) -> Vec<f32> {
    check_groups(x.len(), d, group_rows, shift);
    check_groups(x.len(), d, group_rows, scale);
    let scale_plus_one: Vec<f32> = scale.iter().map(|s| s + 1.0).collect();
    let mut out = vec![0.0f32; x.len()];
    let rows = task_rows(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .enumerate()
        .for_each(|(task, (out, x))| {
            layer_norm_modulate_task(
                x,
                out,
                task * rows,
                d,
                group_rows,
                shift,
                &scale_plus_one,
                eps,
            );
        });
    out
}

/// `out = x * rsqrt(mean(x^2) + eps) * gamma` per row of `d`.
pub fn rms_norm(x: &[f32], d: usize, gamma: &[f32], eps: f32) -> Vec<f32> {
    assert!(d > 0 && x.len().is_multiple_of(d), "rows of {d} values");
    assert_eq!(gamma.len(), d, "one weight per value of a row");
    let mut out = vec![0.0f32; x.len()];
    let rows = task_rows(d);
    out.par_chunks_mut(rows * d)
        .zip(x.par_chunks(rows * d))
        .for_each(|(out, x)| rms_norm_task(x, out, d, gamma, eps));
    out
}

/// `x += y * gate` per row of `d`, rows in groups of `group_rows` sharing a row of `gate`.
pub fn gated_residual(x: &mut [f32], y: &[f32], d: usize, group_rows: usize, gate: &[f32]) {
    assert_eq!(x.len(), y.len(), "x and y hold the same rows");
    check_groups(x.len(), d, group_rows, gate);
    let rows = task_rows(d);
    x.par_chunks_mut(rows * d)
        .zip(y.par_chunks(rows * d))
        .enumerate()
        .for_each(|(task, (x, y))| gated_residual_task(x, y, task * rows, d, group_rows, gate));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tests::values;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{i}: {x} against {y}"
            );
        }
    }

    #[test]
    fn layer_norm_modulate_matches_the_plain_formula() {
        // Rows that are not a multiple of the lanes, groups over task borders.
        for (d, group_rows, groups) in [(1, 1, 1), (20, 3, 4), (130, 700, 2)] {
            let x = values(d * group_rows * groups, 1);
            let shift = values(d * groups, 2);
            let scale = values(d * groups, 3);
            let got = layer_norm_modulate(&x, d, group_rows, &shift, &scale, 1e-6);
            let mut want = vec![0.0f32; x.len()];
            for (r, row) in x.chunks(d).enumerate() {
                let g = r / group_rows;
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                for j in 0..d {
                    let n = (row[j] as f64 - mean) / (var + 1e-6).sqrt();
                    want[r * d + j] =
                        (n * (1.0 + scale[g * d + j] as f64) + shift[g * d + j] as f64) as f32;
                }
            }
            close(&got, &want, 1e-4);
        }
    }

    #[test]
    fn rms_norm_matches_the_plain_formula() {
        let d = 37;
        let x = values(d * 90, 4);
        let gamma = values(d, 5);
        let got = rms_norm(&x, d, &gamma, 1e-6);
        for (r, row) in x.chunks(d).enumerate() {
            let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
            for j in 0..d {
                let want = row[j] as f64 / (ms + 1e-6).sqrt() * gamma[j] as f64;
                let got = got[r * d + j] as f64;
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn gated_residual_matches_the_plain_formula() {
        let (d, group_rows, groups) = (33, 2000, 3);
        let mut x = values(d * group_rows * groups, 6);
        let y = values(x.len(), 7);
        let gate = values(d * groups, 8);
        let want: Vec<f32> = (0..x.len())
            .map(|i| x[i] + y[i] * gate[(i / d / group_rows) * d + i % d])
            .collect();
        gated_residual(&mut x, &y, d, group_rows, &gate);
        close(&x, &want, 1e-6);
    }
}
