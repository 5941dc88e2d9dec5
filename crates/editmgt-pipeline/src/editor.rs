//! The [`Editor`]: a loaded model and the edit loop.

use std::path::{Path, PathBuf};

use std::cell::Cell;
use std::time::{Duration, Instant};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use editmgt_attention::{AdaptiveSmoothing, Localizer, ScoreMap, TextRows};
use editmgt_core::FloatType;
use editmgt_core::config::component_folder;
use editmgt_mgt::{CaptureRequest, MgtInput, MgtTransformer};
use editmgt_sampler::{
    Faults, NoiseSource, RegionHold as HoldInput, Sampler, SchedulerConfig, SeededNoise,
    StartingRatio, StepInput, StepNoise, Temperature,
};
use editmgt_text::{TextEmbeddings, TextEncoder, TextTokenizers};
use editmgt_vq::{VqModel, imaging};
use image::{GrayImage, RgbImage};

use crate::EditError;
use crate::mask::mask_grid;
use crate::request::{EditRequest, GenerateRequest};
use crate::timings::{LoadTimings, Timings};

/// When the text encoders (CLIP and Gemma-2, ~11 GB in f32 for the released model) are in
/// memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoders {
    /// Loaded with the editor and kept: fastest for many edits.
    #[default]
    Keep,
    /// Loaded (memory-mapped) at every edit and dropped once the prompts are encoded, one
    /// encoder at a time: the lowest peak memory, at the cost of reloading.
    LoadPerCall,
}

/// How an [`Editor`] holds its model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditorOptions {
    /// The float type of the transformer and text encoders (`f32` by default; `f16`/`bf16`
    /// where the device supports them). The VQ model stays in f32 when its configuration asks
    /// for upcasting (`force_upcast`, as released).
    pub float: FloatType,
    /// When the text encoders are in memory.
    pub text_encoders: TextEncoders,
    /// The square resolution images are edited at (1024 for the released model; a multiple of
    /// twice the VQ downsampling factor). Inputs of other sizes are resized to it and the result
    /// back to the input's size.
    pub resolution: u32,
    /// A LoRA adapter to load into the transformer (`None`: the weights as they are).
    pub lora: Option<crate::LoraOptions>,
}

impl Default for EditorOptions {
    fn default() -> Self {
        Self {
            float: FloatType::F32,
            text_encoders: TextEncoders::Keep,
            resolution: 1024,
            lora: None,
        }
    }
}

/// Whether the edit goes on after a progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop; the edit returns [`EditError::Cancelled`].
    Cancel,
}

/// What the progress callback sees after every step.
///
/// The tokens and scores stay on the device; [`StepEvent::tokens`] and [`StepEvent::scores`]
/// read them back when called (and count the bytes in the edit's [`Readback`]), so a callback
/// that only reports progress costs no transfer.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Steps completed (1 after the first step).
    pub step: usize,
    /// Steps requested.
    pub total: usize,
    tokens: &'a Tensor<2, Int>,
    scores: Option<&'a ScoreMap>,
    readback: &'a Cell<u64>,
}

impl StepEvent<'_> {
    /// The token grid of every batch item after this step (row-major, mask tokens where still
    /// masked), read back from the device.
    pub fn tokens(&self) -> Result<Vec<Vec<u32>>, EditError> {
        let [n, cells] = self.tokens.dims();
        let flat = read_ints(self.tokens.clone().reshape([n * cells]), self.readback)?;
        Ok(flat
            .chunks_exact(cells.max(1))
            .map(|row| row.iter().map(|&t| t as u32).collect())
            .collect())
    }

    /// The localisation scores of every batch item at this step, on the attention grid
    /// (before upsampling), when region hold is on: read back, one row-major grid per item.
    pub fn scores(&self) -> Result<Option<Vec<Vec<f32>>>, EditError> {
        let Some(map) = self.scores else {
            return Ok(None);
        };
        let values = map.to_vec()?;
        self.readback
            .set(self.readback.get() + 4 * values.len() as u64);
        let per_item = map.height() * map.width();
        Ok(Some(
            values
                .chunks_exact(per_item.max(1))
                .map(<[f32]>::to_vec)
                .collect(),
        ))
    }

    /// The same scores as a device-resident [`ScoreMap`] `[B, h, w]`, without reading them
    /// (what you read from it yourself is not counted).
    pub fn score_map(&self) -> Option<&ScoreMap> {
        self.scores
    }
}

/// Bytes an edit read back from the device to the host, by purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readback {
    /// Inside the sampling loop: only what a progress callback asked for ([`StepEvent`]).
    pub in_loop: u64,
    /// After the loop: the final tokens of every item, with the sampler's fault report
    /// (three integers).
    pub tokens: u64,
    /// The decoded images (`f32` pixels).
    pub images: u64,
}

impl Readback {
    /// All bytes read back.
    pub fn total(&self) -> u64 {
        self.in_loop + self.tokens + self.images
    }
}

/// Optional hooks into an edit: a progress callback (which can cancel), replacement noise
/// sources, and teacher forcing.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every step; returning [`Flow::Cancel`] stops the edit.
    pub progress: Option<&'a mut dyn FnMut(&StepEvent<'_>) -> Flow>,
    /// One noise source per batch item, replacing the seeded default (e.g. a
    /// [`ReplayNoise`](editmgt_sampler::ReplayNoise) of recorded uniforms).
    pub noise: Option<Vec<Box<dyn NoiseSource + 'a>>>,
    /// Teacher forcing, for parity tests and debugging: called after every step (and after
    /// `progress`) with the step's number (1-based, as [`StepEvent::step`]). Tokens it returns
    /// (every batch item's grid, item after item, row-major; the mask token allowed) replace
    /// the step's output as the next step's input, so each step can be compared with a
    /// reference from the same state. Costs one upload per forced step; nothing when unset.
    pub force_tokens: Option<&'a mut dyn FnMut(usize) -> Option<Vec<u32>>>,
}

impl<'a> Hooks<'a> {
    /// Hooks with a progress callback.
    pub fn progress(callback: &'a mut dyn FnMut(&StepEvent<'_>) -> Flow) -> Self {
        Self {
            progress: Some(callback),
            noise: None,
            force_tokens: None,
        }
    }

    /// Replaces the seeded noise with these sources (one per batch item).
    pub fn with_noise(mut self, noise: Vec<Box<dyn NoiseSource + 'a>>) -> Self {
        self.noise = Some(noise);
        self
    }

    /// Adds teacher forcing (see [`Hooks::force_tokens`]).
    pub fn with_forced_tokens(
        mut self,
        force: &'a mut dyn FnMut(usize) -> Option<Vec<u32>>,
    ) -> Self {
        self.force_tokens = Some(force);
        self
    }
}

/// The result of an edit.
#[derive(Debug, Clone)]
pub struct EditOutput {
    /// The edited image, at the input's size.
    pub image: RgbImage,
    /// The final token grid (row-major `grid.0 x grid.1`).
    pub tokens: Vec<u32>,
    /// The token grid's `(height, width)`.
    pub grid: (usize, usize),
    /// The localisation map of every step on the attention grid (batch 1, on the device), when
    /// [`EditRequest::record_localisation`] asked for it.
    pub localisation: Vec<ScoreMap>,
    /// What the edit read back from the device (for a batch: the whole batch's).
    pub readback: Readback,
    /// How long the edit's stages took (for a batch: the whole batch's). On a GPU these are
    /// the host's queueing times unless [`EditRequest::timings`] asked for them.
    pub timings: Timings,
}

/// The result of text-to-image generation.
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// The generated image (resolution x resolution).
    pub image: RgbImage,
    /// The final token grid (row-major `grid.0 x grid.1`).
    pub tokens: Vec<u32>,
    /// The token grid's `(height, width)`.
    pub grid: (usize, usize),
    /// What the generation read back from the device.
    pub readback: Readback,
    /// How long the generation's stages took. On a GPU these are the host's queueing times
    /// unless [`GenerateRequest::timings`] asked for them.
    pub timings: Timings,
}

/// A loaded EditMGT model on one device.
///
/// Loading maps the weight files and holds every component once; [`Editor::edit`] and friends
/// take `&self`, so one editor serves many edits.
#[derive(Debug)]
pub struct Editor {
    model_dir: PathBuf,
    device: Device,
    options: EditorOptions,
    vq: VqModel,
    mgt: MgtTransformer,
    text: Option<TextEncoder>,
    tokenizers: TextTokenizers,
    scheduler: SchedulerConfig,
    load_timings: LoadTimings,
}

/// The blocks consolidated by default, for the released model's depth.
const RELEASED_BLOCKS: usize = 42;
const DEFAULT_HOLD_BLOCKS: std::ops::RangeInclusive<usize> = 28..=36;
/// The aesthetic-score micro-condition of the released pipeline.
const AESTHETIC_SCORE: f32 = 6.0;

/// Parameters every item of a batch shares.
struct Shared {
    steps: usize,
    guidance: f32,
    strength: Option<f32>,
    temperature: Temperature,
    hold: Option<(f32, Vec<usize>)>,
    record: bool,
    /// Wait for the device at stage boundaries (timings were asked for).
    sync: bool,
}

/// One item of a batch.
struct Job<'r> {
    prompt: &'r str,
    negative: &'r str,
    /// The source image at the model resolution, and the input's size.
    source: Option<(RgbImage, (u32, u32))>,
    mask: Option<&'r GrayImage>,
    query: Option<&'r str>,
    seed: u64,
}

/// What the loop returns.
struct Outcome {
    /// The final tokens `[n, L]`, on the device.
    tokens: Tensor<2, Int>,
    /// The final tokens of each item, read back.
    host_tokens: Vec<Vec<u32>>,
    /// Per item, the recorded localisation maps.
    localisation: Vec<Vec<ScoreMap>>,
    readback: Readback,
    /// The stages timed so far (text, VQ encode, the steps, the read-back).
    timings: Timings,
}

impl Editor {
    /// Loads a model folder in the released layout (`editmgt/`, `vqvae/`, `text_encoder/`,
    /// `tokenizer/`, `llm_encoder/`, `scheduler/`) onto `device`.
    pub fn from_folder(
        path: impl AsRef<Path>,
        device: &Device,
        options: EditorOptions,
    ) -> Result<Self, EditError> {
        let started = Instant::now();
        let model_dir = component_folder(path.as_ref(), "")?;
        options.float.check_device(device)?;
        let scheduler = SchedulerConfig::from_model_dir(&model_dir)?;
        let vq_float = if vq_upcasts(&model_dir)? {
            FloatType::F32
        } else {
            options.float
        };
        let mut stage = Instant::now();
        let vq = VqModel::from_folder(model_dir.join("vqvae"), device, vq_float)?;
        let vq_time = lap(&mut stage);
        let mgt = MgtTransformer::load(&model_dir, device, options.float)?;
        let mgt = crate::adapter::apply(mgt, options.lora.as_ref(), device)?;
        let transformer_time = lap(&mut stage);
        let (text, tokenizers) = match options.text_encoders {
            TextEncoders::Keep => {
                let text = TextEncoder::from_model_dir(&model_dir, device, options.float)?;
                let tokenizers = text.tokenizers().clone();
                (Some(text), tokenizers)
            }
            TextEncoders::LoadPerCall => (None, TextTokenizers::from_model_dir(&model_dir)?),
        };
        let text_time = lap(&mut stage);
        let factor = vq.downsampling_factor() as u32;
        let step = factor * if mgt.config().downsample { 2 } else { 1 };
        if options.resolution == 0 || !options.resolution.is_multiple_of(step) {
            return Err(EditError::invalid(
                "resolution",
                options.resolution,
                format!("must be a positive multiple of {step}"),
            ));
        }
        Ok(Self {
            model_dir,
            device: device.clone(),
            options,
            vq,
            mgt,
            text,
            tokenizers,
            scheduler,
            load_timings: LoadTimings {
                vq: vq_time,
                transformer: transformer_time,
                text_encoders: text_time,
                total: started.elapsed(),
                peak_rss: crate::timings::peak_rss(),
            },
        })
    }

    /// The model folder.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The options the editor was loaded with.
    pub fn options(&self) -> &EditorOptions {
        &self.options
    }

    /// The CPU instructions the transformer's bf16 products run on: `Some` for an editor loaded
    /// in [`FloatType::BF16`] on a CPU with AMX-BF16 or AVX512-BF16, `None` otherwise (on such a
    /// CPU without them, bf16 runs in f32).
    pub fn bf16_products(&self) -> Option<crate::Bf16Isa> {
        self.mgt.bf16_products()
    }

    /// How long loading each component took.
    pub fn load_timings(&self) -> &LoadTimings {
        &self.load_timings
    }

    /// The transformer's number of blocks (double-stream then single-stream).
    pub fn num_blocks(&self) -> usize {
        self.mgt.num_blocks()
    }

    /// The codebook size of the transformer's predictions (token ids are below it).
    pub fn codebook_size(&self) -> usize {
        self.mgt.config().codebook_size
    }

    /// The id of the mask token (the scheduler's `mask_token_id`): the value of a cell that is
    /// still to be generated.
    pub fn mask_token_id(&self) -> u32 {
        self.scheduler.mask_token_id
    }

    /// The grid `(height, width)` of the attention maps and localisation scores (the token grid,
    /// halved when the transformer downsamples it).
    pub fn attention_grid(&self) -> (usize, usize) {
        let (h, w) = self.token_grid();
        if self.mgt.config().downsample {
            (h / 2, w / 2)
        } else {
            (h, w)
        }
    }

    /// The token grid `(height, width)` of an edit.
    pub fn token_grid(&self) -> (usize, usize) {
        let side = self.options.resolution as usize / self.vq.downsampling_factor();
        (side, side)
    }

    /// Edits `image` as `request` says.
    pub fn edit(&self, image: &RgbImage, request: &EditRequest) -> Result<EditOutput, EditError> {
        self.edit_with(image, request, Hooks::default())
    }

    /// [`Editor::edit`] with a progress callback and/or replacement noise.
    pub fn edit_with(
        &self,
        image: &RgbImage,
        request: &EditRequest,
        hooks: Hooks<'_>,
    ) -> Result<EditOutput, EditError> {
        let mut outputs = self.edit_batch_with(&[(image, request)], hooks)?;
        Ok(outputs.remove(0))
    }

    /// Edits several images in one guidance batch (one transformer pass per step for all of
    /// them). Prompts, negative prompts, seeds, masks and query words may differ; steps,
    /// guidance, strength, temperature, the hold threshold and blocks, and
    /// `record_localisation` must be the same. Each item draws from its own noise source, so
    /// the result equals editing the images one by one.
    pub fn edit_batch(
        &self,
        items: &[(&RgbImage, &EditRequest)],
    ) -> Result<Vec<EditOutput>, EditError> {
        self.edit_batch_with(items, Hooks::default())
    }

    /// [`Editor::edit_batch`] with hooks.
    pub fn edit_batch_with(
        &self,
        items: &[(&RgbImage, &EditRequest)],
        hooks: Hooks<'_>,
    ) -> Result<Vec<EditOutput>, EditError> {
        let started = Instant::now();
        let (jobs, mut outcome) = self.run_batch(items, hooks)?;
        let decoder = self.decoder();
        let images = decoder.decode(&self.vq, &mut outcome)?;
        Ok(decoder.finish(&jobs, outcome, images, started))
    }

    /// [`Editor::edit`] for a program that makes one edit: it consumes the editor, and drops the
    /// transformer and any resident text encoders once the tokens are sampled, before the VQ
    /// decoder runs (with glibc, the freed pages are handed back to the system with
    /// `malloc_trim`). The decoder's working memory then no longer sits on top of the
    /// transformer's weights (1.9 GB in bf16 for the released model, 3.8 GB in f32), which lowers
    /// the edit's peak memory where the decoder is its largest stage. The result is the same as
    /// [`Editor::edit`]'s.
    pub fn edit_once(
        self,
        image: &RgbImage,
        request: &EditRequest,
    ) -> Result<EditOutput, EditError> {
        self.edit_once_with(image, request, Hooks::default())
    }

    /// [`Editor::edit_once`] with a progress callback and/or replacement noise.
    pub fn edit_once_with(
        self,
        image: &RgbImage,
        request: &EditRequest,
        hooks: Hooks<'_>,
    ) -> Result<EditOutput, EditError> {
        let started = Instant::now();
        let items = [(image, request)];
        let (jobs, mut outcome) = self.run_batch(&items, hooks)?;
        let decoder = self.decoder();
        let Editor { vq, mgt, text, .. } = self;
        drop(mgt);
        drop(text);
        crate::freed_memory::return_to_system();
        let images = decoder.decode(&vq, &mut outcome)?;
        Ok(decoder.finish(&jobs, outcome, images, started).remove(0))
    }

    /// Checks a batch, and runs the text encoders, the VQ encoder and the sampling loop on it.
    fn run_batch<'r>(
        &self,
        items: &'r [(&RgbImage, &EditRequest)],
        hooks: Hooks<'_>,
    ) -> Result<(Vec<Job<'r>>, Outcome), EditError> {
        let (_, first) = items
            .first()
            .ok_or_else(|| EditError::invalid("items", 0, "at least one image to edit"))?;
        let mut shared = self.shared(first)?;
        for (_, request) in &items[1..] {
            let other = self.shared(request)?;
            if let Some(field) = shared.differs(&other) {
                return Err(EditError::invalid(
                    field,
                    "differs between batch items",
                    "a batch shares steps, guidance, strength, temperature, region-hold threshold and blocks",
                ));
            }
        }
        shared.sync = items.iter().any(|(_, request)| request.timings);
        let resolution = self.options.resolution;
        let jobs = items
            .iter()
            .map(|(image, request)| {
                if image.width() == 0 || image.height() == 0 {
                    return Err(EditError::invalid(
                        "image",
                        "0 pixels",
                        "an image of at least 1x1",
                    ));
                }
                Ok(Job {
                    prompt: &request.instruction,
                    negative: request.negative(),
                    source: Some((
                        imaging::resize(image, resolution, resolution),
                        image.dimensions(),
                    )),
                    mask: request.mask.as_ref(),
                    query: request
                        .region_hold
                        .as_ref()
                        .and_then(|h| h.query.as_deref()),
                    seed: request.seed,
                })
            })
            .collect::<Result<Vec<_>, EditError>>()?;
        let outcome = self.run(&jobs, &shared, hooks)?;
        Ok((jobs, outcome))
    }

    /// What decoding the sampled tokens needs to know of the editor, apart from the VQ model.
    fn decoder(&self) -> Decoder {
        Decoder {
            grid: self.token_grid(),
            mask_id: self.scheduler.mask_token_id,
            resolution: self.options.resolution,
        }
    }

    /// Generates an image from a prompt (text-to-image, no source image).
    pub fn generate(&self, request: &GenerateRequest) -> Result<GenerateOutput, EditError> {
        self.generate_with(request, Hooks::default())
    }

    /// [`Editor::generate`] with hooks.
    pub fn generate_with(
        &self,
        request: &GenerateRequest,
        hooks: Hooks<'_>,
    ) -> Result<GenerateOutput, EditError> {
        let started = Instant::now();
        check_common(request.steps, request.guidance)?;
        let shared = Shared {
            steps: request.steps,
            guidance: request.guidance,
            strength: None,
            temperature: request.temperature,
            hold: None,
            record: false,
            sync: request.timings,
        };
        let job = Job {
            prompt: &request.prompt,
            negative: request
                .negative_prompt
                .as_deref()
                .unwrap_or(crate::DEFAULT_NEGATIVE_PROMPT),
            source: None,
            mask: None,
            query: None,
            seed: request.seed,
        };
        let mut outcome = self.run(std::slice::from_ref(&job), &shared, hooks)?;
        let image = self.decoder().decode(&self.vq, &mut outcome)?.remove(0);
        let mut timings = outcome.timings;
        timings.total = started.elapsed();
        timings.peak_rss = crate::timings::peak_rss();
        Ok(GenerateOutput {
            image,
            tokens: outcome.host_tokens.remove(0),
            grid: self.token_grid(),
            readback: outcome.readback,
            timings,
        })
    }

    /// Checks a request and extracts what a batch must share.
    fn shared(&self, request: &EditRequest) -> Result<Shared, EditError> {
        check_common(request.steps, request.guidance)?;
        let strength = request.reference_strength;
        if !(strength.is_finite() && strength > 0.0) {
            return Err(EditError::invalid(
                "reference_strength",
                strength,
                "a finite value > 0 (1 is neutral)",
            ));
        }
        let hold = match &request.region_hold {
            None => None,
            Some(hold) => {
                if !(0.0..=1.0).contains(&hold.threshold) {
                    return Err(EditError::invalid(
                        "region_hold.threshold",
                        hold.threshold,
                        "a value in [0, 1]",
                    ));
                }
                let blocks = match &hold.blocks {
                    Some(blocks) => blocks.clone(),
                    None if self.num_blocks() == RELEASED_BLOCKS => DEFAULT_HOLD_BLOCKS.collect(),
                    None => {
                        return Err(EditError::invalid(
                            "region_hold.blocks",
                            "default (28..=36)",
                            format!(
                                "the defaults are for the released 42-block model; this one has {} blocks (0..{}): name the blocks",
                                self.num_blocks(),
                                self.num_blocks()
                            ),
                        ));
                    }
                };
                if blocks.is_empty() {
                    return Err(EditError::invalid(
                        "region_hold.blocks",
                        "[]",
                        "at least one block",
                    ));
                }
                if let Some(&bad) = blocks.iter().find(|&&b| b >= self.num_blocks()) {
                    return Err(EditError::invalid(
                        "region_hold.blocks",
                        bad,
                        format!("the model has blocks 0..{}", self.num_blocks()),
                    ));
                }
                if hold.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
                    return Err(EditError::invalid(
                        "region_hold.query",
                        "\"\"",
                        "words of the instruction",
                    ));
                }
                Some((hold.threshold, blocks))
            }
        };
        if request.record_localisation && hold.is_none() {
            return Err(EditError::invalid(
                "record_localisation",
                true,
                "needs region_hold (a threshold of 0 computes the maps without holding)",
            ));
        }
        Ok(Shared {
            steps: request.steps,
            guidance: request.guidance,
            strength: Some(strength),
            temperature: request.temperature,
            hold,
            record: request.record_localisation,
            sync: request.timings,
        })
    }

    /// Encodes `prompts` with the kept encoders or loads them for this call.
    fn encode(&self, prompts: &[&str]) -> Result<TextEmbeddings, EditError> {
        Ok(match &self.text {
            Some(text) => text.encode(prompts)?,
            None => {
                TextEncoder::encode_once(
                    &self.model_dir,
                    &self.device,
                    self.options.float,
                    prompts,
                )?
                .0
            }
        })
    }

    /// The sampling loop for a batch of jobs, on the device from the source tokens to the final
    /// tokens; reads back only the final tokens (and what a progress callback asks for).
    fn run(
        &self,
        jobs: &[Job<'_>],
        shared: &Shared,
        hooks: Hooks<'_>,
    ) -> Result<Outcome, EditError> {
        let n = jobs.len();
        let (h, w) = self.token_grid();
        let cells = h * w;
        let mask_id = i64::from(self.scheduler.mask_token_id);
        let guided = shared.guidance > 1.0;
        let device = &self.device;
        let loop_readback = Cell::new(0u64);
        let mut timings = Timings {
            synced: shared.sync,
            ..Timings::default()
        };

        // Query rows (in the Gemma tokenisation, where the attention rows come from).
        let rows: Vec<Option<Vec<usize>>> = jobs
            .iter()
            .map(|job| match job.query {
                None => Ok(None),
                Some(query) => {
                    let rows = self.tokenizers.gemma.locate(job.prompt, query)?;
                    if rows.is_empty() {
                        return Err(EditError::invalid(
                            "region_hold.query",
                            format!("{query:?}"),
                            format!("no word of it occurs in the instruction {:?}", job.prompt),
                        ));
                    }
                    Ok(Some(rows))
                }
            })
            .collect::<Result<_, EditError>>()?;

        // Text: the guidance batch is [negatives, positives].
        let mut prompts: Vec<&str> = Vec::with_capacity(2 * n);
        if guided {
            prompts.extend(jobs.iter().map(|j| j.negative));
        }
        prompts.extend(jobs.iter().map(|j| j.prompt));
        let mut stage = Instant::now();
        let text = self.encode(&prompts)?;
        settle(device, shared.sync)?;
        timings.text_encoding = lap(&mut stage);
        timings.mark_peak("text encoding");
        let rows_in_batch = prompts.len();

        // Source tokens, on the device. In mask mode the masked cells start as mask tokens, and
        // the transformer's reference input carries them too (the released pipeline uses one
        // tensor for both); region hold restores the unmasked source tokens.
        let editing = jobs.iter().all(|j| j.source.is_some());
        let sources: Option<Tensor<2, Int>> = if editing {
            let images: Vec<&RgbImage> = jobs
                .iter()
                .filter_map(|j| j.source.as_ref().map(|s| &s.0))
                .collect();
            let grid = self.vq.tokenize(imaging::to_tensor(&images, device)?)?;
            settle(device, shared.sync)?;
            timings.vq_encode = Some(lap(&mut stage));
            timings.mark_peak("VQ encode");
            Some(grid.reshape([n, cells]))
        } else {
            None
        };
        // Per cell: masked at the start (every cell of an item without a mask), and repainted
        // (masked cells of items with a mask).
        let mut start_masked = vec![true; n * cells];
        let mut repainted = vec![false; n * cells];
        let mut starting_ratio = vec![1f32; n];
        let mut any_mask = false;
        for (k, job) in jobs.iter().enumerate() {
            if let (Some(mask), true) = (job.mask, editing) {
                let grid = mask_grid(mask, h, w);
                starting_ratio[k] = grid.iter().filter(|&&m| m).count() as f32 / cells as f32;
                start_masked[k * cells..(k + 1) * cells].copy_from_slice(&grid);
                repainted[k * cells..(k + 1) * cells].copy_from_slice(&grid);
                any_mask = true;
            }
        }
        let bools = |v: Vec<bool>| -> Tensor<2, Bool> {
            Tensor::from_data(TensorData::new(v, [n, cells]), device)
        };
        let mut tokens = match &sources {
            Some(sources) if any_mask => sources.clone().mask_fill(bools(start_masked), mask_id),
            _ => Tensor::<2, Int>::full([n, cells], mask_id, device),
        };
        // What the transformer attends to: the source, with the masked cells as mask tokens in
        // mask mode.
        let model_reference = sources.as_ref().map(|sources| {
            let reference = if any_mask {
                sources.clone().mask_fill(bools(repainted), mask_id)
            } else {
                sources.clone()
            };
            doubled(reference.reshape([n, h, w]), guided)
        });

        let buffer_elements = editmgt_core::limits::max_buffer_bytes(device) / 4;
        let sampler = Sampler::from_config(&self.scheduler, shared.steps, shared.temperature)?
            .with_block_elements(
                buffer_elements.min(editmgt_sampler::DEFAULT_BLOCK_ELEMENTS as u64) as usize,
            );
        let mut noise: Vec<Box<dyn NoiseSource + '_>> = match hooks.noise {
            Some(noise) if noise.len() == n => noise,
            Some(noise) => {
                return Err(EditError::invalid(
                    "hooks.noise",
                    noise.len(),
                    format!("one noise source per batch item ({n})"),
                ));
            }
            None => jobs
                .iter()
                .map(|j| Box::new(SeededNoise::new(j.seed)) as Box<dyn NoiseSource>)
                .collect(),
        };
        let mut progress = hooks.progress;
        let mut force_tokens = hooks.force_tokens;

        // What the transformer needs every step.
        let text_len = text.encoder_hidden_states.dims()[1];
        let rotary = self
            .mgt
            .rotary_table(&self.mgt.positions(text_len, h, w), device);
        let res = self.options.resolution as f32;
        let micro_conds = Tensor::<2>::from_data(
            TensorData::new(
                [res, res, 0.0, 0.0, AESTHETIC_SCORE].repeat(rows_in_batch),
                [rows_in_batch, 5],
            ),
            device,
        );
        let union = union_rows(&rows);
        let capture = match &shared.hold {
            None => CaptureRequest::none(),
            Some((_, blocks)) => {
                let first_cond = if guided { n } else { 0 };
                let mut request = CaptureRequest::blocks(blocks.iter().copied())
                    .with_batch_rows(first_cond..first_cond + n);
                if let Some(union) = &union {
                    request = request.with_text_rows(union.iter().copied());
                }
                request
            }
        };
        let attention_grid = self.attention_grid();
        // Localisation, prepared once: the text-row weights, smoothing and resize matrices.
        let localizer = match &shared.hold {
            None => None,
            Some(_) => {
                let captured_rows = union.as_ref().map_or(text_len, Vec::len);
                let item_rows: Vec<Option<Vec<usize>>> = rows
                    .iter()
                    .map(|r| r.as_ref().map(|r| positions_in(r, union.as_deref())))
                    .collect();
                Some(Localizer::new(
                    TextRows::per_item(&item_rows, captured_rows, device)?,
                    attention_grid,
                    (h, w),
                    &AdaptiveSmoothing::default(),
                    device,
                )?)
            }
        };
        // Items per group of the head and sampler: the guided logits of a group, and each of
        // its two halves, stay within the device's buffer bound.
        let logit_bytes = (4 * self.codebook_size() * cells) as u64;
        let group = editmgt_core::limits::rows_within(
            editmgt_core::limits::max_buffer_bytes(device),
            logit_bytes,
            n,
        );

        let mut faults: Option<Faults> = None;
        let mut localisation: Vec<Vec<ScoreMap>> = vec![Vec::new(); n];
        for step in 0..shared.steps {
            let mut stage = Instant::now();
            let timestep = sampler.schedule().timestep(step)?;
            let mut input = MgtInput::new(
                doubled(tokens.clone().reshape([n, h, w]), guided),
                text.encoder_hidden_states.clone(),
                text.pooled.clone(),
                micro_conds.clone(),
                timestep as f32,
            )
            .with_capture(capture.clone())
            .with_rotary(rotary.clone());
            if let (Some(reference), Some(strength)) = (&model_reference, shared.strength) {
                input = input.with_reference(reference.clone(), strength);
            }
            let output = self.mgt.forward_features(input)?;

            // Localisation scores of the conditional rows' captured maps.
            let located = match &localizer {
                Some(localizer) => {
                    let maps: Vec<Tensor<3>> = output
                        .captures
                        .iter()
                        .map(|c| c.text_to_image.clone())
                        .collect();
                    Some(localizer.locate(&maps)?)
                }
                None => None,
            };
            settle(device, shared.sync)?;
            timings.transformer.push(lap(&mut stage));

            // Head, guidance and sampler over groups of items whose logits fit one buffer of
            // the device (all items at once on the CPU).
            let last = sampler.schedule().is_last(step);
            let mut next = Vec::with_capacity(n.div_ceil(group));
            let mut start = 0;
            while start < n {
                let end = (start + group).min(n);
                let items = start..end;
                let features = |offset: usize| {
                    output
                        .features
                        .clone()
                        .slice(offset + items.start..offset + items.end)
                };
                let logits = if guided {
                    let uncond = self.mgt.logits(features(0));
                    let cond = self.mgt.logits(features(n));
                    editmgt_sampler::guide(uncond, cond, shared.guidance)?
                } else {
                    self.mgt.logits(features(0))
                };
                let step_noise =
                    StepNoise::draw_rows(&mut noise[items.clone()], cells, last, device)
                        .map_err(editmgt_sampler::SamplerError::from)?;
                let mut input = StepInput::new(
                    step,
                    logits,
                    tokens.clone().slice(items.clone()),
                    step_noise,
                );
                input.starting_mask_ratio =
                    StartingRatio::PerRow(starting_ratio[items.clone()].to_vec());
                if let (Some((threshold, _)), Some(located), Some(reference)) =
                    (&shared.hold, &located, &sources)
                    && *threshold > 0.0
                {
                    input.region_hold = Some(HoldInput {
                        threshold: *threshold,
                        scores: located.on_tokens.clone().slice(items.clone()),
                        reference: reference.clone().slice(items.clone()),
                    });
                }
                let out = sampler.step(input)?;
                next.push(out.prev_sample);
                faults = Some(match faults {
                    Some(earlier) => earlier.merge(out.faults),
                    None => out.faults,
                });
                start = end;
            }
            tokens = Tensor::cat(next, 0);
            settle(device, shared.sync)?;
            timings.sampler.push(lap(&mut stage));
            let scores = located.map(|l| l.scores);
            if shared.record
                && let Some(scores) = &scores
            {
                for (k, record) in localisation.iter_mut().enumerate() {
                    record.push(scores.item(k)?);
                }
            }
            if let Some(callback) = progress.as_mut() {
                let event = StepEvent {
                    step: step + 1,
                    total: shared.steps,
                    tokens: &tokens,
                    scores: scores.as_ref(),
                    readback: &loop_readback,
                };
                if callback(&event) == Flow::Cancel {
                    return Err(EditError::Cancelled {
                        completed: step + 1,
                        total: shared.steps,
                    });
                }
            }
            if let Some(forced) = force_tokens.as_mut().and_then(|force| force(step + 1)) {
                let codebook = self.mgt.config().codebook_size;
                if forced.len() != n * cells {
                    return Err(EditError::invalid(
                        "hooks.force_tokens",
                        forced.len(),
                        format!("{n} x {cells} tokens"),
                    ));
                }
                if let Some(&bad) = forced
                    .iter()
                    .find(|&&t| t as usize >= codebook && i64::from(t) != mask_id)
                {
                    return Err(EditError::invalid(
                        "hooks.force_tokens",
                        bad,
                        format!("token ids below {codebook}, or the mask token {mask_id}"),
                    ));
                }
                let values: Vec<i64> = forced.into_iter().map(i64::from).collect();
                tokens = editmgt_core::select::default_int(Tensor::from_data(
                    TensorData::new(values, [n, cells]),
                    device,
                ));
            }
        }

        // One read after the loop: the final tokens with the sampler's fault report.
        let read_start = Instant::now();
        let tokens_read = Cell::new(0u64);
        let mut flat = vec![tokens.clone().reshape([n * cells])];
        if let Some(faults) = &faults {
            flat.push(faults.tensor().clone());
        }
        let values = read_ints(Tensor::cat(flat, 0), &tokens_read)?;
        let (grid_values, fault_values) = values.split_at(n * cells);
        if !fault_values.is_empty() {
            Faults::from_values(fault_values, cells, self.mgt.config().codebook_size)?;
        }
        let host_tokens = grid_values
            .chunks_exact(cells)
            .map(|row| row.iter().map(|&t| t as u32).collect())
            .collect();
        timings.readback = read_start.elapsed();
        timings.mark_peak("steps");
        Ok(Outcome {
            tokens,
            host_tokens,
            localisation,
            readback: Readback {
                in_loop: loop_readback.get(),
                tokens: tokens_read.get(),
                images: 0,
            },
            timings,
        })
    }
}

/// What decoding the sampled tokens needs, apart from the VQ model (see [`Editor::decoder`]).
#[derive(Debug, Clone, Copy)]
struct Decoder {
    /// The token grid `(height, width)`.
    grid: (usize, usize),
    /// Tokens still masked at the end decode as token 0.
    mask_id: u32,
    /// The square resolution the images were edited at.
    resolution: u32,
}

impl Decoder {
    /// Decodes the final token grids to images at the model resolution, one item at a time;
    /// mask tokens left in a grid decode as token 0, as in the reference.
    fn decode(&self, vq: &VqModel, outcome: &mut Outcome) -> Result<Vec<RgbImage>, EditError> {
        let started = Instant::now();
        let (h, w) = self.grid;
        let mask_id = i64::from(self.mask_id);
        let [n, _] = outcome.tokens.dims();
        let mut images = Vec::with_capacity(n);
        for k in 0..n {
            let grid = outcome.tokens.clone().slice(k..k + 1).reshape([1, h, w]);
            let grid = grid.clone().mask_fill(grid.equal_elem(mask_id), 0);
            let pixels = vq.decode(grid)?;
            outcome.readback.images += 4 * pixels.shape().num_elements() as u64;
            images.extend(imaging::from_tensor(pixels)?);
        }
        outcome.timings.vq_decode = started.elapsed();
        outcome.timings.mark_peak("VQ decode");
        Ok(images)
    }

    /// Resizes the decoded images back to their inputs' sizes and assembles the outputs.
    fn finish(
        &self,
        jobs: &[Job<'_>],
        outcome: Outcome,
        images: Vec<RgbImage>,
        started: Instant,
    ) -> Vec<EditOutput> {
        let resolution = self.resolution;
        let readback = outcome.readback;
        let images: Vec<RgbImage> = images
            .into_iter()
            .zip(jobs)
            .map(|(image, job)| {
                let (w, h) = job
                    .source
                    .as_ref()
                    .map(|s| s.1)
                    .unwrap_or((resolution, resolution));
                imaging::resize(&image, w, h)
            })
            .collect();
        let mut timings = outcome.timings;
        timings.total = started.elapsed();
        timings.peak_rss = crate::timings::peak_rss();
        outcome
            .host_tokens
            .into_iter()
            .zip(outcome.localisation)
            .zip(images)
            .map(|((tokens, localisation), image)| EditOutput {
                image,
                tokens,
                grid: self.grid,
                localisation,
                readback,
                timings: timings.clone(),
            })
            .collect()
    }
}

/// Steps and guidance checks shared by edit and generate.
fn check_common(steps: usize, guidance: f32) -> Result<(), EditError> {
    if steps == 0 {
        return Err(EditError::invalid("steps", 0, "at least 1"));
    }
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(EditError::invalid(
            "guidance",
            guidance,
            "a finite value >= 0",
        ));
    }
    Ok(())
}

impl Shared {
    /// The first field in which two requests of one batch differ.
    fn differs(&self, other: &Shared) -> Option<&'static str> {
        if self.steps != other.steps {
            Some("steps")
        } else if self.guidance != other.guidance {
            Some("guidance")
        } else if self.strength != other.strength {
            Some("reference_strength")
        } else if self.temperature != other.temperature {
            Some("temperature")
        } else if self.hold != other.hold {
            Some("region_hold")
        } else if self.record != other.record {
            Some("record_localisation")
        } else {
            None
        }
    }
}

/// The time since `since`, restarting it.
fn lap(since: &mut Instant) -> Duration {
    let now = Instant::now();
    let elapsed = now.duration_since(*since);
    *since = now;
    elapsed
}

/// A stage boundary: waits for the device's queued work when timings were asked for, and does
/// nothing otherwise (the default edit never stalls the device's queue; nothing is read back
/// either way).
fn settle(device: &Device, sync: bool) -> Result<(), EditError> {
    if sync {
        device
            .sync()
            .map_err(|e| EditError::Execution(e.to_string()))?;
    }
    Ok(())
}

/// Whether the VQ configuration asks for f32 decoding (`force_upcast`).
fn vq_upcasts(model_dir: &Path) -> Result<bool, EditError> {
    let config = editmgt_vq::VqConfig::from_file(&model_dir.join("vqvae/config.json"))?;
    Ok(config.force_upcast)
}

/// The token grids `[n, h, w]` twice over (`[2n, h, w]`) for the guidance batch.
fn doubled(grid: Tensor<3, Int>, twice: bool) -> Tensor<3, Int> {
    if twice {
        Tensor::cat(vec![grid.clone(), grid], 0)
    } else {
        grid
    }
}

/// The sorted union of the items' query rows, or `None` when some item uses all rows.
fn union_rows(rows: &[Option<Vec<usize>>]) -> Option<Vec<usize>> {
    let mut union = Vec::new();
    for r in rows {
        union.extend(r.as_ref()?.iter().copied());
    }
    union.sort_unstable();
    union.dedup();
    Some(union)
}

/// Where each of `rows` sits in the captured rows (`union`, or all rows when `None`).
fn positions_in(rows: &[usize], union: Option<&[usize]>) -> Vec<usize> {
    match union {
        None => rows.to_vec(),
        Some(union) => rows
            .iter()
            .filter_map(|r| union.binary_search(r).ok())
            .collect(),
    }
}

/// Reads an Int tensor back as `i64`, adding the bytes transferred to `counter`.
fn read_ints(tensor: Tensor<1, Int>, counter: &Cell<u64>) -> Result<Vec<i64>, EditError> {
    let data = tensor
        .try_into_data()
        .map_err(|e| EditError::Readback(format!("{e:?}")))?;
    counter.set(counter.get() + data.as_bytes().len() as u64);
    data.convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| EditError::Readback(format!("{e:?}")))
}
