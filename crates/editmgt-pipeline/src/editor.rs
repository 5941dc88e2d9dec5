//! The [`Editor`]: a loaded model and the edit loop.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use editmgt_attention::{AdaptiveSmoothing, ScoreMap, local_scores};
use editmgt_core::FloatType;
use editmgt_core::config::component_folder;
use editmgt_mgt::{CaptureRequest, MgtInput, MgtTransformer};
use editmgt_sampler::{
    Logits, NoiseSource, RegionHold as HoldInput, Sampler, SchedulerConfig, SeededNoise, StepInput,
    Temperature, Workspace,
};
use editmgt_text::{TextEmbeddings, TextEncoder, TextTokenizers};
use editmgt_vq::{VqModel, imaging};
use image::{GrayImage, RgbImage};
use ndarray::Array3;

use crate::EditError;
use crate::mask::mask_grid;
use crate::request::{EditRequest, GenerateRequest};

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
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Steps completed (1 after the first step).
    pub step: usize,
    /// Steps requested.
    pub total: usize,
    /// The token grid of every batch item after this step (row-major, mask tokens where still
    /// masked).
    pub tokens: &'a [Vec<u32>],
    /// The localisation scores of every batch item at this step, on the attention grid
    /// (before upsampling), when region hold is on.
    pub scores: &'a [Option<ScoreMap>],
}

/// Optional hooks into an edit: a progress callback (which can cancel) and replacement noise
/// sources.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every step; returning [`Flow::Cancel`] stops the edit.
    pub progress: Option<&'a mut dyn FnMut(&StepEvent<'_>) -> Flow>,
    /// One noise source per batch item, replacing the seeded default (e.g. a
    /// [`ReplayNoise`](editmgt_sampler::ReplayNoise) of recorded uniforms).
    pub noise: Option<Vec<Box<dyn NoiseSource + 'a>>>,
}

impl<'a> Hooks<'a> {
    /// Hooks with a progress callback.
    pub fn progress(callback: &'a mut dyn FnMut(&StepEvent<'_>) -> Flow) -> Self {
        Self {
            progress: Some(callback),
            noise: None,
        }
    }

    /// Replaces the seeded noise with these sources (one per batch item).
    pub fn with_noise(mut self, noise: Vec<Box<dyn NoiseSource + 'a>>) -> Self {
        self.noise = Some(noise);
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
    /// The localisation map of every step on the attention grid, when
    /// [`EditRequest::record_localisation`] asked for it.
    pub localisation: Vec<ScoreMap>,
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

/// What the loop returns per item.
struct Outcome {
    tokens: Vec<u32>,
    localisation: Vec<ScoreMap>,
}

impl Editor {
    /// Loads a model folder in the released layout (`editmgt/`, `vqvae/`, `text_encoder/`,
    /// `tokenizer/`, `llm_encoder/`, `scheduler/`) onto `device`.
    pub fn from_folder(
        path: impl AsRef<Path>,
        device: &Device,
        options: EditorOptions,
    ) -> Result<Self, EditError> {
        let model_dir = component_folder(path.as_ref(), "")?;
        options.float.check_device(device)?;
        let scheduler = SchedulerConfig::from_model_dir(&model_dir)?;
        let vq_float = if vq_upcasts(&model_dir)? {
            FloatType::F32
        } else {
            options.float
        };
        let vq = VqModel::from_folder(model_dir.join("vqvae"), device, vq_float)?;
        let mgt = MgtTransformer::load(&model_dir, device, options.float)?;
        let mgt = crate::adapter::apply(mgt, options.lora.as_ref(), device)?;
        let (text, tokenizers) = match options.text_encoders {
            TextEncoders::Keep => {
                let text = TextEncoder::from_model_dir(&model_dir, device, options.float)?;
                let tokenizers = text.tokenizers().clone();
                (Some(text), tokenizers)
            }
            TextEncoders::LoadPerCall => (None, TextTokenizers::from_model_dir(&model_dir)?),
        };
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

    /// The transformer's number of blocks (double-stream then single-stream).
    pub fn num_blocks(&self) -> usize {
        self.mgt.num_blocks()
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
        let (_, first) = items
            .first()
            .ok_or_else(|| EditError::invalid("items", 0, "at least one image to edit"))?;
        let shared = self.shared(first)?;
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
        let outcomes = self.run(&jobs, &shared, hooks)?;
        let images = self.decode(&outcomes)?;
        Ok(outcomes
            .into_iter()
            .zip(images)
            .zip(&jobs)
            .map(|((outcome, image), job)| {
                let (w, h) = job
                    .source
                    .as_ref()
                    .map(|s| s.1)
                    .unwrap_or((resolution, resolution));
                EditOutput {
                    image: imaging::resize(&image, w, h),
                    tokens: outcome.tokens,
                    grid: self.token_grid(),
                    localisation: outcome.localisation,
                }
            })
            .collect())
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
        check_common(request.steps, request.guidance)?;
        let shared = Shared {
            steps: request.steps,
            guidance: request.guidance,
            strength: None,
            temperature: request.temperature,
            hold: None,
            record: false,
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
        let mut outcomes = self.run(std::slice::from_ref(&job), &shared, hooks)?;
        let image = self.decode(&outcomes)?.remove(0);
        Ok(GenerateOutput {
            image,
            tokens: outcomes.remove(0).tokens,
            grid: self.token_grid(),
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

    /// The sampling loop for a batch of jobs; returns the final tokens of each.
    fn run(
        &self,
        jobs: &[Job<'_>],
        shared: &Shared,
        hooks: Hooks<'_>,
    ) -> Result<Vec<Outcome>, EditError> {
        let n = jobs.len();
        let (h, w) = self.token_grid();
        let cells = h * w;
        let mask_id = self.scheduler.mask_token_id;
        let guided = shared.guidance > 1.0;
        let device = &self.device;

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
        let text = self.encode(&prompts)?;
        let rows_in_batch = prompts.len();

        // Source tokens. In mask mode the masked cells start as mask tokens, and the
        // transformer's reference input carries them too (the released pipeline uses one tensor
        // for both); region hold restores the unmasked source tokens.
        let editing = jobs.iter().all(|j| j.source.is_some());
        let mut sources: Vec<Vec<u32>> = Vec::new();
        if editing {
            let images: Vec<&RgbImage> = jobs
                .iter()
                .filter_map(|j| j.source.as_ref().map(|s| &s.0))
                .collect();
            let grid = self.vq.tokenize(imaging::to_tensor(&images, device)?)?;
            let flat = read_i64(grid.reshape([n * cells]))?;
            sources = flat
                .chunks_exact(cells)
                .map(|c| c.iter().map(|&t| t as u32).collect())
                .collect();
        }
        let mut tokens: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut references: Vec<Vec<u32>> = Vec::with_capacity(sources.len());
        let mut starting_ratio = vec![1f32; n];
        for (k, job) in jobs.iter().enumerate() {
            match (job.mask, sources.get(k)) {
                (Some(mask), Some(source)) => {
                    let grid = mask_grid(mask, h, w);
                    let masked = grid.iter().filter(|&&m| m).count();
                    starting_ratio[k] = masked as f32 / cells as f32;
                    let start: Vec<u32> = source
                        .iter()
                        .zip(&grid)
                        .map(|(&t, &m)| if m { mask_id } else { t })
                        .collect();
                    references.push(start.clone());
                    tokens.push(start);
                }
                (None, Some(source)) => {
                    references.push(source.clone());
                    tokens.push(vec![mask_id; cells]);
                }
                _ => tokens.push(vec![mask_id; cells]),
            }
        }
        // What the transformer attends to: the source, with the masked cells as mask tokens in
        // mask mode.
        let model_reference = editing.then(|| grid_tensor(&references, guided, h, w, device));

        let sampler = Sampler::from_config(&self.scheduler, shared.steps, shared.temperature)?;
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

        // What the transformer needs every step.
        let rotary = self.mgt.rotary_table(
            &self
                .mgt
                .positions(text.encoder_hidden_states.dims()[1], h, w),
            device,
        );
        let res = self.options.resolution as f32;
        let micro_conds = Tensor::<2>::from_data(
            TensorData::new(
                [res, res, 0.0, 0.0, AESTHETIC_SCORE].repeat(rows_in_batch),
                [rows_in_batch, 5],
            ),
            device,
        );
        let capture = match &shared.hold {
            None => CaptureRequest::none(),
            Some((_, blocks)) => {
                let first_cond = if guided { n } else { 0 };
                let mut request = CaptureRequest::blocks(blocks.iter().copied())
                    .with_batch_rows(first_cond..first_cond + n);
                if let Some(union) = union_rows(&rows) {
                    request = request.with_text_rows(union);
                }
                request
            }
        };
        let attention_grid = if self.mgt.config().downsample {
            (h / 2, w / 2)
        } else {
            (h, w)
        };
        let smoothing = AdaptiveSmoothing::default();
        let union = union_rows(&rows);

        let mut workspace = Workspace::default();
        let mut localisation: Vec<Vec<ScoreMap>> = vec![Vec::new(); n];
        for step in 0..shared.steps {
            let timestep = sampler.schedule().timestep(step)?;
            let mut input = MgtInput::new(
                grid_tensor(&tokens, guided, h, w, device),
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
            let output = self.mgt.forward(input)?;
            let logits = if guided {
                let [b, c, lh, lw] = output.logits.dims();
                let uncond = output.logits.clone().slice(0..b / 2);
                let cond = output.logits.slice(b / 2..b);
                debug_assert_eq!([b / 2, c, lh, lw], uncond.dims());
                uncond.clone() + (cond - uncond) * shared.guidance
            } else {
                output.logits
            };
            let [_, codebook, _, _] = logits.dims();
            let logits = read_f32(logits)?;

            // Localisation scores per item, from the conditional rows' captured maps.
            let mut scores: Vec<Option<ScoreMap>> = vec![None; n];
            if shared.hold.is_some() {
                let maps: Vec<Array3<f32>> = output
                    .captures
                    .iter()
                    .map(|c| to_array3(c.text_to_image.clone()))
                    .collect::<Result<_, _>>()?;
                for (k, score) in scores.iter_mut().enumerate() {
                    let views: Vec<_> = maps
                        .iter()
                        .map(|m| m.slice(ndarray::s![k..k + 1, .., ..]))
                        .collect();
                    let item_rows = rows[k].as_ref().map(|r| positions_in(r, union.as_deref()));
                    *score = Some(local_scores(
                        &views,
                        item_rows.as_deref(),
                        attention_grid.0,
                        attention_grid.1,
                        &smoothing,
                    )?);
                }
            }

            for k in 0..n {
                let item_logits = &logits[k * codebook * cells..(k + 1) * codebook * cells];
                let mut input = StepInput::new(
                    step,
                    Logits::new(item_logits, 1, codebook, h, w)?,
                    &tokens[k],
                );
                input.starting_mask_ratio = starting_ratio[k];
                if let (Some((threshold, _)), Some(score), Some(reference)) =
                    (&shared.hold, &scores[k], sources.get(k))
                    && *threshold > 0.0
                {
                    input.region_hold = Some(HoldInput {
                        threshold: *threshold,
                        scores: score.as_slice(),
                        score_height: score.height(),
                        score_width: score.width(),
                        reference,
                    });
                }
                let out = sampler.step(&input, &mut noise[k], &mut workspace)?;
                tokens[k] = out.prev_sample;
            }
            if shared.record {
                for (record, score) in localisation.iter_mut().zip(&scores) {
                    record.extend(score.clone());
                }
            }
            if let Some(callback) = progress.as_mut() {
                let event = StepEvent {
                    step: step + 1,
                    total: shared.steps,
                    tokens: &tokens,
                    scores: &scores,
                };
                if callback(&event) == Flow::Cancel {
                    return Err(EditError::Cancelled {
                        completed: step + 1,
                        total: shared.steps,
                    });
                }
            }
        }
        Ok(tokens
            .into_iter()
            .zip(localisation)
            .map(|(tokens, localisation)| Outcome {
                tokens,
                localisation,
            })
            .collect())
    }

    /// Decodes final token grids to images at the model resolution; mask tokens left in a grid
    /// decode as token 0, as in the reference.
    fn decode(&self, outcomes: &[Outcome]) -> Result<Vec<RgbImage>, EditError> {
        let (h, w) = self.token_grid();
        let mask_id = self.scheduler.mask_token_id;
        let mut images = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let ids: Vec<i64> = outcome
                .tokens
                .iter()
                .map(|&t| if t == mask_id { 0 } else { i64::from(t) })
                .collect();
            let grid = Tensor::<3, Int>::from_data(TensorData::new(ids, [1, h, w]), &self.device);
            images.extend(imaging::from_tensor(self.vq.decode(grid)?)?);
        }
        Ok(images)
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

/// Whether the VQ configuration asks for f32 decoding (`force_upcast`).
fn vq_upcasts(model_dir: &Path) -> Result<bool, EditError> {
    let config = editmgt_vq::VqConfig::from_file(&model_dir.join("vqvae/config.json"))?;
    Ok(config.force_upcast)
}

/// Token grids `[n, h, w]` as an Int tensor, twice over (`[2n, h, w]`) for the guidance batch.
fn grid_tensor(
    grids: &[Vec<u32>],
    twice: bool,
    h: usize,
    w: usize,
    device: &Device,
) -> Tensor<3, Int> {
    let copies = if twice { 2 } else { 1 };
    let mut ids: Vec<i64> = Vec::with_capacity(copies * grids.len() * h * w);
    for _ in 0..copies {
        for grid in grids {
            ids.extend(grid.iter().map(|&t| i64::from(t)));
        }
    }
    Tensor::from_data(TensorData::new(ids, [copies * grids.len(), h, w]), device)
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

fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, EditError> {
    tensor
        .cast(DType::F32)
        .try_into_data()
        .map_err(|e| EditError::Readback(format!("{e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| EditError::Readback(format!("{e:?}")))
}

fn read_i64<const D: usize>(tensor: Tensor<D, Int>) -> Result<Vec<i64>, EditError> {
    tensor
        .try_into_data()
        .map_err(|e| EditError::Readback(format!("{e:?}")))?
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| EditError::Readback(format!("{e:?}")))
}

fn to_array3(tensor: Tensor<3>) -> Result<Array3<f32>, EditError> {
    let [a, b, c] = tensor.dims();
    let data = read_f32(tensor)?;
    Array3::from_shape_vec((a, b, c), data).map_err(|e| EditError::Readback(e.to_string()))
}
