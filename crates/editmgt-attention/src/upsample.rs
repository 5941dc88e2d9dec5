//! Bicubic resizing of a score grid (reference.md section 6, step 3).
//!
//! Exactly `torch.nn.functional.interpolate(x, size, mode="bicubic", align_corners=False)` on
//! the CPU in `f32`: Keys' cubic convolution with `a = -0.75`, half-pixel centres
//! (`src = scale (dst + 0.5) - 0.5` with `scale = in / out`), source indices clamped to the
//! edges, no antialiasing; results agree with PyTorch's to about 1 ulp (its CPU kernel's exact
//! accumulation order depends on the build). The reference only ever maps 32x32 to 64x64; here any grid and any
//! output size (in particular any integer factor) works.

use ndarray::{Array2, ArrayView2};

use crate::AttentionError;

/// The cubic convolution parameter PyTorch uses.
pub const CUBIC_A: f32 = -0.75;

/// Upsamples one grid by an integer `factor` in both directions (`h x w -> fh x fw`).
pub fn upsample_bicubic(
    grid: ArrayView2<'_, f32>,
    factor: usize,
) -> Result<Array2<f32>, AttentionError> {
    if factor == 0 {
        return Err(AttentionError::invalid(
            "factor",
            factor,
            "must be at least 1",
        ));
    }
    let (h, w) = grid.dim();
    resize_bicubic(grid, h * factor, w * factor)
}

/// Resizes one grid to `out_height x out_width` with PyTorch's bicubic interpolation.
pub fn resize_bicubic(
    grid: ArrayView2<'_, f32>,
    out_height: usize,
    out_width: usize,
) -> Result<Array2<f32>, AttentionError> {
    let (h, w) = grid.dim();
    if h == 0 || w == 0 {
        return Err(AttentionError::empty("score grid"));
    }
    if out_height == 0 || out_width == 0 {
        return Err(AttentionError::empty("output grid"));
    }
    let rows = axis_taps(h, out_height);
    let cols = axis_taps(w, out_width);
    let mut out = Array2::<f32>::zeros((out_height, out_width));
    for (oy, ry) in rows.iter().enumerate() {
        for (ox, cx) in cols.iter().enumerate() {
            // PyTorch's order (rows along x, then along y); its CPU kernels are built with
            // floating-point contraction, so the accumulations are fused multiply-adds.
            let mut acc = 0f32;
            for i in 0..4 {
                let y = ry.index[i];
                let mut row = grid[(y, cx.index[0])] * cx.weight[0];
                for j in 1..4 {
                    row = grid[(y, cx.index[j])].mul_add(cx.weight[j], row);
                }
                acc = if i == 0 {
                    row * ry.weight[0]
                } else {
                    row.mul_add(ry.weight[i], acc)
                };
            }
            out[(oy, ox)] = acc;
        }
    }
    Ok(out)
}

/// The four source indices (clamped) and weights of one output coordinate.
#[derive(Debug, Clone, Copy)]
struct Taps {
    index: [usize; 4],
    weight: [f32; 4],
}

fn axis_taps(input: usize, output: usize) -> Vec<Taps> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = scale * (o as f32 + 0.5) - 0.5;
            let base = (src.floor() as i64).min(input as i64 - 1);
            let t = (src - base as f32).clamp(0.0, 1.0);
            let index =
                std::array::from_fn(|j| (base - 1 + j as i64).clamp(0, input as i64 - 1) as usize);
            Taps {
                index,
                weight: cubic_coefficients(t),
            }
        })
        .collect()
}

/// Keys' cubic convolution weights of the four taps at fractional offset `t` (PyTorch's
/// `get_cubic_upsample_coefficients`, in `f32`).
pub fn cubic_coefficients(t: f32) -> [f32; 4] {
    let a = CUBIC_A;
    // |x| <= 1
    let near = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    // 1 < |x| < 2
    let far = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    let x2 = 1.0 - t;
    [far(t + 1.0), near(t), near(x2), far(x2 + 1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        for t in [0.0f32, 0.25, 0.5, 0.75, 1.0] {
            let s: f32 = cubic_coefficients(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "{t}: {s}");
        }
    }

    #[test]
    fn constant_stays_constant_and_shapes_follow() {
        let g = Array2::from_elem((3, 5), 0.5f32);
        for f in 1..5 {
            let u = upsample_bicubic(g.view(), f).unwrap();
            assert_eq!(u.dim(), (3 * f, 5 * f));
            assert!(u.iter().all(|&v| (v - 0.5).abs() < 1e-6));
        }
    }

    #[test]
    fn factor_one_is_identity() {
        let g = Array2::from_shape_fn((4, 3), |(y, x)| (y * 3 + x) as f32);
        let u = upsample_bicubic(g.view(), 1).unwrap();
        assert_eq!(u, g);
    }

    #[test]
    fn zero_factor_and_empty_grid_are_errors() {
        let g = Array2::from_elem((2, 2), 0.0f32);
        assert!(upsample_bicubic(g.view(), 0).is_err());
        let e = Array2::<f32>::zeros((0, 2));
        assert!(upsample_bicubic(e.view(), 2).is_err());
    }
}
