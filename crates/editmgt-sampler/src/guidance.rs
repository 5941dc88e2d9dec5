//! Classifier-free guidance: `u + g (c - u)`, on the logits' device.

use burn::tensor::Tensor;

use crate::SamplerError;

/// `uncond + scale * (cond - uncond)`, element-wise in `f32` (the reference's operation
/// order). Both tensors must have the same shape.
pub fn guide<const D: usize>(
    uncond: Tensor<D>,
    cond: Tensor<D>,
    scale: f32,
) -> Result<Tensor<D>, SamplerError> {
    if uncond.dims() != cond.dims() {
        return Err(SamplerError::ShapeMismatch {
            what: "conditional logits",
            expected: uncond.dims().to_vec(),
            found: cond.dims().to_vec(),
        });
    }
    Ok(uncond.clone() + (cond - uncond) * scale)
}

/// Guidance on the transformer's doubled batch: `logits` is `[2B, ...]` with the unconditional
/// half first (the reference's `[negative, positive]` order); returns the guided `[B, ...]`.
pub fn guide_batch_halves<const D: usize>(
    logits: Tensor<D>,
    scale: f32,
) -> Result<Tensor<D>, SamplerError> {
    let rows = logits.dims()[0];
    if !rows.is_multiple_of(2) {
        return Err(SamplerError::InvalidParameter {
            name: "guidance batch",
            value: rows.to_string(),
            reason: "must split into two equal halves [unconditional, conditional]",
        });
    }
    let uncond = logits.clone().slice(0..rows / 2);
    let cond = logits.slice(rows / 2..rows);
    guide(uncond, cond, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn combines_and_checks_shapes() {
        let device = Device::flex();
        let t =
            |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device);
        let out = guide(t(vec![1.0, 2.0]), t(vec![3.0, 2.0]), 6.0).unwrap();
        assert_eq!(out.into_data().try_to_vec::<f32>().unwrap(), [13.0, 2.0]);
        let halves = guide_batch_halves(t(vec![1.0, 2.0, 3.0, 2.0]).reshape([4, 1]), 6.0).unwrap();
        assert_eq!(halves.into_data().try_to_vec::<f32>().unwrap(), [13.0, 2.0]);
        assert!(guide(t(vec![1.0]), t(vec![1.0, 2.0]), 1.0).is_err());
        assert!(guide_batch_halves(t(vec![1.0, 2.0, 3.0]), 1.0).is_err());
    }
}
