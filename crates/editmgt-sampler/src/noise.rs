//! Where the sampler's randomness comes from.
//!
//! # The noise contract (docs/model.md section 7)
//!
//! Every random decision of a step is driven by uniforms in `[0, 1)` that the step asks its
//! [`NoiseSource`] for, in this order:
//!
//! 1. `B * L` uniforms for the sampling, row-major (batch row, then position): the token at a
//!    position is the first codebook index `k` with `cumsum(p)[k] > u * sum(p)`, sums in `f64`.
//! 2. Except at the last step, `B * L` more uniforms (same order) for the Gumbel noise of the
//!    confidence, `g = -ln(max(-ln(max(u, 1e-20)), 1e-20))`.
//!
//! Uniforms are drawn for every position, masked or not, so the stream does not depend on the
//! tokens. [`draws_per_step`] gives the count. A recording of the reference's uniforms replays
//! through [`ReplayNoise`]; [`SeededNoise`] is the portable seeded default.

use burn::tensor::{Device, Tensor, TensorData};
use editmgt_core::rng::SplitMix64;

use crate::NoiseError;
use crate::math::ln_f32;

/// A source of uniforms in `[0, 1)` for the sampler (see the module docs for the order in
/// which a step draws them).
pub trait NoiseSource {
    /// Fills `out` with the next `out.len()` uniforms, in draw order.
    fn fill_uniform(&mut self, out: &mut [f32]) -> Result<(), NoiseError>;
}

impl<T: NoiseSource + ?Sized> NoiseSource for &mut T {
    fn fill_uniform(&mut self, out: &mut [f32]) -> Result<(), NoiseError> {
        (**self).fill_uniform(out)
    }
}

impl<T: NoiseSource + ?Sized> NoiseSource for Box<T> {
    fn fill_uniform(&mut self, out: &mut [f32]) -> Result<(), NoiseError> {
        (**self).fill_uniform(out)
    }
}

/// How many uniforms one step of a batch of `batch` rows of `positions` tokens draws:
/// `B * L` for the sampling, plus `B * L` for the Gumbel noise unless it is the last step.
pub fn draws_per_step(batch: usize, positions: usize, last_step: bool) -> usize {
    let n = batch * positions;
    if last_step { n } else { 2 * n }
}

/// The default seeded source: SplitMix64, the same stream on every platform.
///
/// The generator (Steele, Lea and Flood's SplitMix64, as in Java's `SplittableRandom`) keeps a
/// 64-bit state `s`; each draw does
///
/// ```text
/// s = s + 0x9E3779B97F4A7C15              (wrapping)
/// z = (s ^ (s >> 30)) * 0xBF58476D1CE4E5B9 (wrapping)
/// z = (z ^ (z >> 27)) * 0x94D049BB133111EB (wrapping)
/// z = z ^ (z >> 31)
/// ```
///
/// and a uniform is the top 24 bits of `z` times `2^-24`, an `f32` in `[0, 1)` that is exact
/// (no rounding). The initial state is the seed. Only integer arithmetic is involved, so the same
/// seed gives the same uniforms, hence (with the sampler's portable arithmetic) the same edit, on
/// every platform and thread count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededNoise {
    rng: SplitMix64,
}

impl SeededNoise {
    /// A generator whose initial state is `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
        }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// The next uniform: `(next_u64() >> 40) * 2^-24`, in `[0, 1)`.
    pub fn next_uniform(&mut self) -> f32 {
        self.rng.next_f32()
    }
}

impl NoiseSource for SeededNoise {
    fn fill_uniform(&mut self, out: &mut [f32]) -> Result<(), NoiseError> {
        for u in out {
            *u = self.next_uniform();
        }
        Ok(())
    }
}

/// Replays recorded uniforms in order (for example the reference's draws stored in the parity
/// fixtures: a step's sampling uniforms, then its Gumbel uniforms).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayNoise {
    values: Vec<f32>,
    cursor: usize,
}

impl ReplayNoise {
    /// Replays `values` in order. Every value must be in `[0, 1]`.
    pub fn new(values: Vec<f32>) -> Result<Self, NoiseError> {
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|&(_, v)| !(0.0..=1.0).contains(v))
        {
            return Err(NoiseError::OutOfRange { index, value });
        }
        Ok(Self { values, cursor: 0 })
    }

    /// Replays several recorded draws one after the other.
    pub fn from_draws<I, D>(draws: I) -> Result<Self, NoiseError>
    where
        I: IntoIterator<Item = D>,
        D: AsRef<[f32]>,
    {
        let mut values = Vec::new();
        for d in draws {
            values.extend_from_slice(d.as_ref());
        }
        Self::new(values)
    }

    /// How many recorded values have not been replayed yet.
    pub fn remaining(&self) -> usize {
        self.values.len() - self.cursor
    }
}

impl NoiseSource for ReplayNoise {
    fn fill_uniform(&mut self, out: &mut [f32]) -> Result<(), NoiseError> {
        if out.len() > self.remaining() {
            return Err(NoiseError::Exhausted {
                requested: out.len(),
                remaining: self.remaining(),
            });
        }
        out.copy_from_slice(&self.values[self.cursor..self.cursor + out.len()]);
        self.cursor += out.len();
        Ok(())
    }
}

/// One step's noise on the device: the sampling uniforms `[B, L]` and, except at the last
/// step, the Gumbel noise `[B, L]` of the second set of uniforms.
///
/// The uniforms are drawn on the host from [`NoiseSource`]s, so a seed gives the same stream on
/// every platform and backend, and the Gumbel transform is applied there with the portable
/// [`ln_f32`]; both are uploaded together (`2 B L` floats, `B L` at the last step). This is the
/// only data that goes to the device per step.
#[derive(Debug, Clone)]
pub struct StepNoise {
    /// The sampling uniforms `[B, L]` in `[0, 1]`.
    pub sampling: Tensor<2>,
    /// The Gumbel noise `[B, L]` (`None` at the last step).
    pub gumbel: Option<Tensor<2>>,
}

impl StepNoise {
    /// Draws one step for `batch` rows of `positions` from one source, in contract order
    /// (`B L` sampling uniforms, then `B L` Gumbel uniforms unless `last_step`).
    pub fn draw<N: NoiseSource + ?Sized>(
        source: &mut N,
        batch: usize,
        positions: usize,
        last_step: bool,
        device: &Device,
    ) -> Result<Self, NoiseError> {
        let mut values = vec![0f32; draws_per_step(batch, positions, last_step)];
        source.fill_uniform(&mut values)?;
        Ok(Self::upload(values, batch, positions, last_step, device))
    }

    /// Draws one step with one source per batch row: row `b` takes its `L` sampling uniforms,
    /// then its `L` Gumbel uniforms, from `sources[b]` (so each row's stream equals a batch of
    /// one drawn from that source: editing a batch gives the same result as editing its items
    /// one by one).
    pub fn draw_rows<N: NoiseSource + ?Sized>(
        sources: &mut [Box<N>],
        positions: usize,
        last_step: bool,
        device: &Device,
    ) -> Result<Self, NoiseError> {
        let batch = sources.len();
        let n = batch * positions;
        let mut values = vec![0f32; draws_per_step(batch, positions, last_step)];
        for (b, source) in sources.iter_mut().enumerate() {
            source.fill_uniform(&mut values[b * positions..(b + 1) * positions])?;
            if !last_step {
                source.fill_uniform(&mut values[n + b * positions..n + (b + 1) * positions])?;
            }
        }
        Ok(Self::upload(values, batch, positions, last_step, device))
    }

    fn upload(
        mut values: Vec<f32>,
        batch: usize,
        positions: usize,
        last_step: bool,
        device: &Device,
    ) -> Self {
        let n = batch * positions;
        for u in &mut values[n..] {
            *u = gumbel(*u);
        }
        let sets = if last_step { 1 } else { 2 };
        let all = Tensor::<3>::from_data(TensorData::new(values, [sets, batch, positions]), device);
        let row = |k: usize| all.clone().slice(k..k + 1).reshape([batch, positions]);
        Self {
            sampling: row(0),
            gumbel: (!last_step).then(|| row(1)),
        }
    }
}

/// The Gumbel noise of a uniform, as the reference computes it in `f32`:
/// `-ln(max(-ln(max(u, 1e-20)), 1e-20))` (with the portable [`ln_f32`]).
pub fn gumbel(u: f32) -> f32 {
    -ln_f32((-ln_f32(u.max(1e-20))).max(1e-20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_golden_values() {
        let mut n = SeededNoise::new(0);
        assert_eq!(n.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(n.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut n = SeededNoise::new(0);
        let mut u = [0f32; 3];
        n.fill_uniform(&mut u).unwrap();
        assert_eq!(u, [0.883_310_8, 0.431_527_97, 0.026_433_766]);
    }

    #[test]
    fn replay_in_order_then_exhausted() {
        let mut r = ReplayNoise::from_draws([vec![0.1, 0.2], vec![0.3]]).unwrap();
        let mut a = [0f32; 2];
        r.fill_uniform(&mut a).unwrap();
        assert_eq!(a, [0.1, 0.2]);
        assert_eq!(r.remaining(), 1);
        assert!(matches!(
            r.fill_uniform(&mut a),
            Err(NoiseError::Exhausted {
                requested: 2,
                remaining: 1
            })
        ));
        assert!(ReplayNoise::new(vec![0.5, 1.5]).is_err());
        assert!(ReplayNoise::new(vec![f32::NAN]).is_err());
    }

    #[test]
    fn gumbel_is_finite_at_the_ends() {
        assert!(gumbel(0.0).is_finite());
        assert!(gumbel(1.0).is_finite());
        assert!(gumbel(0.5) > 0.3 && gumbel(0.5) < 0.4);
    }
}
