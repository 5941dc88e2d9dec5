//! The typed error of this crate.

use editmgt_core::LoadError;

/// Why the sampler refused its input. No function of this crate panics on bad input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// A schedule with zero steps was asked for.
    #[error("the number of steps must be at least 1")]
    ZeroSteps,
    /// A step index is not below the number of steps.
    #[error("step index {index} is out of range for {steps} steps")]
    StepOutOfRange {
        /// The step index given.
        index: usize,
        /// The number of steps of the schedule.
        steps: usize,
    },
    /// A masking schedule name other than `cosine` or `linear`.
    #[error("unknown masking schedule `{0}` (expected `cosine` or `linear`)")]
    UnknownSchedule(String),
    /// A slice does not have the length its stated dimensions imply.
    #[error("{what}: {found} values, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: &'static str,
        /// The length the dimensions imply.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A tensor does not have the shape the step's other inputs imply.
    #[error("{what}: shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A dimension is zero where it must not be.
    #[error("{0} must not be zero")]
    ZeroDimension(&'static str),
    /// A parameter is outside its valid range.
    #[error("{name} = {value} is invalid: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A reference token that must be looked up in the codebook is not a codebook index.
    #[error(
        "reference token {token} at batch {batch}, position {position} is not below the codebook size {codebook}"
    )]
    TokenOutOfRange {
        /// The token.
        token: i64,
        /// The batch row.
        batch: usize,
        /// The position in the row.
        position: usize,
        /// The codebook size.
        codebook: usize,
    },
    /// The logits of a position give no valid distribution (NaN, or +inf).
    #[error("the logits at batch {batch}, position {position} are not finite")]
    InvalidLogits {
        /// The batch row.
        batch: usize,
        /// The position in the row.
        position: usize,
    },
    /// Reading the step's fault report back from the device failed.
    #[error("reading the sampler's fault report back from the device failed: {0}")]
    Readback(String),
    /// The noise source failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// Reading the scheduler configuration failed.
    #[error(transparent)]
    Config(#[from] LoadError),
}

/// Why a [`NoiseSource`](crate::NoiseSource) could not deliver uniforms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// A replay source ran out of recorded values.
    #[error("the replayed noise is exhausted: {requested} values asked for, {remaining} left")]
    Exhausted {
        /// How many values were asked for.
        requested: usize,
        /// How many were left.
        remaining: usize,
    },
    /// A recorded value is not a uniform in `[0, 1]`.
    #[error("recorded uniform #{index} = {value} is not in [0, 1]")]
    OutOfRange {
        /// Its index in the recording.
        index: usize,
        /// The value.
        value: f32,
    },
}
