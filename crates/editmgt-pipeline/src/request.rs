use editmgt_sampler::Temperature;
use image::GrayImage;

/// The negative prompt of the released example, used when a request names none.
pub const DEFAULT_NEGATIVE_PROMPT: &str = "worst quality, low quality, low res, blurry, distortion, watermark, logo, signature, text, jpeg artifacts, signature, sketch, duplicate, ugly, identifying mark";

/// Region hold: keep every token whose localisation score is below `threshold` equal to the
/// source, so only the region the instruction is about changes.
///
/// The score of a token is the transformer's text-to-image attention, averaged over `blocks`,
/// all heads and the text rows (only the rows of the `query` words, when given), rescaled to
/// `[0, 1]` and smoothed (docs/model.md section 6).
#[derive(Debug, Clone, PartialEq)]
pub struct RegionHold {
    /// Tokens scoring below this (in `[0, 1]`) keep their source value; 0 turns holding off
    /// while still computing the maps (see [`EditRequest::record_localisation`]).
    pub threshold: f32,
    /// Transformer blocks whose attention is consolidated (double-stream blocks first, then
    /// single-stream ones). `None`: `28..=36` for the released 42-block model; a model of
    /// another depth must name them.
    pub blocks: Option<Vec<usize>>,
    /// Words of the instruction to localise (their rows of the Gemma tokenisation); `None`
    /// averages all text rows.
    pub query: Option<String>,
}

impl RegionHold {
    /// Holding below `threshold` with the default blocks and all text rows. The released
    /// example suggests `0.01`.
    pub fn new(threshold: f32) -> Self {
        Self {
            threshold,
            blocks: None,
            query: None,
        }
    }

    /// Consolidates these blocks instead of the default ones.
    pub fn blocks(mut self, blocks: impl IntoIterator<Item = usize>) -> Self {
        self.blocks = Some(blocks.into_iter().collect());
        self
    }

    /// Localises only these words of the instruction.
    pub fn query(mut self, words: impl Into<String>) -> Self {
        self.query = Some(words.into());
        self
    }
}

/// What to do to an image: the instruction and the sampling parameters.
///
/// Defaults are those of the released example: 36 steps, guidance 6, reference strength 1.1,
/// temperature `(2, 0)`, the released negative prompt, region hold off, seed 0.
#[derive(Debug, Clone, PartialEq)]
pub struct EditRequest {
    /// The instruction ("make it into Ghibli style").
    pub instruction: String,
    /// The negative prompt; `None` uses [`DEFAULT_NEGATIVE_PROMPT`].
    pub negative_prompt: Option<String>,
    /// Sampling steps (>= 1).
    pub steps: usize,
    /// Classifier-free guidance scale `g` in `u + g (c - u)` (>= 0; at most 1 disables guidance
    /// and the negative prompt, as in the reference).
    pub guidance: f32,
    /// How strongly the source tokens are attended to (> 0; 1 is neutral).
    pub reference_strength: f32,
    /// The Gumbel temperature schedule.
    pub temperature: Temperature,
    /// Seed of the default noise source; the same seed gives the same edit on every platform.
    pub seed: u64,
    /// Region hold, off when `None`.
    pub region_hold: Option<RegionHold>,
    /// Optional mask (white = repaint): only masked token cells are regenerated. Any size; it
    /// is resized to the token grid.
    pub mask: Option<GrayImage>,
    /// Return the localisation map of every step in [`EditOutput::localisation`](crate::EditOutput).
    /// Needs [`EditRequest::region_hold`] (a threshold of 0 computes maps without holding).
    pub record_localisation: bool,
    /// Wait for the device at every stage boundary, so that
    /// [`EditOutput::timings`](crate::EditOutput) holds each stage's time on a GPU too (off by
    /// default: waiting stalls the device's queue; the timings are then the host's queueing
    /// times on a GPU). Reads nothing back. In a batch, the device is waited for when any item
    /// asks.
    pub timings: bool,
}

impl EditRequest {
    /// A request with the released defaults.
    pub fn new(instruction: impl Into<String>) -> Self {
        Self {
            instruction: instruction.into(),
            negative_prompt: None,
            steps: 36,
            guidance: 6.0,
            reference_strength: 1.1,
            temperature: Temperature::Range(2.0, 0.0),
            seed: 0,
            region_hold: None,
            mask: None,
            record_localisation: false,
            timings: false,
        }
    }

    /// Sets the negative prompt.
    pub fn negative_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.negative_prompt = Some(prompt.into());
        self
    }

    /// Sets the number of steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Sets the guidance scale.
    pub fn guidance(mut self, guidance: f32) -> Self {
        self.guidance = guidance;
        self
    }

    /// Sets the reference strength.
    pub fn reference_strength(mut self, strength: f32) -> Self {
        self.reference_strength = strength;
        self
    }

    /// Sets the temperature schedule.
    pub fn temperature(mut self, temperature: impl Into<Temperature>) -> Self {
        self.temperature = temperature.into();
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Turns region hold on.
    pub fn region_hold(mut self, hold: RegionHold) -> Self {
        self.region_hold = Some(hold);
        self
    }

    /// Restricts the edit to a mask (white = repaint).
    pub fn mask(mut self, mask: GrayImage) -> Self {
        self.mask = Some(mask);
        self
    }

    /// Asks for the localisation map of every step.
    pub fn record_localisation(mut self, record: bool) -> Self {
        self.record_localisation = record;
        self
    }

    /// Asks for stage timings measured with the device waited for at every stage boundary
    /// ([`EditRequest::timings`]).
    pub fn timings(mut self, timings: bool) -> Self {
        self.timings = timings;
        self
    }

    pub(crate) fn negative(&self) -> &str {
        self.negative_prompt
            .as_deref()
            .unwrap_or(DEFAULT_NEGATIVE_PROMPT)
    }
}

/// Text-to-image generation: the same loop without a source image.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt; `None` uses [`DEFAULT_NEGATIVE_PROMPT`].
    pub negative_prompt: Option<String>,
    /// Sampling steps (>= 1).
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f32,
    /// The Gumbel temperature schedule.
    pub temperature: Temperature,
    /// Seed of the default noise source.
    pub seed: u64,
    /// Wait for the device at every stage boundary, so that
    /// [`GenerateOutput::timings`](crate::GenerateOutput) holds each stage's time on a GPU too
    /// (off by default; see [`EditRequest::timings`]).
    pub timings: bool,
}

impl GenerateRequest {
    /// A request with the released defaults (36 steps, guidance 6, temperature `(2, 0)`).
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            steps: 36,
            guidance: 6.0,
            temperature: Temperature::Range(2.0, 0.0),
            seed: 0,
            timings: false,
        }
    }

    /// Sets the negative prompt.
    pub fn negative_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.negative_prompt = Some(prompt.into());
        self
    }

    /// Sets the number of steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Sets the guidance scale.
    pub fn guidance(mut self, guidance: f32) -> Self {
        self.guidance = guidance;
        self
    }

    /// Sets the temperature schedule.
    pub fn temperature(mut self, temperature: impl Into<Temperature>) -> Self {
        self.temperature = temperature.into();
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Asks for stage timings measured with the device waited for at every stage boundary
    /// ([`GenerateRequest::timings`]).
    pub fn timings(mut self, timings: bool) -> Self {
        self.timings = timings;
        self
    }
}
