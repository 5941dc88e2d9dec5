//! Gemma's rotary position embedding: rotates the two halves of each head (`rotate_half`).

use burn::tensor::{Device, Tensor, TensorData};

/// cos/sin tables for positions `0..seq_len`, `[1, 1, seq_len, head_dim]`, in f32.
#[derive(Debug, Clone)]
pub(crate) struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    /// Tables as transformers computes them in float32: `inv_freq_i = 1 / theta^(2i / d)`,
    /// angle = position * inv_freq, the `d/2` angles repeated for both halves.
    pub fn new(head_dim: usize, theta: f64, seq_len: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (theta as f32).powf(exponent)
            })
            .collect();
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for position in 0..seq_len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = position as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let table = |values: Vec<f32>| {
            Tensor::<4>::from_data(TensorData::new(values, [1, 1, seq_len, head_dim]), device)
        };
        Self {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// `x * cos + rotate_half(x) * sin` for `x` `[batch, heads, seq_len, head_dim]` (f32), where
    /// `rotate_half((x1, x2)) = (-x2, x1)` on the two halves of the head.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let half = d / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_the_two_halves_by_position_times_frequency() {
        let device = Device::flex();
        let (d, t) = (4, 3);
        let rotary = Rotary::new(d, 10000.0, t, &device);
        let x: Vec<f32> = (0..t * d).map(|i| 0.1 * i as f32 + 0.3).collect();
        let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 1, t, d]), &device);
        let out = rotary.apply(input).into_data().try_to_vec::<f32>().unwrap();
        for p in 0..t {
            for i in 0..d / 2 {
                let angle = p as f32 / 10000f32.powf((2 * i) as f32 / d as f32);
                let (a, b) = (x[p * d + i], x[p * d + i + d / 2]);
                let (c, s) = (angle.cos(), angle.sin());
                assert!((out[p * d + i] - (a * c - b * s)).abs() < 1e-6);
                assert!((out[p * d + i + d / 2] - (b * c + a * s)).abs() < 1e-6);
            }
        }
    }
}
