//! Bicubic resizing of score grids (docs/model.md section 6, step 3).
//!
//! Exactly the weights of `torch.nn.functional.interpolate(x, size, mode="bicubic",
//! align_corners=False)`: Keys' cubic convolution with `a = -0.75`, half-pixel centres
//! (`src = scale (dst + 0.5) - 0.5` with `scale = in / out`), source indices clamped to the
//! edges, no antialiasing. The interpolation is separable and linear, so it runs on the device
//! as two matrix products, `U_h X U_w^T`, with the `out x in` matrices of [`bicubic_matrix`].
//! The reference only ever maps 32x32 to 64x64; here any grid and any output size works.

use burn::tensor::{Device, Tensor, TensorData};

use crate::{AttentionError, ScoreMap};

/// The cubic convolution parameter PyTorch uses.
pub const CUBIC_A: f32 = -0.75;

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

/// The row-major `output x input` matrix of PyTorch's bicubic interpolation along one axis
/// (taps that fall on the same clamped source index add up).
pub fn bicubic_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    if input == 0 {
        return m;
    }
    let scale = input as f32 / output as f32;
    for o in 0..output {
        let src = scale * (o as f32 + 0.5) - 0.5;
        let base = (src.floor() as i64).min(input as i64 - 1);
        let t = (src - base as f32).clamp(0.0, 1.0);
        for (j, w) in cubic_coefficients(t).into_iter().enumerate() {
            let index = (base - 1 + j as i64).clamp(0, input as i64 - 1) as usize;
            m[o * input + index] += w;
        }
    }
    m
}

/// A prepared bicubic resize from `in_height x in_width` to `out_height x out_width` grids on
/// one device: the two interpolation matrices live on the device, so resizing in a loop
/// uploads nothing.
#[derive(Debug, Clone)]
pub struct Resize {
    rows: Tensor<2>,
    cols_t: Tensor<2>,
    input: (usize, usize),
    output: (usize, usize),
}

impl Resize {
    /// Prepares the resize on `device`.
    pub fn new(
        input: (usize, usize),
        output: (usize, usize),
        device: &Device,
    ) -> Result<Self, AttentionError> {
        if input.0 == 0 || input.1 == 0 {
            return Err(AttentionError::empty("score grid"));
        }
        if output.0 == 0 || output.1 == 0 {
            return Err(AttentionError::empty("output grid"));
        }
        let rows = Tensor::from_data(
            TensorData::new(bicubic_matrix(input.0, output.0), [output.0, input.0]),
            device,
        );
        let cols_t = Tensor::<2>::from_data(
            TensorData::new(bicubic_matrix(input.1, output.1), [output.1, input.1]),
            device,
        )
        .transpose();
        Ok(Self {
            rows,
            cols_t,
            input,
            output,
        })
    }

    /// The input grid `(height, width)`.
    pub fn input(&self) -> (usize, usize) {
        self.input
    }

    /// The output grid `(height, width)`.
    pub fn output(&self) -> (usize, usize) {
        self.output
    }

    /// Resizes every batch item of `map`, whose grid must be the prepared input grid.
    pub fn apply(&self, map: &ScoreMap) -> Result<ScoreMap, AttentionError> {
        if (map.height(), map.width()) != self.input {
            return Err(AttentionError::ShapeMismatch {
                what: "score grid to resize".into(),
                expected: vec![self.input.0, self.input.1],
                found: vec![map.height(), map.width()],
            });
        }
        Ok(ScoreMap::new(self.apply_tensor(map.tensor().clone())))
    }

    /// Resizes `[B, in_h, in_w]` values to `[B, out_h, out_w]` (shapes unchecked).
    pub(crate) fn apply_tensor(&self, values: Tensor<3>) -> Tensor<3> {
        let [b, _, _] = values.dims();
        let rows = self
            .rows
            .clone()
            .unsqueeze::<3>()
            .expand([b, self.output.0, self.input.0]);
        let cols_t = self
            .cols_t
            .clone()
            .unsqueeze::<3>()
            .expand([b, self.input.1, self.output.1]);
        rows.matmul(values).matmul(cols_t)
    }
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
        for (i, o) in [(1, 3), (3, 6), (32, 64), (5, 4)] {
            let m = bicubic_matrix(i, o);
            for row in m.chunks_exact(i) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn identity_at_the_same_size() {
        let m = bicubic_matrix(4, 4);
        for r in 0..4 {
            for c in 0..4 {
                assert_eq!(m[r * 4 + c], if r == c { 1.0 } else { 0.0 });
            }
        }
    }
}
