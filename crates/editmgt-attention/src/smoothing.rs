//! Adaptive smoothing of a score grid (reference.md section 6, step 2).
//!
//! The reference smooths with SciPy and NumPy; this module re-implements exactly the pieces it
//! uses, with the same arithmetic (so the result matches to float32 rounding):
//!
//! - [`gaussian_filter`]: `scipy.ndimage.gaussian_filter(x, sigma, mode="reflect")` with the
//!   default `truncate = 4.0` (radius `int(4 sigma + 0.5)`, 6 for sigma 1.5): a separable
//!   correlation with a normalised Gaussian kernel, rows (axis 0) first, each pass accumulated in
//!   `f64` and stored as `f32`.
//! - [`variance_filter`]: `scipy.ndimage.generic_filter(x, np.var, size)` (border mode "reflect"):
//!   the population variance over the `size x size` window, computed in `f64` as NumPy does
//!   (pairwise sums), stored as `f32`.
//! - [`percentile`]: `np.percentile(x, q)` with the default linear interpolation.
//!
//! Border mode "reflect" is the half-sample symmetric extension `d c b a | a b c d | d c b a`,
//! repeated as often as needed, so grids smaller than the filter radius work too.
//!
//! The reference hard-codes a batch of one and a 32x32 (or 64x64) grid; here every function takes
//! any `h x w` grid, and [`ScoreMap::smooth`](crate::ScoreMap::smooth) any batch.

use ndarray::{Array2, ArrayView2};

use crate::AttentionError;

/// The parameters of the reference's `smooth_local_scores(..., method="adaptive")`.
///
/// The defaults are what the released pipeline uses (`strength 1.0`, peaks preserved).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSmoothing {
    /// Scales the Gaussian: `sigma = 1.5 * strength`. Must be finite and positive.
    pub strength: f64,
    /// Blend the original values back in at the peaks (values above the 90th percentile):
    /// `y = 0.7 x + 0.3 y` there.
    pub preserve_peaks: bool,
}

impl Default for AdaptiveSmoothing {
    fn default() -> Self {
        Self {
            strength: 1.0,
            preserve_peaks: true,
        }
    }
}

/// Gaussian sigma at strength 1.
pub const BASE_SIGMA: f64 = 1.5;
/// SciPy's default `truncate`: the kernel radius is `int(truncate * sigma + 0.5)`.
pub const TRUNCATE: f64 = 4.0;
/// Side of the square variance window.
pub const VARIANCE_WINDOW: usize = 5;
/// How much of the Gaussian the local variance takes away: `w = 1 - 0.7 v`.
pub const VARIANCE_WEIGHT: f32 = 0.7;
/// The percentile above which a value is a peak.
pub const PEAK_PERCENTILE: f64 = 90.0;
/// Share of the original value kept at peaks: `y = 0.7 x + 0.3 y`.
pub const PEAK_ALPHA: f32 = 0.7;

impl AdaptiveSmoothing {
    /// The Gaussian sigma, `1.5 * strength`.
    pub fn sigma(&self) -> f64 {
        BASE_SIGMA * self.strength
    }

    /// Smooths one `h x w` grid:
    ///
    /// 1. `g` = Gaussian filter (sigma `1.5 * strength`, radius 6 at strength 1, "reflect");
    /// 2. `v` = population variance over the 5x5 window ("reflect"), rescaled
    ///    `(v - min) / (max - min + 1e-8)`; `w = 1 - 0.7 v`; `y = w g + (1 - w) x`;
    /// 3. peaks (where `x` is above its 90th percentile): `y = 0.7 x + 0.3 y`;
    /// 4. if `max(y) > min(y)`, `y` is mapped linearly back onto `[min(x), max(x)]`.
    ///
    /// All element-wise steps are in `f32`, in the reference's operation order.
    pub fn apply(&self, grid: ArrayView2<'_, f32>) -> Result<Array2<f32>, AttentionError> {
        if !(self.strength.is_finite() && self.strength > 0.0) {
            return Err(AttentionError::invalid(
                "strength",
                self.strength,
                "must be finite and positive",
            ));
        }
        if grid.is_empty() {
            return Err(AttentionError::empty("score grid"));
        }
        let x = grid.as_standard_layout().into_owned();
        let g = gaussian_filter(x.view(), self.sigma())?;
        let mut v = variance_filter(x.view(), VARIANCE_WINDOW)?;

        let vs = v.as_slice_mut().expect("standard layout");
        let (vmin, vmax) = crate::rescale::min_max(vs).unwrap_or((0.0, 0.0));
        let denominator = (vmax - vmin) + crate::rescale::RESCALE_EPSILON;
        let xs = x.as_slice().expect("standard layout");
        let gs = g.as_slice().expect("standard layout");
        let mut y: Vec<f32> = vs
            .iter()
            .zip(gs)
            .zip(xs)
            .map(|((&v, &g), &x)| {
                let v = (v - vmin) / denominator;
                let w = 1.0 - v * VARIANCE_WEIGHT;
                w * g + (1.0 - w) * x
            })
            .collect();

        if self.preserve_peaks {
            let threshold = percentile(xs, PEAK_PERCENTILE)?;
            for (y, &x) in y.iter_mut().zip(xs) {
                if f64::from(x) > threshold {
                    *y = PEAK_ALPHA * x + (1.0 - PEAK_ALPHA) * *y;
                }
            }
        }

        let (ymin, ymax) = crate::rescale::min_max(&y).unwrap_or((0.0, 0.0));
        if ymax > ymin {
            let (xmin, xmax) = crate::rescale::min_max(xs).unwrap_or((0.0, 0.0));
            let span = ymax - ymin;
            let target = xmax - xmin;
            for y in y.iter_mut() {
                *y = (*y - ymin) / span;
                *y = *y * target + xmin;
            }
        }
        Ok(Array2::from_shape_vec(x.dim(), y).expect("same size as the input"))
    }
}

/// The index that border mode "reflect" (`d c b a | a b c d | d c b a`) reads for position `i`
/// of a line of length `n > 0`.
pub fn reflect_index(i: isize, n: usize) -> usize {
    let period = 2 * n as isize;
    let m = i.rem_euclid(period) as usize;
    if m >= n { 2 * n - 1 - m } else { m }
}

/// SciPy's Gaussian kernel: `exp(-x^2 / (2 sigma^2))` for `x` in `-radius..=radius`, normalised
/// to sum 1, with `radius = int(4 sigma + 0.5)`. Returns the half-kernel `w[0..=radius]` (it is
/// symmetric).
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (TRUNCATE * sigma + 0.5) as usize;
    let scale = -0.5 / (sigma * sigma);
    let full: Vec<f64> = (-(radius as i64)..=radius as i64)
        .map(|x| (scale * (x * x) as f64).exp())
        .collect();
    let sum: f64 = full.iter().sum();
    full[radius..].iter().map(|w| w / sum).collect()
}

/// `scipy.ndimage.gaussian_filter(grid, sigma, mode="reflect")` on an `f32` grid: rows (axis 0)
/// then columns (axis 1), each pass accumulated in `f64` and rounded to `f32`.
pub fn gaussian_filter(
    grid: ArrayView2<'_, f32>,
    sigma: f64,
) -> Result<Array2<f32>, AttentionError> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(AttentionError::invalid(
            "sigma",
            sigma,
            "must be finite and positive",
        ));
    }
    let (h, w) = grid.dim();
    if h == 0 || w == 0 {
        return Err(AttentionError::empty("score grid"));
    }
    let kernel = gaussian_kernel(sigma);
    let mut tmp = Array2::<f32>::zeros((h, w));
    for x in 0..w {
        let line: Vec<f64> = grid.column(x).iter().map(|&v| f64::from(v)).collect();
        for (y, out) in tmp.column_mut(x).iter_mut().enumerate() {
            *out = correlate_symmetric(&line, y, &kernel) as f32;
        }
    }
    let mut out = Array2::<f32>::zeros((h, w));
    for y in 0..h {
        let line: Vec<f64> = tmp.row(y).iter().map(|&v| f64::from(v)).collect();
        for (x, o) in out.row_mut(y).iter_mut().enumerate() {
            *o = correlate_symmetric(&line, x, &kernel) as f32;
        }
    }
    Ok(out)
}

/// One output of SciPy's symmetric 1-D correlation at `i`: `x[i] w[0] + sum_j (x[i-j] + x[i+j]) w[j]`,
/// the farthest pair first (SciPy's order), with "reflect" borders.
fn correlate_symmetric(line: &[f64], i: usize, half_kernel: &[f64]) -> f64 {
    let n = line.len();
    let at = |k: isize| line[reflect_index(k, n)];
    let i = i as isize;
    let mut acc = line[i as usize] * half_kernel[0];
    for j in (1..half_kernel.len()).rev() {
        let j_ = j as isize;
        acc += (at(i - j_) + at(i + j_)) * half_kernel[j];
    }
    acc
}

/// `scipy.ndimage.generic_filter(grid, np.var, size=size)` (mode "reflect"): the population
/// variance of the `size x size` window around each cell, in `f64` with NumPy's pairwise
/// summation, rounded to `f32`. `size` must be odd.
pub fn variance_filter(
    grid: ArrayView2<'_, f32>,
    size: usize,
) -> Result<Array2<f32>, AttentionError> {
    if size.is_multiple_of(2) {
        return Err(AttentionError::invalid("size", size, "must be odd"));
    }
    let (h, w) = grid.dim();
    if h == 0 || w == 0 {
        return Err(AttentionError::empty("score grid"));
    }
    let half = (size / 2) as isize;
    let mut window = vec![0f64; size * size];
    let mut out = Array2::<f32>::zeros((h, w));
    for y in 0..h {
        for x in 0..w {
            let mut k = 0;
            for dy in -half..=half {
                let yy = reflect_index(y as isize + dy, h);
                for dx in -half..=half {
                    let xx = reflect_index(x as isize + dx, w);
                    window[k] = f64::from(grid[(yy, xx)]);
                    k += 1;
                }
            }
            out[(y, x)] = numpy_var(&mut window) as f32;
        }
    }
    Ok(out)
}

/// `np.var(values)` (population variance) with NumPy's summation order. Overwrites `values`.
fn numpy_var(values: &mut [f64]) -> f64 {
    let n = values.len() as f64;
    let mean = numpy_sum(values) / n;
    for v in values.iter_mut() {
        let d = *v - mean;
        *v = d * d;
    }
    numpy_sum(values) / n
}

/// NumPy's pairwise summation of a contiguous `f64` array (`0 + pairwise_sum(a)`).
fn numpy_sum(a: &[f64]) -> f64 {
    0.0 + pairwise_sum(a)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0f64; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[full..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.percentile(values, q)` with linear interpolation, in `f64` (NumPy's `_lerp`: the
/// difference of the two neighbours in `f32`, the blend in `f64`). NaN values are refused.
pub fn percentile(values: &[f32], q: f64) -> Result<f64, AttentionError> {
    if values.is_empty() {
        return Err(AttentionError::empty("values"));
    }
    if !(0.0..=100.0).contains(&q) {
        return Err(AttentionError::invalid(
            "percentile",
            q,
            "must be in [0, 100]",
        ));
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err(AttentionError::invalid(
            "values",
            "NaN",
            "scores must not be NaN",
        ));
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    let below = virtual_index.floor();
    let gamma = virtual_index - below;
    let below = (below as usize).min(n - 1);
    let above = (below + 1).min(n - 1);
    let (a, b) = (sorted[below], sorted[above]);
    let diff = f64::from(b - a);
    Ok(if gamma >= 0.5 {
        f64::from(b) - diff * (1.0 - gamma)
    } else {
        f64::from(a) + diff * gamma
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_repeats_with_period_2n() {
        let n = 4;
        let got: Vec<usize> = (-9..13).map(|i| reflect_index(i, n)).collect();
        // d c b a | a b c d | d c b a ...
        assert_eq!(
            got,
            vec![
                0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3, 3
            ][..]
        );
        assert_eq!(reflect_index(-3, 1), 0);
    }

    #[test]
    fn kernel_radius_and_normalisation() {
        let k = gaussian_kernel(1.5);
        assert_eq!(k.len(), 7);
        let total = k[0] + 2.0 * k[1..].iter().sum::<f64>();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert!((percentile(&v, 90.0).unwrap() - 9.0).abs() < 1e-12);
        let v = [1.0f32, 2.0, 4.0];
        assert!((percentile(&v, 90.0).unwrap() - 3.6).abs() < 1e-6);
    }

    #[test]
    fn constant_grid_stays_constant() {
        let g = Array2::from_elem((3, 5), 0.25f32);
        let y = AdaptiveSmoothing::default().apply(g.view()).unwrap();
        assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-7));
    }

    #[test]
    fn tiny_and_non_square_grids_work() {
        for (h, w) in [(1, 1), (1, 7), (2, 3), (9, 4)] {
            let g = Array2::from_shape_fn((h, w), |(y, x)| ((y * 7 + x * 3) % 5) as f32 / 4.0);
            let y = AdaptiveSmoothing::default().apply(g.view()).unwrap();
            assert_eq!(y.dim(), (h, w));
            assert!(y.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let g = Array2::from_elem((3, 3), 0.5f32);
        let bad = AdaptiveSmoothing {
            strength: 0.0,
            ..Default::default()
        };
        assert!(bad.apply(g.view()).is_err());
        let empty = Array2::<f32>::zeros((0, 3));
        assert!(AdaptiveSmoothing::default().apply(empty.view()).is_err());
        assert!(variance_filter(g.view(), 4).is_err());
    }
}
