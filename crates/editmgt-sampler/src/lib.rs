//! EditMGT's sampler: the MaskGIT-style loop step with region hold.
//!
//! Each step of the edit loop turns the transformer's logits into tokens (reference.md
//! section 7): sample a token for every masked position, keep the source token where the
//! localisation score says the instruction does not apply (region hold), then mask again the
//! least confident predictions, fewer at every step, until the last step returns the prediction.
//!
//! - [`Schedule`]: timesteps `T-1 .. 0`, the [`MaskSchedule`] (cosine, linear) and the
//!   [`Temperature`] ramp;
//! - [`guide`] and friends: classifier-free guidance `u + g (c - u)`;
//! - [`Sampler::step`]: one step over `[B, codebook, H, W]` logits read in place, any batch
//!   and grid, parallel over positions (bit-identical for any thread count), with a reusable
//!   [`Workspace`];
//! - [`NoiseSource`]: where the randomness comes from, with the portable seeded
//!   [`SeededNoise`] and [`ReplayNoise`] for recorded uniforms (see [`noise`] for the contract);
//! - [`SchedulerConfig`]: `scheduler/scheduler_config.json` (mask token id, schedule name).
//!
//! ```
//! use editmgt_sampler::{
//!     Logits, MaskSchedule, Sampler, Schedule, SeededNoise, StepInput, Temperature, Workspace,
//! };
//!
//! let (codebook, h, w, mask) = (8, 4, 4, 8);
//! let sampler = Sampler::new(mask, Schedule::new(MaskSchedule::Cosine, 3, Temperature::default())?);
//! let mut tokens = vec![mask; h * w];
//! let mut noise = SeededNoise::new(42);
//! let mut workspace = Workspace::default();
//! for step in 0..sampler.schedule().num_steps() {
//!     let logits: Vec<f32> = (0..codebook * h * w).map(|i| (i % 7) as f32).collect(); // the model's
//!     let input = StepInput::new(step, Logits::new(&logits, 1, codebook, h, w)?, &tokens);
//!     tokens = sampler.step(&input, &mut noise, &mut workspace)?.prev_sample;
//! }
//! assert!(tokens.iter().all(|&t| t < codebook as u32));
//! # Ok::<(), editmgt_sampler::SamplerError>(())
//! ```
//!
//! Arithmetic follows the reference (PyTorch in `f32`, the sampling sums in `f64`), with
//! portable elementary functions ([`math`]) so that a seed gives the same edit on every
//! platform. Replaying the reference's recorded uniforms reproduces its tokens exactly on the
//! parity fixtures.
//!
//! Where the reference misbehaves outside its usual setting this port does better (see
//! [`Sampler::step_into`]): the region hold works for any batch and any score and token grids
//! (the reference hard-codes batch 1 and 32x32 scores on 64x64 tokens); known tokens can never be
//! masked again, whatever the temperature; a row with at most one masked token is not stuck or
//! corrupted; and bad input (lengths, thresholds, step indices, non-finite logits, reference
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
pub use guidance::{guide, guide_batch_halves, guide_in_place};
pub use noise::{NoiseSource, ReplayNoise, SeededNoise, draws_per_step, gumbel};
pub use schedule::{MaskSchedule, SCALAR_TEMPERATURE_END, Schedule, Temperature, linspace};
pub use step::{
    Logits, MIN_PROBABILITY, RegionHold, Sampler, StepInput, StepOutput, TILE, Workspace,
};
