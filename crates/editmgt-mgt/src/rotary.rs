//! Rotary position embedding over three position axes (FLUX style, interleaved pairs).
//!
//! Every token has a 3-component position id: text tokens `(0, 0, 0)`, image tokens
//! `(0, row, col)` on the transformer's grid. Axis `i` owns `d_i` consecutive features of a head
//! (`axes_dims_rope`, e.g. `[16, 56, 56]`), with frequencies `theta^(-2k / d_i)`; each angle's
//! cosine and sine are repeated twice (interleaved) and the rotation acts on consecutive pairs:
//! `x * cos + rot(x) * sin` with `rot((x0, x1)) = (-x1, x0)`. Angles are computed in float64 and
//! rounded to float32, as the reference does. Reference tokens take the image positions.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::MgtError;
use crate::config::ROPE_THETA;

/// The position ids of the text rows and of the image tokens of one forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    text: Vec<[f32; 3]>,
    image: Vec<[f32; 3]>,
}

impl Positions {
    /// The reference pipeline's positions: `text_len` zero rows, then `(0, row, col)` for every
    /// cell of a `height x width` grid (the transformer's grid, after any downsampling), in
    /// row-major order.
    pub fn grid(text_len: usize, height: usize, width: usize) -> Self {
        let image = (0..height)
            .flat_map(|r| (0..width).map(move |c| [0.0, r as f32, c as f32]))
            .collect();
        Self {
            text: vec![[0.0; 3]; text_len],
            image,
        }
    }

    /// Explicit position ids (the reference's `txt_ids` and `img_ids`).
    pub fn from_ids(text: Vec<[f32; 3]>, image: Vec<[f32; 3]>) -> Result<Self, MgtError> {
        if text.iter().chain(&image).flatten().any(|v| !v.is_finite()) {
            return Err(MgtError::InvalidPositions {
                reason: "position ids must be finite".into(),
            });
        }
        Ok(Self { text, image })
    }

    /// Number of text rows.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// Number of image tokens.
    pub fn image_len(&self) -> usize {
        self.image.len()
    }

    /// The text position ids.
    pub fn text_ids(&self) -> &[[f32; 3]] {
        &self.text
    }

    /// The image position ids.
    pub fn image_ids(&self) -> &[[f32; 3]] {
        &self.image
    }
}

/// Cosines and (pair-signed) sines of the rotary embedding for `[text, image]` rows, on a device.
///
/// Build it once per grid and text length and pass it to every forward (or let the forward build
/// the standard one). Values are float32 whatever the model's float type; the rotation is
/// computed in float32.
#[derive(Debug, Clone)]
pub struct RotaryTable {
    cos: Tensor<2>,
    sin: Tensor<2>,
    text_len: usize,
    image_len: usize,
}

impl RotaryTable {
    /// The table of `positions` for a head of `sum(axes_dims)` features.
    pub fn new(positions: &Positions, axes_dims: &[usize], device: &Device) -> Self {
        let head_dim: usize = axes_dims.iter().sum();
        let rows = positions.text.len() + positions.image.len();
        let mut cos = Vec::with_capacity(rows * head_dim);
        let mut sin = Vec::with_capacity(rows * head_dim);
        let freqs: Vec<Vec<f64>> = axes_dims
            .iter()
            .map(|&d| {
                (0..d / 2)
                    .map(|k| 1.0 / ROPE_THETA.powf((2 * k) as f64 / d as f64))
                    .collect()
            })
            .collect();
        for id in positions.text.iter().chain(&positions.image) {
            for (axis, axis_freqs) in freqs.iter().enumerate() {
                let pos = id.get(axis).copied().unwrap_or(0.0) as f64;
                for f in axis_freqs {
                    let angle = pos * f;
                    let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                    cos.extend([c, c]);
                    // rot((x0, x1)) * sin == swap((x0, x1)) * (-sin, sin)
                    sin.extend([-s, s]);
                }
            }
        }
        let shape = [rows, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), (device, DType::F32)),
            sin: Tensor::from_data(TensorData::new(sin, shape), (device, DType::F32)),
            text_len: positions.text.len(),
            image_len: positions.image.len(),
        }
    }

    /// Number of text rows.
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Number of image rows.
    pub fn image_len(&self) -> usize {
        self.image_len
    }

    /// The head width the table rotates.
    pub fn head_dim(&self) -> usize {
        self.cos.dims()[1]
    }

    /// `(cos, signed sin)` as `[1, 1, S, head_dim]` for the joint sequence `[text, image]`, or
    /// `[text, image, reference]` (reference rows repeat the image rows).
    pub(crate) fn joint(&self, with_reference: bool) -> (Tensor<4>, Tensor<4>) {
        let expand = |t: &Tensor<2>| {
            let t = if with_reference {
                let image = t.clone().narrow(0, self.text_len, self.image_len);
                Tensor::cat(vec![t.clone(), image], 0)
            } else {
                t.clone()
            };
            let [rows, dim] = t.dims();
            t.reshape([1, 1, rows, dim])
        };
        (expand(&self.cos), expand(&self.sin))
    }
}

/// Rotates `x` (`[B, H, S, head_dim]`) by the table's `cos`/`sin` (`[1, 1, S, head_dim]`), in
/// float32; the result has `x`'s float type.
pub(crate) fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let dtype = x.dtype();
    let [b, h, s, d] = x.dims();
    let x = x.cast(DType::F32).reshape([b, h, s, d / 2, 2]);
    let cos = cos.clone().reshape([1, 1, s, d / 2, 2]);
    let sin = sin.clone().reshape([1, 1, s, d / 2, 2]);
    // The pair swap is a stride-only view on backends that support it.
    let swapped = x.clone().flip([4]);
    (x * cos + swapped * sin).reshape([b, h, s, d]).cast(dtype)
}
