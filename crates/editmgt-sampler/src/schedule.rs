//! The step schedule: timesteps, temperatures and how many tokens stay masked after each step.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::SamplerError;
use crate::math::cos_f32;

/// How the fraction of still-masked tokens falls over the steps (`masking_schedule` in
/// `scheduler_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSchedule {
    /// `cos(r * pi / 2)` with `r = (i + 1) / T` (the released model).
    Cosine,
    /// `1 - r`.
    Linear,
}

impl MaskSchedule {
    /// The configuration name (`"cosine"` or `"linear"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::Linear => "linear",
        }
    }

    /// The fraction of tokens left masked after step `step_index` of `num_steps`, before the
    /// starting ratio is applied. Computed in `f32` as the reference does: `r = (i + 1) / T`,
    /// then `cos(r * pi / 2)` (pi rounded to `f32`) or `1 - r`.
    ///
    /// `num_steps` must be at least 1 (a zero count yields NaN for the cosine schedule).
    pub fn mask_ratio(self, step_index: usize, num_steps: usize) -> f32 {
        let ratio = (step_index + 1) as f32 / num_steps as f32;
        match self {
            Self::Cosine => cos_f32(ratio * std::f32::consts::PI / 2.0),
            Self::Linear => 1.0 - ratio,
        }
    }
}

impl FromStr for MaskSchedule {
    type Err = SamplerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            other => Err(SamplerError::UnknownSchedule(other.to_string())),
        }
    }
}

impl std::fmt::Display for MaskSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The Gumbel temperature over the steps.
///
/// A pair `(t0, t1)` goes linearly from `t0` to `t1`; a scalar `t` goes linearly from `t` to
/// `0.01` (the reference's `torch.linspace` rules). The released pipeline uses `(2, 0)`, the
/// [`Default`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Temperature {
    /// Linear from the first value to the second.
    Range(f32, f32),
    /// Linear from the value to 0.01.
    Scalar(f32),
}

impl Default for Temperature {
    fn default() -> Self {
        Self::Range(2.0, 0.0)
    }
}

impl From<(f32, f32)> for Temperature {
    fn from((t0, t1): (f32, f32)) -> Self {
        Self::Range(t0, t1)
    }
}

impl From<f32> for Temperature {
    fn from(t: f32) -> Self {
        Self::Scalar(t)
    }
}

/// The end of the ramp of a scalar temperature.
pub const SCALAR_TEMPERATURE_END: f32 = 0.01;

impl Temperature {
    /// The per-step temperatures for `num_steps` steps (step index order).
    pub fn schedule(self, num_steps: usize) -> Result<Vec<f32>, SamplerError> {
        if num_steps == 0 {
            return Err(SamplerError::ZeroSteps);
        }
        let (start, end) = match self {
            Self::Range(t0, t1) => (t0, t1),
            Self::Scalar(t) => (t, SCALAR_TEMPERATURE_END),
        };
        for (name, v) in [("temperature start", start), ("temperature end", end)] {
            if !v.is_finite() {
                return Err(SamplerError::InvalidParameter {
                    name,
                    value: v.to_string(),
                    reason: "must be finite",
                });
            }
        }
        Ok(linspace(start, end, num_steps))
    }
}

/// `torch.linspace(start, end, steps)` in `f32` (PyTorch's CPU rule: `start + step * i` for the
/// first half, `end - step * (steps - 1 - i)` for the second, `step = (end - start) / (steps - 1)`).
pub fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        start + step * i as f32
                    } else {
                        end - step * (steps - i - 1) as f32
                    }
                })
                .collect()
        }
    }
}

/// `T` steps: timesteps `T-1 .. 0`, a temperature per step and the masking schedule.
///
/// Steps are addressed by their index `i` in `0..T` (the loop counter); the transformer's
/// timestep of step `i` is `T - 1 - i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    masking: MaskSchedule,
    temperatures: Vec<f32>,
}

impl Schedule {
    /// A schedule of `num_steps >= 1` steps.
    pub fn new(
        masking: MaskSchedule,
        num_steps: usize,
        temperature: Temperature,
    ) -> Result<Self, SamplerError> {
        Ok(Self {
            masking,
            temperatures: temperature.schedule(num_steps)?,
        })
    }

    /// The masking schedule.
    pub fn masking(&self) -> MaskSchedule {
        self.masking
    }

    /// The number of steps `T`.
    pub fn num_steps(&self) -> usize {
        self.temperatures.len()
    }

    /// The timesteps in loop order: `T-1, T-2, ..., 0`.
    pub fn timesteps(&self) -> impl DoubleEndedIterator<Item = usize> + ExactSizeIterator {
        (0..self.num_steps()).rev()
    }

    /// The timestep of step `step_index` (`T - 1 - step_index`).
    pub fn timestep(&self, step_index: usize) -> Result<usize, SamplerError> {
        self.check(step_index)?;
        Ok(self.num_steps() - 1 - step_index)
    }

    /// The step index of `timestep` (`T - 1 - timestep`).
    pub fn step_index(&self, timestep: usize) -> Result<usize, SamplerError> {
        self.check(timestep)?;
        Ok(self.num_steps() - 1 - timestep)
    }

    /// Whether `step_index` is the last step (the one that returns the prediction).
    pub fn is_last(&self, step_index: usize) -> bool {
        step_index + 1 == self.num_steps()
    }

    /// The per-step temperatures.
    pub fn temperatures(&self) -> &[f32] {
        &self.temperatures
    }

    /// The Gumbel temperature of step `step_index`.
    pub fn temperature(&self, step_index: usize) -> Result<f32, SamplerError> {
        self.check(step_index)?;
        Ok(self.temperatures[step_index])
    }

    /// The fraction of tokens left masked after `step_index`, before the starting ratio.
    pub fn mask_ratio(&self, step_index: usize) -> Result<f32, SamplerError> {
        self.check(step_index)?;
        Ok(self.masking.mask_ratio(step_index, self.num_steps()))
    }

    /// `floor(L * starting_mask_ratio * mask_ratio)` in `f32`, as the reference computes it: the
    /// number of tokens to leave masked after `step_index` before it is clamped by the number of
    /// masked tokens (see [`Sampler::step`](crate::Sampler::step)).
    pub fn mask_len(
        &self,
        seq_len: usize,
        step_index: usize,
        starting_mask_ratio: f32,
    ) -> Result<usize, SamplerError> {
        check_starting_ratio(starting_mask_ratio)?;
        let ratio = starting_mask_ratio * self.mask_ratio(step_index)?;
        Ok((seq_len as f32 * ratio).floor().max(0.0) as usize)
    }

    fn check(&self, index: usize) -> Result<(), SamplerError> {
        if index >= self.num_steps() {
            return Err(SamplerError::StepOutOfRange {
                index,
                steps: self.num_steps(),
            });
        }
        Ok(())
    }
}

pub(crate) fn check_starting_ratio(ratio: f32) -> Result<(), SamplerError> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(SamplerError::InvalidParameter {
            name: "starting_mask_ratio",
            value: ratio.to_string(),
            reason: "must be in [0, 1]",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_run_down_to_zero() {
        let s = Schedule::new(MaskSchedule::Cosine, 4, Temperature::default()).unwrap();
        assert_eq!(s.timesteps().collect::<Vec<_>>(), vec![3, 2, 1, 0]);
        assert_eq!(s.step_index(3).unwrap(), 0);
        assert_eq!(s.timestep(3).unwrap(), 0);
        assert!(s.is_last(3));
        assert!(s.step_index(4).is_err());
    }

    #[test]
    fn temperatures_follow_linspace() {
        let t = Temperature::Range(2.0, 0.0).schedule(5).unwrap();
        assert_eq!(t, vec![2.0, 1.5, 1.0, 0.5, 0.0]);
        let t = Temperature::Scalar(1.0).schedule(3).unwrap();
        assert_eq!(t[0], 1.0);
        assert_eq!(t[2], 0.01);
        assert_eq!(Temperature::Scalar(3.0).schedule(1).unwrap(), vec![3.0]);
        assert!(matches!(
            Temperature::default().schedule(0),
            Err(SamplerError::ZeroSteps)
        ));
        assert!(Temperature::Scalar(f32::NAN).schedule(3).is_err());
    }

    #[test]
    fn mask_ratios() {
        assert_eq!(MaskSchedule::Linear.mask_ratio(1, 4), 0.5);
        assert!(MaskSchedule::Cosine.mask_ratio(3, 4).abs() < 1e-7);
        assert!((MaskSchedule::Cosine.mask_ratio(0, 2) - 0.5f32.sqrt()).abs() < 1e-7);
        let s = Schedule::new(MaskSchedule::Linear, 4, Temperature::default()).unwrap();
        assert_eq!(s.mask_len(4096, 1, 1.0).unwrap(), 2048);
        assert_eq!(s.mask_len(4096, 1, 0.5).unwrap(), 1024);
        assert!(s.mask_len(4096, 1, 1.5).is_err());
        assert_eq!(
            "linear".parse::<MaskSchedule>().unwrap(),
            MaskSchedule::Linear
        );
        assert!("exp".parse::<MaskSchedule>().is_err());
    }
}
