//! Classifier-free guidance: `u + g (c - u)`.

use rayon::prelude::*;

use crate::SamplerError;

/// Elements per parallel chunk (large enough that the threads' bookkeeping is negligible).
const CHUNK: usize = 1 << 16;

/// Writes `uncond + scale * (cond - uncond)` into `out`, element-wise in `f32` (the reference's
/// operation order). All three slices must have the same length.
pub fn guide(
    uncond: &[f32],
    cond: &[f32],
    scale: f32,
    out: &mut [f32],
) -> Result<(), SamplerError> {
    check_len("conditional logits", uncond.len(), cond.len())?;
    check_len("guided logits", uncond.len(), out.len())?;
    out.par_chunks_mut(CHUNK)
        .zip(uncond.par_chunks(CHUNK).zip(cond.par_chunks(CHUNK)))
        .for_each(|(o, (u, c))| {
            for ((o, &u), &c) in o.iter_mut().zip(u).zip(c) {
                *o = u + scale * (c - u);
            }
        });
    Ok(())
}

/// [`guide`] in place: `uncond` becomes the guided logits.
pub fn guide_in_place(uncond: &mut [f32], cond: &[f32], scale: f32) -> Result<(), SamplerError> {
    check_len("conditional logits", uncond.len(), cond.len())?;
    uncond
        .par_chunks_mut(CHUNK)
        .zip(cond.par_chunks(CHUNK))
        .for_each(|(u, c)| {
            for (u, &c) in u.iter_mut().zip(c) {
                *u = *u + scale * (c - *u);
            }
        });
    Ok(())
}

/// Guidance on the transformer's doubled batch: `logits` is `[2B, ...]` with the unconditional
/// half first (the reference's `[negative, positive]` order); returns the guided `[B, ...]`.
pub fn guide_batch_halves(logits: &[f32], scale: f32) -> Result<Vec<f32>, SamplerError> {
    if !logits.len().is_multiple_of(2) {
        return Err(SamplerError::LengthMismatch {
            what: "doubled guidance batch (must split in two equal halves)",
            expected: logits.len() + 1,
            found: logits.len(),
        });
    }
    let (uncond, cond) = logits.split_at(logits.len() / 2);
    let mut out = vec![0f32; uncond.len()];
    guide(uncond, cond, scale, &mut out)?;
    Ok(out)
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), SamplerError> {
    if expected != found {
        return Err(SamplerError::LengthMismatch {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_and_checks_lengths() {
        let mut out = [0f32; 2];
        guide(&[1.0, 2.0], &[3.0, 2.0], 6.0, &mut out).unwrap();
        assert_eq!(out, [13.0, 2.0]);
        let mut u = [1.0f32, 2.0];
        guide_in_place(&mut u, &[3.0, 2.0], 6.0).unwrap();
        assert_eq!(u, out);
        assert_eq!(guide_batch_halves(&[1.0, 2.0, 3.0, 2.0], 6.0).unwrap(), out);
        assert!(guide(&[1.0], &[1.0, 2.0], 1.0, &mut out).is_err());
        assert!(guide_batch_halves(&[1.0, 2.0, 3.0], 1.0).is_err());
    }
}
