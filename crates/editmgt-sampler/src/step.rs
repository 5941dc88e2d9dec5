//! One sampler step: softmax, sampling, region hold, confidence and re-masking
//! (reference.md section 7).

use std::cell::RefCell;
use std::path::Path;

use rayon::prelude::*;

use crate::math::{exp_f32, ln_f32};
use crate::noise::{NoiseSource, gumbel};
use crate::schedule::check_starting_ratio;
use crate::{SamplerError, Schedule, SchedulerConfig, Temperature};

/// Positions processed together: the softmax and the sampling of a tile run as `TILE`
/// independent lanes over the codebook, reading `TILE` consecutive positions of each codebook
/// row of the channel-first logits (64 contiguous bytes, one cache line).
pub const TILE: usize = 16;

/// Smallest probability the confidence takes the logarithm of (the reference's clamp).
pub const MIN_PROBABILITY: f32 = 1e-20;

thread_local! {
    /// Per-thread tile buffer (`codebook x TILE` values), reused across steps.
    static TILE_BUFFER: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The transformer's logits for one step, `[B, codebook, H, W]` (channel-first, row-major),
/// borrowed as they are: the sampler reads them in this layout, without a transpose copy.
#[derive(Debug, Clone, Copy)]
pub struct Logits<'a> {
    data: &'a [f32],
    batch: usize,
    codebook: usize,
    height: usize,
    width: usize,
}

impl<'a> Logits<'a> {
    /// Wraps `[batch, codebook, height, width]` logits; the length must match and no dimension
    /// may be zero.
    pub fn new(
        data: &'a [f32],
        batch: usize,
        codebook: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, SamplerError> {
        for (name, v) in [
            ("batch", batch),
            ("codebook", codebook),
            ("height", height),
            ("width", width),
        ] {
            if v == 0 {
                return Err(SamplerError::ZeroDimension(name));
            }
        }
        if codebook > u32::MAX as usize {
            return Err(SamplerError::InvalidParameter {
                name: "codebook",
                value: codebook.to_string(),
                reason: "token ids are u32",
            });
        }
        let expected = batch * codebook * height * width;
        if data.len() != expected {
            return Err(SamplerError::LengthMismatch {
                what: "logits [B, codebook, H, W]",
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            data,
            batch,
            codebook,
            height,
            width,
        })
    }

    /// The batch size `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The codebook size.
    pub fn codebook(&self) -> usize {
        self.codebook
    }

    /// The token grid height `H`.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The token grid width `W`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Positions per batch row, `L = H * W`.
    pub fn positions(&self) -> usize {
        self.height * self.width
    }

    /// The raw values.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
}

/// Region hold: keep a masked token equal to the source where the localisation score is low.
///
/// At a masked position whose score is below `threshold`, the prediction is replaced by the
/// reference (source) token. `threshold == 0` turns the hold off (the reference's `lambda > 0`
/// condition); it must be in `[0, 1]`.
#[derive(Debug, Clone, Copy)]
pub struct RegionHold<'a> {
    /// The threshold `lambda` in `[0, 1]`.
    pub threshold: f32,
    /// Localisation scores `[B, score_height * score_width]`, e.g. from
    /// `editmgt_attention::local_scores`. When the score grid is coarser than the token grid
    /// they are upsampled to it bicubically (`editmgt_attention::resize_bicubic`; the reference
    /// only does so for exactly 4096 tokens from 32x32); a finer grid is an error.
    pub scores: &'a [f32],
    /// The score grid height.
    pub score_height: usize,
    /// The score grid width.
    pub score_width: usize,
    /// The source tokens `[B, H * W]`. At held positions they must be codebook indices (in
    /// mask mode pass the source tokens, not the masked start tokens).
    pub reference: &'a [u32],
}

/// Everything one step reads.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The step index `i` in `0..T` (the loop counter; the timestep is `T - 1 - i`).
    pub step_index: usize,
    /// The (guided) logits.
    pub logits: Logits<'a>,
    /// The current tokens `[B, H * W]` (mask token where still unknown).
    pub sample: &'a [u32],
    /// `1` when starting from all mask tokens; in mask mode the masked fraction of the start
    /// tokens (`masked / (B * H * W)` in `f32`, as the reference computes it). In `[0, 1]`.
    pub starting_mask_ratio: f32,
    /// Region hold, if enabled.
    pub region_hold: Option<RegionHold<'a>>,
}

impl<'a> StepInput<'a> {
    /// A step without region hold, starting ratio 1.
    pub fn new(step_index: usize, logits: Logits<'a>, sample: &'a [u32]) -> Self {
        Self {
            step_index,
            logits,
            sample,
            starting_mask_ratio: 1.0,
            region_hold: None,
        }
    }
}

/// What a step returns (both `[B, H * W]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// The tokens for the next step (the final tokens after the last step).
    pub prev_sample: Vec<u32>,
    /// The full prediction of this step (every position decided).
    pub pred_original_sample: Vec<u32>,
}

/// Reusable buffers of [`Sampler::step`], so that a loop of steps allocates only once.
/// Create one per loop (or per thread) with [`Workspace::default`].
#[derive(Debug, Default, Clone)]
pub struct Workspace {
    sampling: Vec<f32>,
    gumbel: Vec<f32>,
    scores: Vec<f32>,
    hold: Vec<bool>,
    selected: Vec<f32>,
    confidence: Vec<f32>,
    order: Vec<f32>,
}

/// The region-hold MaskGIT sampler: a mask token id and a [`Schedule`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    mask_token_id: u32,
    schedule: Schedule,
}

impl Sampler {
    /// A sampler with the given mask token and schedule.
    pub fn new(mask_token_id: u32, schedule: Schedule) -> Self {
        Self {
            mask_token_id,
            schedule,
        }
    }

    /// A sampler of `num_steps` steps for a scheduler configuration.
    pub fn from_config(
        config: &SchedulerConfig,
        num_steps: usize,
        temperature: Temperature,
    ) -> Result<Self, SamplerError> {
        let schedule = Schedule::new(config.masking()?, num_steps, temperature)?;
        Ok(Self::new(config.mask_token_id, schedule))
    }

    /// A sampler of `num_steps` steps for the model folder's
    /// `scheduler/scheduler_config.json`.
    pub fn from_model_dir(
        model: &Path,
        num_steps: usize,
        temperature: Temperature,
    ) -> Result<Self, SamplerError> {
        Self::from_config(
            &SchedulerConfig::from_model_dir(model)?,
            num_steps,
            temperature,
        )
    }

    /// The mask token id.
    pub fn mask_token_id(&self) -> u32 {
        self.mask_token_id
    }

    /// The step schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The starting mask ratio of mask mode: the fraction of mask tokens in the start tokens
    /// (all batch rows together), `masked / total` in `f32` as the reference computes it
    /// (`mask.sum() / latents.numel()`). 0 for no tokens.
    pub fn starting_mask_ratio(&self, start_tokens: &[u32]) -> f32 {
        if start_tokens.is_empty() {
            return 0.0;
        }
        let masked = start_tokens
            .iter()
            .filter(|&&t| t == self.mask_token_id)
            .count();
        masked as f32 / start_tokens.len() as f32
    }

    /// Runs one step and returns new token vectors (see [`Sampler::step_into`]).
    pub fn step<N: NoiseSource + ?Sized>(
        &self,
        input: &StepInput<'_>,
        noise: &mut N,
        workspace: &mut Workspace,
    ) -> Result<StepOutput, SamplerError> {
        let n = input.logits.batch() * input.logits.positions();
        let mut prev_sample = vec![0; n];
        let mut pred_original_sample = vec![0; n];
        self.step_into(
            input,
            noise,
            workspace,
            &mut prev_sample,
            &mut pred_original_sample,
        )?;
        Ok(StepOutput {
            prev_sample,
            pred_original_sample,
        })
    }

    /// Runs step `input.step_index`, writing the next tokens to `prev_sample` and the full
    /// prediction to `pred_original_sample` (both `[B, H * W]`).
    ///
    /// Per batch row, with `p = softmax(logits)` over the codebook (in `f32`, normalised by the
    /// reciprocal of the sum as PyTorch does) and `unknown = (sample == mask)`:
    ///
    /// 1. at unknown positions the token is sampled from `p` (the first `k` with
    ///    `cumsum(p)[k] > u * sum(p)`, sums in `f64`); known positions keep their token;
    /// 2. region hold: where `unknown & (score < threshold)`, the reference token;
    /// 3. at the last step the prediction is returned as both outputs; otherwise
    ///    `n = max(1, min(count(unknown) - 1, floor(L * starting_ratio * mask_ratio)))`
    ///    positions (see below for `count(unknown) <= 1`) are masked again: those whose
    ///    confidence `ln(max(p[pred], 1e-20)) + temperature * gumbel` is strictly below the
    ///    `n`-th smallest confidence (0-based) of the row.
    ///
    /// Noise is drawn from `noise` as the [noise contract](crate::noise) says. Positions are
    /// processed in parallel (rayon); the result is bit-identical for any number of threads.
    ///
    /// Two deliberate differences from the reference, both outside its normal operating range:
    /// known positions get confidence `+inf` (the reference uses `ln(f32::MAX) + T g`, which a
    /// masked position can exceed at temperatures above about 4.3, so a known token could be
    /// masked again), and a row with at most one masked token masks nothing again (the
    /// reference's `max(1, ...)` would keep its last masked token masked, or mask a known one
    /// when none is left). So: known tokens never change, the mask count never grows, and every
    /// step with a masked token unmasks at least one.
    pub fn step_into<N: NoiseSource + ?Sized>(
        &self,
        input: &StepInput<'_>,
        noise: &mut N,
        workspace: &mut Workspace,
        prev_sample: &mut [u32],
        pred_original_sample: &mut [u32],
    ) -> Result<(), SamplerError> {
        let logits = input.logits;
        let (batch, codebook, positions) = (logits.batch(), logits.codebook(), logits.positions());
        let n = batch * positions;
        let temperature = self.schedule.temperature(input.step_index)?;
        check_starting_ratio(input.starting_mask_ratio)?;
        for (what, len) in [
            ("sample [B, H*W]", input.sample.len()),
            ("prev_sample [B, H*W]", prev_sample.len()),
            ("pred_original_sample [B, H*W]", pred_original_sample.len()),
        ] {
            if len != n {
                return Err(SamplerError::LengthMismatch {
                    what,
                    expected: n,
                    found: len,
                });
            }
        }
        let hold = match input.region_hold {
            Some(h) => {
                check_region_hold(&h, &logits)?;
                (h.threshold > 0.0).then_some(h)
            }
            None => None,
        };
        let last = self.schedule.is_last(input.step_index);

        let Workspace {
            sampling,
            gumbel: gumbel_uniforms,
            scores,
            hold: held,
            selected,
            confidence,
            order,
        } = workspace;

        // The noise, in contract order.
        sampling.resize(n, 0.0);
        noise.fill_uniform(sampling)?;
        if !last {
            gumbel_uniforms.resize(n, 0.0);
            noise.fill_uniform(gumbel_uniforms)?;
        }

        // Region hold: which masked positions take the reference token.
        held.clear();
        held.resize(n, false);
        if let Some(h) = &hold {
            let token_scores: &[f32] =
                if (h.score_height, h.score_width) == (logits.height(), logits.width()) {
                    h.scores
                } else {
                    upsample_scores(h, &logits, scores)?;
                    scores
                };
            for i in 0..n {
                if input.sample[i] == self.mask_token_id && token_scores[i] < h.threshold {
                    let token = h.reference[i];
                    if token as usize >= codebook {
                        return Err(SamplerError::TokenOutOfRange {
                            token,
                            batch: i / positions,
                            position: i % positions,
                            codebook,
                        });
                    }
                    held[i] = true;
                }
            }
        }

        // Softmax, sampling and the selected probabilities, tile by tile in parallel.
        selected.resize(n, 0.0);
        let tiles = Tiles {
            logits: logits.data(),
            codebook,
            positions,
            sample: input.sample,
            held,
            reference: hold.map(|h| h.reference),
            uniforms: sampling,
            mask: self.mask_token_id,
        };
        pred_original_sample
            .par_chunks_mut(positions)
            .zip(selected.par_chunks_mut(positions))
            .enumerate()
            .try_for_each(|(row, (pred_row, q_row))| {
                pred_row
                    .par_chunks_mut(TILE)
                    .zip(q_row.par_chunks_mut(TILE))
                    .enumerate()
                    .try_for_each(|(t, (pred, q))| tiles.run(row, t * TILE, pred, q))
            })?;

        if last {
            prev_sample.copy_from_slice(pred_original_sample);
            return Ok(());
        }

        // Confidence and re-masking, row by row.
        let mask_len =
            self.schedule
                .mask_len(positions, input.step_index, input.starting_mask_ratio)?;
        confidence.resize(n, 0.0);
        let mask = self.mask_token_id;
        confidence
            .par_chunks_mut(TILE * 64)
            .zip(input.sample.par_chunks(TILE * 64))
            .zip(selected.par_chunks(TILE * 64))
            .zip(gumbel_uniforms.par_chunks(TILE * 64))
            .for_each(|(((conf, sample), q), u)| {
                for (((c, &s), &q), &u) in conf.iter_mut().zip(sample).zip(q).zip(u) {
                    *c = if s == mask {
                        ln_f32(q.max(MIN_PROBABILITY)) + temperature * gumbel(u)
                    } else {
                        f32::INFINITY
                    };
                }
            });
        for row in 0..batch {
            let range = row * positions..(row + 1) * positions;
            let unknown = input.sample[range.clone()]
                .iter()
                .filter(|&&t| t == mask)
                .count();
            let remask = if unknown <= 1 {
                0
            } else {
                mask_len.max(1).min(unknown - 1)
            };
            let pred = &pred_original_sample[range.clone()];
            let prev = &mut prev_sample[range.clone()];
            if remask == 0 {
                prev.copy_from_slice(pred);
                continue;
            }
            let conf = &confidence[range];
            order.clear();
            order.extend_from_slice(conf);
            let (_, &mut cutoff, _) = order.select_nth_unstable_by(remask, f32::total_cmp);
            for ((p, &token), &c) in prev.iter_mut().zip(pred).zip(conf) {
                *p = if c < cutoff { mask } else { token };
            }
        }
        Ok(())
    }
}

fn check_region_hold(h: &RegionHold<'_>, logits: &Logits<'_>) -> Result<(), SamplerError> {
    if !(0.0..=1.0).contains(&h.threshold) {
        return Err(SamplerError::InvalidParameter {
            name: "threshold",
            value: h.threshold.to_string(),
            reason: "must be in [0, 1]",
        });
    }
    let n = logits.batch() * logits.positions();
    if h.reference.len() != n {
        return Err(SamplerError::LengthMismatch {
            what: "reference tokens [B, H*W]",
            expected: n,
            found: h.reference.len(),
        });
    }
    if h.score_height == 0 || h.score_width == 0 {
        return Err(SamplerError::ZeroDimension("score grid"));
    }
    if h.score_height > logits.height() || h.score_width > logits.width() {
        return Err(SamplerError::ScoreGrid {
            score: (h.score_height, h.score_width),
            tokens: (logits.height(), logits.width()),
        });
    }
    let expected = logits.batch() * h.score_height * h.score_width;
    if h.scores.len() != expected {
        return Err(SamplerError::LengthMismatch {
            what: "scores [B, score_height*score_width]",
            expected,
            found: h.scores.len(),
        });
    }
    Ok(())
}

/// Bicubic upsampling of every batch item's scores onto the token grid, into `out`.
fn upsample_scores(
    h: &RegionHold<'_>,
    logits: &Logits<'_>,
    out: &mut Vec<f32>,
) -> Result<(), SamplerError> {
    out.clear();
    let per_item = h.score_height * h.score_width;
    for item in h.scores.chunks_exact(per_item) {
        let grid = ndarray::ArrayView2::from_shape((h.score_height, h.score_width), item)
            .expect("length checked");
        let up = editmgt_attention::resize_bicubic(grid, logits.height(), logits.width())?;
        out.extend(up.iter());
    }
    Ok(())
}

/// What every tile reads.
struct Tiles<'a> {
    logits: &'a [f32],
    codebook: usize,
    positions: usize,
    sample: &'a [u32],
    held: &'a [bool],
    reference: Option<&'a [u32]>,
    uniforms: &'a [f32],
    mask: u32,
}

impl Tiles<'_> {
    /// Softmax, sampling and selected probability of positions `j0 .. j0 + pred.len()` of batch
    /// row `row`. Writes the prediction to `pred` and `p[pred]` to `q` (unused at known
    /// positions).
    fn run(
        &self,
        row: usize,
        j0: usize,
        pred: &mut [u32],
        q: &mut [f32],
    ) -> Result<(), SamplerError> {
        let width = pred.len();
        let first = row * self.positions + j0;
        let mut unknown = [false; TILE];
        let mut held = [false; TILE];
        let mut any_unknown = false;
        let mut any_sampled = false;
        for k in 0..width {
            let token = self.sample[first + k];
            if token == self.mask {
                unknown[k] = true;
                any_unknown = true;
                held[k] = self.held[first + k];
                any_sampled |= !held[k];
            } else {
                pred[k] = token;
                q[k] = f32::INFINITY;
            }
        }
        if !any_unknown {
            return Ok(());
        }
        let codebook = self.codebook;
        let row_logits =
            &self.logits[row * codebook * self.positions..(row + 1) * codebook * self.positions];
        TILE_BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            if buffer.len() < codebook * TILE {
                buffer.resize(codebook * TILE, 0.0);
            }
            let tile = &mut buffer[..codebook * TILE];

            // Gather the tile (codebook rows of `TILE` positions) and its per-position maximum.
            let mut max = [f32::NEG_INFINITY; TILE];
            for (c, lanes) in tile.chunks_exact_mut(TILE).enumerate() {
                let start = c * self.positions + j0;
                let src = &row_logits[start..start + width];
                if width == TILE {
                    lanes.copy_from_slice(src);
                } else {
                    lanes[..width].copy_from_slice(src);
                    lanes[width..].fill(0.0);
                }
                for k in 0..TILE {
                    max[k] = max[k].max(lanes[k]);
                }
            }

            // exp(x - max) and its sum.
            let mut sum = [0f32; TILE];
            for lanes in tile.chunks_exact_mut(TILE) {
                for k in 0..TILE {
                    let e = exp_f32(lanes[k] - max[k]);
                    lanes[k] = e;
                    sum[k] += e;
                }
            }
            for k in 0..width {
                if unknown[k] && !sum[k].is_finite() {
                    return Err(SamplerError::InvalidLogits {
                        batch: row,
                        position: j0 + k,
                    });
                }
            }
            let inv = sum.map(|s| 1.0 / s);

            // Probabilities (f32) and their f64 total.
            let mut total = [0f64; TILE];
            for lanes in tile.chunks_exact_mut(TILE) {
                for k in 0..TILE {
                    let p = lanes[k] * inv[k];
                    lanes[k] = p;
                    total[k] += f64::from(p);
                }
            }

            // Inverse-CDF sampling: the first k with cumsum(p)[k] > u * sum(p), i.e. the number
            // of k with cumsum(p)[k] <= u * sum(p) (the cumulative sum never decreases).
            if any_sampled {
                let mut target = [-1f64; TILE];
                for k in 0..width {
                    if unknown[k] && !held[k] {
                        target[k] = f64::from(self.uniforms[first + k]) * total[k];
                    }
                }
                let mut cum = [0f64; TILE];
                let mut count = [0u32; TILE];
                for (c, lanes) in tile.chunks_exact(TILE).enumerate() {
                    for k in 0..TILE {
                        cum[k] += f64::from(lanes[k]);
                        count[k] += u32::from(cum[k] <= target[k]);
                    }
                    if c % 64 == 63 && (0..TILE).all(|k| cum[k] > target[k]) {
                        break;
                    }
                }
                for k in 0..width {
                    if unknown[k] && !held[k] {
                        let mut index = count[k] as usize;
                        if index >= codebook {
                            // u * sum(p) reached the total (only for u = 1): the last token
                            // with non-zero probability.
                            index = (0..codebook)
                                .rev()
                                .find(|&c| tile[c * TILE + k] > 0.0)
                                .unwrap_or(codebook - 1);
                        }
                        pred[k] = index as u32;
                    }
                }
            }
            for k in 0..width {
                if unknown[k] {
                    if held[k] {
                        // Checked against the codebook size before the tiles run.
                        pred[k] = self.reference.map_or(0, |r| r[first + k]);
                    }
                    q[k] = tile[pred[k] as usize * TILE + k];
                }
            }
            Ok(())
        })
    }
}
