//! Adaptive smoothing of score grids on the device (docs/model.md section 6, step 2).
//!
//! The reference smooths one 32x32 grid on the host with SciPy and NumPy. Every piece it uses
//! is linear or an order statistic, so here it runs on the grids' device for any batch and grid:
//!
//! - `scipy.ndimage.gaussian_filter(x, sigma, mode="reflect")` (default `truncate = 4.0`, radius
//!   `int(4 sigma + 0.5)`, 6 for sigma 1.5) is separable: `G_h X G_w^T` with the `n x n`
//!   matrices of [`reflect_filter_matrix`] for the normalised Gaussian kernel.
//! - `scipy.ndimage.generic_filter(x, np.var, size=5)` (mode "reflect") is the population
//!   variance of each 5x5 window, computed in two passes (window mean, then mean squared
//!   deviation) over the 25 reflected shifts of the grid, gathered with index tensors prepared
//!   once.
//! - `np.percentile(x, 90)` (linear interpolation) only decides which values are peaks,
//!   `x > percentile`. With `k = floor(0.9 (N - 1))` and the sorted values `s`, the percentile lies
//!   in `[s_k, s_(k+1))`, strictly above `s_k` unless it equals it, and no value lies strictly
//!   between the two; so `x > percentile` exactly when `x > s_k`, one order statistic
//!   ([`editmgt_core::select::kth_smallest`]) instead of a sort.
//!
//! Border mode "reflect" is the half-sample symmetric extension `d c b a | a b c d | d c b a`,
//! repeated as often as needed, so grids smaller than the filter radius work too. Results agree
//! with the reference to float32 rounding (it accumulates the filters in `f64`).

use burn::tensor::{Device, Int, Tensor, TensorData};
use editmgt_core::select::kth_smallest_const;

use crate::{AttentionError, ScoreMap};

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

    /// Prepares the smoothing of `height x width` grids on `device` (its filter matrices are
    /// uploaded once; use the [`Smoother`] for every step of a loop).
    pub fn prepare(
        &self,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Smoother, AttentionError> {
        if !(self.strength.is_finite() && self.strength > 0.0) {
            return Err(AttentionError::invalid(
                "strength",
                self.strength,
                "must be finite and positive",
            ));
        }
        if height == 0 || width == 0 {
            return Err(AttentionError::empty("score grid"));
        }
        let kernel = gaussian_kernel(self.sigma());
        let matrix = |n: usize, half: &[f64], scale: f64| {
            Tensor::<2>::from_data(
                TensorData::new(
                    reflect_filter_matrix(n, half)
                        .into_iter()
                        .map(|v| (v * scale) as f32)
                        .collect::<Vec<_>>(),
                    [n, n],
                ),
                device,
            )
        };
        Ok(Smoother {
            settings: *self,
            height,
            width,
            gaussian_rows: matrix(height, &kernel, 1.0),
            gaussian_cols_t: matrix(width, &kernel, 1.0).transpose(),
            window_rows: window_offsets(height, device),
            window_cols: window_offsets(width, device),
        })
    }

    /// Smooths every batch item of `map` (preparing a [`Smoother`] for its grid):
    ///
    /// 1. `g` = Gaussian filter (sigma `1.5 * strength`, radius 6 at strength 1, "reflect");
    /// 2. `v` = population variance over the 5x5 window ("reflect"), rescaled
    ///    `(v - min) / (max - min + 1e-8)`; `w = 1 - 0.7 v`; `y = w g + (1 - w) x`;
    /// 3. peaks (where `x` is above its 90th percentile): `y = 0.7 x + 0.3 y`;
    /// 4. if `max(y) > min(y)`, `y` is mapped linearly back onto `[min(x), max(x)]`.
    ///
    /// All element-wise steps are in `f32`, in the reference's operation order.
    pub fn apply(&self, map: &ScoreMap) -> Result<ScoreMap, AttentionError> {
        self.prepare(map.height(), map.width(), &map.device())?
            .apply(map)
    }
}

/// [`AdaptiveSmoothing`] prepared for one grid size on one device.
#[derive(Debug, Clone)]
pub struct Smoother {
    settings: AdaptiveSmoothing,
    height: usize,
    width: usize,
    gaussian_rows: Tensor<2>,
    gaussian_cols_t: Tensor<2>,
    /// Per offset of the variance window, the reflected source row (column) of each row
    /// (column).
    window_rows: Vec<Tensor<1, Int>>,
    window_cols: Vec<Tensor<1, Int>>,
}

/// For each offset `-r..=r` of the variance window, the reflected index of every position of a
/// line of `n`.
fn window_offsets(n: usize, device: &Device) -> Vec<Tensor<1, Int>> {
    let half = (VARIANCE_WINDOW / 2) as isize;
    (-half..=half)
        .map(|d| {
            let idx: Vec<i64> = (0..n)
                .map(|i| reflect_index(i as isize + d, n) as i64)
                .collect();
            Tensor::from_data(TensorData::new(idx, [n]), device)
        })
        .collect()
}

impl Smoother {
    /// The grid `(height, width)` this smoother was prepared for.
    pub fn grid(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Smooths every batch item of `map` (see [`AdaptiveSmoothing::apply`]).
    pub fn apply(&self, map: &ScoreMap) -> Result<ScoreMap, AttentionError> {
        if (map.height(), map.width()) != (self.height, self.width) {
            return Err(AttentionError::ShapeMismatch {
                what: "score grid to smooth".into(),
                expected: vec![self.height, self.width],
                found: vec![map.height(), map.width()],
            });
        }
        Ok(ScoreMap::new(self.apply_tensor(map.tensor().clone())))
    }

    fn filter(&self, rows: &Tensor<2>, cols_t: &Tensor<2>, x: Tensor<3>) -> Tensor<3> {
        let [b, h, w] = x.dims();
        let rows = rows.clone().unsqueeze::<3>().expand([b, h, h]);
        let cols_t = cols_t.clone().unsqueeze::<3>().expand([b, w, w]);
        rows.matmul(x).matmul(cols_t)
    }

    fn apply_tensor(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, h, w] = x.dims();
        let n = h * w;
        let flat = |t: Tensor<3>| t.reshape([b, n]);

        let g = flat(self.filter(&self.gaussian_rows, &self.gaussian_cols_t, x.clone()));
        // Local variance over the window, in two passes as NumPy computes it (a one-pass
        // `E[x^2] - E[x]^2` loses the small variances of flat regions to cancellation).
        let mut shifted = Vec::with_capacity(VARIANCE_WINDOW * VARIANCE_WINDOW);
        for rows in &self.window_rows {
            let by_row = x.clone().select(1, rows.clone());
            for cols in &self.window_cols {
                shifted.push(by_row.clone().select(2, cols.clone()));
            }
        }
        let count = shifted.len() as f32;
        let mut sum = shifted[0].clone();
        for t in &shifted[1..] {
            sum = sum + t.clone();
        }
        let mean = sum / count;
        let mut squares: Option<Tensor<3>> = None;
        for t in shifted {
            let d = t - mean.clone();
            let sq = d.clone() * d;
            squares = Some(match squares {
                Some(acc) => acc + sq,
                None => sq,
            });
        }
        let v = flat(squares.expect("a 5x5 window") / count);
        let v = crate::rescale_rows(v);
        let x = flat(x);
        let weight = (v * VARIANCE_WEIGHT).neg() + 1.0;
        let mut y = weight.clone() * g + (weight.neg() + 1.0) * x.clone();

        if self.settings.preserve_peaks {
            let k = ((n - 1) as f64 * (PEAK_PERCENTILE / 100.0)).floor() as usize;
            let threshold = kth_smallest_const(x.clone(), k.min(n - 1));
            let peaks = x.clone().greater(threshold.expand([b, n]));
            let blended = x.clone() * PEAK_ALPHA + y.clone() * (1.0 - PEAK_ALPHA);
            y = y.mask_where(peaks, blended);
        }

        let ymin = y.clone().min_dim(1);
        let ymax = y.clone().max_dim(1);
        let xmin = x.clone().min_dim(1);
        let xmax = x.max_dim(1);
        let spread = ymax.clone().greater(ymin.clone()).expand([b, n]);
        let span = ymax - ymin.clone();
        let target = xmax - xmin.clone();
        let restored = (y.clone() - ymin) / span * target + xmin;
        y.mask_where(spread, restored).reshape([b, h, w])
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

/// The row-major `n x n` matrix of a symmetric 1-D correlation with half-kernel `half`
/// (`half[0]` at the centre, `half[j]` at distance `j`) and "reflect" borders: row `i` holds the
/// weight each input position contributes to output `i` (reflected taps add up).
pub fn reflect_filter_matrix(n: usize, half: &[f64]) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        for (j, &w) in half.iter().enumerate() {
            let taps: &[isize] = if j == 0 {
                &[0]
            } else {
                &[-(j as isize), j as isize]
            };
            for &d in taps {
                m[i * n + reflect_index(i as isize + d, n)] += w;
            }
        }
    }
    m
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
        // Every row of the filter matrix keeps the kernel's total, also on tiny grids.
        for n in [1, 2, 5, 13] {
            let m = reflect_filter_matrix(n, &k);
            for row in m.chunks_exact(n) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "n {n}");
            }
        }
    }

    fn map(values: Vec<f32>, b: usize, h: usize, w: usize) -> ScoreMap {
        ScoreMap::from_flat(values, b, h, w, &Device::flex()).unwrap()
    }

    #[test]
    fn constant_grid_stays_constant() {
        let y = AdaptiveSmoothing::default()
            .apply(&map(vec![0.25; 15], 1, 3, 5))
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(y.iter().all(|&v| (v - 0.25).abs() < 1e-7), "{y:?}");
    }

    #[test]
    fn tiny_and_non_square_grids_work() {
        for (h, w) in [(1, 1), (1, 7), (2, 3), (9, 4)] {
            let values = (0..2 * h * w)
                .map(|i| ((i / w * 7 + i % w * 3) % 5) as f32 / 4.0)
                .collect();
            let y = AdaptiveSmoothing::default()
                .apply(&map(values, 2, h, w))
                .unwrap();
            assert_eq!((y.batch(), y.height(), y.width()), (2, h, w));
            assert!(y.to_vec().unwrap().iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let bad = AdaptiveSmoothing {
            strength: 0.0,
            ..Default::default()
        };
        assert!(bad.apply(&map(vec![0.5; 9], 1, 3, 3)).is_err());
        assert!(
            AdaptiveSmoothing::default()
                .prepare(0, 3, &Device::flex())
                .is_err()
        );
        let smoother = AdaptiveSmoothing::default()
            .prepare(3, 3, &Device::flex())
            .unwrap();
        assert!(smoother.apply(&map(vec![0.5; 8], 1, 2, 4)).is_err());
    }
}
