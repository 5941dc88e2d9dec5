//! Mean and variance of contiguous groups of `f32` values, on the CPU.
//!
//! Each group is reduced in two passes (the mean, then the mean of squared deviations from it,
//! as PyTorch's and Burn's GroupNorm define the variance), in blocks of 256 values summed in 16
//! `f32` lanes and added into `f64`, so the sums neither lose precision over millions of values
//! nor stop vectorising. Groups and blocks of a group are spread over the rayon pool.

use rayon::prelude::*;

/// Lanes of the partial sums.
const LANES: usize = 16;
/// Values summed in `f32` before their sum is added into `f64`.
const BLOCK: usize = 256;
/// Values one task reduces.
const TASK: usize = 1 << 16;

/// Why [`group_moments`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MomentsError {
    /// `data` does not hold `groups * group_len` values.
    Length {
        /// Values expected.
        expected: usize,
        /// Values given.
        got: usize,
    },
}

impl std::fmt::Display for MomentsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Length { expected, got } => {
                write!(f, "group moments: expected {expected} values, got {got}")
            }
        }
    }
}

impl std::error::Error for MomentsError {}

/// `(mean, variance)` of each of the `data.len() / group_len` consecutive groups of `group_len`
/// values (the biased variance: the mean of squared deviations). An empty group gives `(0, 0)`.
pub fn group_moments(data: &[f32], group_len: usize) -> Result<Vec<(f64, f64)>, MomentsError> {
    if group_len == 0 {
        return Ok(Vec::new());
    }
    if !data.len().is_multiple_of(group_len) {
        return Err(MomentsError::Length {
            expected: data.len().div_ceil(group_len) * group_len,
            got: data.len(),
        });
    }
    Ok(data
        .par_chunks(group_len)
        .map(|group| {
            let n = group.len() as f64;
            let mean = group
                .par_chunks(TASK)
                .map(|c| dispatch(c, 0.0, false))
                .sum::<f64>()
                / n;
            // For any centre c, var = E[(x - c)^2] - (E[x] - c)^2; c is the mean rounded to f32.
            let centre = mean as f32;
            let squares = group
                .par_chunks(TASK)
                .map(|c| dispatch(c, centre, true))
                .sum::<f64>();
            let offset = mean - f64::from(centre);
            (mean, (squares / n - offset * offset).max(0.0))
        })
        .collect())
}

widest! {
    /// The sum of `x - centre` (or of `(x - centre)^2` when `square`) over `values`.
    fn dispatch(values: &[f32], centre: f32, square: bool) -> f64 {
        let mut total = 0.0f64;
        let mut blocks = values.chunks_exact(BLOCK);
        for block in &mut blocks {
            let mut lanes = [0.0f32; LANES];
            for chunk in block.chunks_exact(LANES) {
                for j in 0..LANES {
                    let d = chunk[j] - centre;
                    lanes[j] += if square { d * d } else { d };
                }
            }
            total += lanes.iter().map(|&l| f64::from(l)).sum::<f64>();
        }
        for &v in blocks.remainder() {
            let d = f64::from(v) - f64::from(centre);
            total += if square { d * d } else { d };
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tests::values;

    #[test]
    fn moments_match_f64_sums() {
        for (groups, len, offset) in [
            (1, 1, 0.0),
            (3, 1000, 0.0),
            (2, 300_001, 50.0),
            (4, 17, -3.0),
        ] {
            let data: Vec<f32> = values(groups * len, 9)
                .iter()
                .map(|v| v * 2.0 + offset)
                .collect();
            let got = group_moments(&data, len).unwrap();
            assert_eq!(got.len(), groups);
            for (g, &(mean, var)) in got.iter().enumerate() {
                let group = &data[g * len..(g + 1) * len];
                let m = group.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
                let v = group
                    .iter()
                    .map(|&x| (f64::from(x) - m).powi(2))
                    .sum::<f64>()
                    / len as f64;
                assert!(
                    (mean - m).abs() <= 2e-7 * (2.0 + offset.abs() as f64),
                    "{groups}x{len}: mean {mean} vs {m}"
                );
                assert!(
                    (var - v).abs() <= 1e-6 * v + 1e-12,
                    "{groups}x{len}: var {var} vs {v}"
                );
            }
        }
        assert_eq!(
            group_moments(&[1.0; 7], 3),
            Err(MomentsError::Length {
                expected: 9,
                got: 7
            })
        );
        assert!(group_moments(&[], 4).unwrap().is_empty());
    }
}
