//! EditMGT's sampler: the MaskGIT-style loop step with region hold, on the device.
//!
//! Each step of the edit loop turns the transformer's logits into tokens (docs/model.md
//! section 7): sample a token for every masked position, keep the source token where the
//! localisation score says the instruction does not apply (region hold), then mask again the
//! least confident predictions, fewer at every step, until the last step returns the prediction.
//!
//! Everything runs on Burn tensors on the logits' device (CPU, wgpu or CUDA): the logits, the
//! tokens, the scores and the reference tokens never leave it, from the first step to the VQ
//! decoder. Only the noise goes up, once per step.
//!
//! - [`Schedule`]: timesteps `T-1 .. 0`, the [`MaskSchedule`] (cosine, linear) and the
//!   [`Temperature`] ramp;
//! - [`guide`] and [`guide_batch_halves`]: classifier-free guidance `u + g (c - u)`;
//! - [`Sampler::step`]: one step over `[B, codebook, H, W]` logits, any batch and grid, with
//!   the input problems it finds reported through [`Faults`] that stay on the device until
//!   checked;
//! - [`NoiseSource`]: where the randomness comes from, with the portable seeded
//!   [`SeededNoise`] and [`ReplayNoise`] for recorded uniforms (see [`noise`] for the contract),
//!   and [`StepNoise`], one step's noise uploaded;
//! - [`SchedulerConfig`]: `scheduler/scheduler_config.json` (mask token id, schedule name).
//!
//! ```
//! use burn::tensor::{Device, Int, Tensor, TensorData};
//! use editmgt_sampler::{MaskSchedule, Sampler, Schedule, SeededNoise, StepInput, StepNoise, Temperature};
//!
//! let device = Device::flex();
//! let (codebook, h, w, mask) = (8, 4, 4, 8);
//! let sampler = Sampler::new(mask, Schedule::new(MaskSchedule::Cosine, 3, Temperature::default())?);
//! let mut tokens = Tensor::<2, Int>::full([1, h * w], mask as i64, &device);
//! let mut noise = SeededNoise::new(42);
//! for step in 0..sampler.schedule().num_steps() {
//!     let values: Vec<f32> = (0..codebook * h * w).map(|i| (i % 7) as f32).collect(); // the model's
//!     let logits = Tensor::<4>::from_data(TensorData::new(values, [1, codebook, h, w]), &device);
//!     let last = sampler.schedule().is_last(step);
//!     let step_noise = StepNoise::draw(&mut noise, 1, h * w, last, &device)?;
//!     let out = sampler.step(StepInput::new(step, logits, tokens, step_noise))?;
//!     out.faults.check()?; // reads three integers back; a loop can merge and check once
//!     tokens = out.prev_sample;
//! }
//! let tokens: Vec<i64> = tokens.into_data().convert::<i64>().try_to_vec().unwrap();
//! assert!(tokens.iter().all(|&t| t < codebook as i64));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Arithmetic follows the reference (PyTorch in `f32`), except that the sampling's cumulative
//! sums are `f32` on the device where the reference sums in `f64`: replaying the reference's
//! recorded uniforms reproduces its tokens on the parity fixtures up to rare near-ties. The
//! noise itself is portable ([`math`]), so a seed gives the same edit on every platform up to
//! such float differences between backends.
//!
//! Where the reference misbehaves outside its usual setting this port does better (see
//! [`Sampler::step`]): the region hold works for any batch and any grid (the reference
//! hard-codes batch 1 and 32x32 scores on 64x64 tokens); known tokens can never be masked
//! again, whatever the temperature; a row with at most one masked token is not stuck or
//! corrupted; and bad input (shapes, thresholds, step indices, non-finite logits, reference
//! tokens outside the codebook, exhausted noise) is a typed [`SamplerError`], never a panic.

mod config;
mod error;
mod guidance;
pub mod math;
pub mod noise;
mod schedule;
mod step;

pub use config::SchedulerConfig;
pub use error::{NoiseError, SamplerError};
pub use guidance::{guide, guide_batch_halves};
pub use noise::{NoiseSource, ReplayNoise, SeededNoise, StepNoise, draws_per_step, gumbel};
pub use schedule::{MaskSchedule, SCALAR_TEMPERATURE_END, Schedule, Temperature, linspace};
pub use step::{
    DEFAULT_BLOCK_ELEMENTS, Faults, MIN_PROBABILITY, RegionHold, Sampler, StartingRatio, StepInput,
    StepOutput,
};
