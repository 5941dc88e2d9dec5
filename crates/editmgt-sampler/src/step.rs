//! One sampler step on the device: softmax, sampling, region hold, confidence and re-masking
//! (docs/model.md section 7).

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Int, Tensor};
use editmgt_core::select::{default_int, kth_smallest};

use crate::noise::StepNoise;
use crate::schedule::check_starting_ratio;
use crate::{SamplerError, Schedule, SchedulerConfig, Temperature};

/// Smallest probability the confidence takes the logarithm of (the reference's clamp).
pub const MIN_PROBABILITY: f32 = 1e-20;

/// Default bound on the elements of one block of the softmax and sampling (`B x codebook x
/// positions`): 2^24 floats, 64 MiB, below the 128 MiB storage-buffer binding limit of many GPU
/// adapters. See [`Sampler::with_block_elements`].
pub const DEFAULT_BLOCK_ELEMENTS: usize = 1 << 24;

/// Region hold: keep a masked token equal to the source where the localisation score is low.
///
/// At a masked position whose score is below `threshold`, the prediction is replaced by the
/// reference (source) token. `threshold == 0` turns the hold off (the reference's `lambda > 0`
/// condition); it must be in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct RegionHold {
    /// The threshold `lambda` in `[0, 1]`.
    pub threshold: f32,
    /// Localisation scores on the token grid, `[B, H * W]` (for example
    /// `editmgt_attention::Localization::on_tokens`, which resizes the attention grid's scores
    /// bicubically as the reference does).
    pub scores: Tensor<2>,
    /// The source tokens `[B, H * W]`. At held positions they must be codebook indices (in mask
    /// mode pass the source tokens, not the masked start tokens); one that is not is reported by
    /// [`Faults::check`].
    pub reference: Tensor<2, Int>,
}

/// The starting mask ratio of each batch row (see [`StepInput::starting_mask_ratio`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StartingRatio {
    /// The same ratio for every row (1 when starting from all mask tokens).
    All(f32),
    /// One ratio per batch row (mask mode with masks that differ between rows).
    PerRow(Vec<f32>),
}

impl Default for StartingRatio {
    fn default() -> Self {
        Self::All(1.0)
    }
}

/// Everything one step reads, all of it on one device.
#[derive(Debug, Clone)]
pub struct StepInput {
    /// The step index `i` in `0..T` (the loop counter; the timestep is `T - 1 - i`).
    pub step_index: usize,
    /// The (guided) logits `[B, codebook, H, W]`, as the transformer returns them (a half
    /// precision tensor is computed in `f32`).
    pub logits: Tensor<4>,
    /// The current tokens `[B, H * W]` (mask token where still unknown).
    pub sample: Tensor<2, Int>,
    /// This step's noise, drawn by the [noise contract](crate::noise) ([`StepNoise::draw`]).
    pub noise: StepNoise,
    /// `1` when starting from all mask tokens; in mask mode the masked fraction of the start
    /// tokens (`masked / (H * W)` in `f32`, as the reference computes it). In `[0, 1]`.
    pub starting_mask_ratio: StartingRatio,
    /// Region hold, if enabled.
    pub region_hold: Option<RegionHold>,
}

impl StepInput {
    /// A step without region hold, starting ratio 1.
    pub fn new(
        step_index: usize,
        logits: Tensor<4>,
        sample: Tensor<2, Int>,
        noise: StepNoise,
    ) -> Self {
        Self {
            step_index,
            logits,
            sample,
            noise,
            starting_mask_ratio: StartingRatio::default(),
            region_hold: None,
        }
    }
}

/// What a step returns, on the input's device (tokens `[B, H * W]`).
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The tokens for the next step (the final tokens after the last step).
    pub prev_sample: Tensor<2, Int>,
    /// The full prediction of this step (every position decided).
    pub pred_original_sample: Tensor<2, Int>,
    /// Problems with the input found on the device (non-finite logits, reference tokens outside
    /// the codebook), to [check](Faults::check) when convenient.
    pub faults: Faults,
}

/// Input problems a step found on the device, kept there until [`Faults::check`] reads them:
/// a loop can merge the faults of all its steps ([`Faults::merge`]) and read them once at the
/// end, with no device-to-host transfer per step.
#[derive(Debug, Clone)]
pub struct Faults {
    /// `[flat index + 1 of a position with non-finite logits (0: none), flat index + 1 of a held
    /// position whose reference token is not a codebook index (0: none), that token]`.
    values: Tensor<1, Int>,
    positions: usize,
    codebook: usize,
}

impl Faults {
    /// Merges the faults of a later step: the earlier step's fault wins.
    pub fn merge(self, later: Faults) -> Faults {
        let keep = self.values.clone().greater_elem(0);
        // The token entry follows its position entry.
        let keep = Tensor::cat(vec![keep.clone().slice(0..2), keep.slice(1..2)], 0);
        Faults {
            values: later.values.mask_where(keep, self.values),
            ..self
        }
    }

    /// The raw `[3]` fault tensor (see the field docs of [`Faults`]), for callers that read it
    /// back together with other data; [`Faults::from_values`] interprets it.
    pub fn tensor(&self) -> &Tensor<1, Int> {
        &self.values
    }

    /// Reads the faults back (three integers) and turns the first into an error.
    pub fn check(self) -> Result<(), SamplerError> {
        let (positions, codebook) = (self.positions, self.codebook);
        let values = self
            .values
            .try_into_data()
            .map_err(|e| SamplerError::Readback(format!("{e:?}")))?
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| SamplerError::Readback(format!("{e:?}")))?;
        Self::from_values(&values, positions, codebook)
    }

    /// Interprets fault values read back from [`Faults::tensor`] for rows of `positions`
    /// positions and a codebook of `codebook` entries.
    pub fn from_values(
        values: &[i64],
        positions: usize,
        codebook: usize,
    ) -> Result<(), SamplerError> {
        let at = |flat: i64| {
            let flat = (flat - 1) as usize;
            (flat / positions.max(1), flat % positions.max(1))
        };
        match values {
            [bad, _, _] if *bad > 0 => {
                let (batch, position) = at(*bad);
                Err(SamplerError::InvalidLogits { batch, position })
            }
            [_, bad, token] if *bad > 0 => {
                let (batch, position) = at(*bad);
                Err(SamplerError::TokenOutOfRange {
                    token: *token,
                    batch,
                    position,
                    codebook,
                })
            }
            [_, _, _] => Ok(()),
            other => Err(SamplerError::Readback(format!(
                "expected 3 fault values, found {}",
                other.len()
            ))),
        }
    }
}

/// The region-hold MaskGIT sampler: a mask token id and a [`Schedule`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    mask_token_id: u32,
    schedule: Schedule,
    block_elements: usize,
}

impl Sampler {
    /// A sampler with the given mask token and schedule.
    pub fn new(mask_token_id: u32, schedule: Schedule) -> Self {
        Self {
            mask_token_id,
            schedule,
            block_elements: DEFAULT_BLOCK_ELEMENTS,
        }
    }

    /// Bounds the elements (`B x codebook x positions`) of each block of positions that the
    /// softmax and sampling process at once (default [`DEFAULT_BLOCK_ELEMENTS`]): a GPU whose
    /// storage-buffer binding limit is `N` bytes needs at most `N / 4`. At least one position
    /// is processed per block.
    pub fn with_block_elements(mut self, elements: usize) -> Self {
        self.block_elements = elements.max(1);
        self
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

    /// Runs step `input.step_index` on the input's device.
    ///
    /// Per batch row, with `p = softmax(logits)` over the codebook (in `f32`, the backend's
    /// softmax, codebook-last) and `unknown = (sample == mask)`:
    ///
    /// 1. at unknown positions the token is sampled from `p`: the first `k` with
    ///    `cumsum(p)[k] > u * sum(p)` (the count of `k` with `cumsum(p)[k] <= u * sum(p)`),
    ///    found by bisection over the codebook (one gather per halving, not a comparison of
    ///    every probability). The cumulative sum is in `f32` on the device, where the reference
    ///    sums in `f64`: a rare near-tie can pick the neighbouring token. Known positions keep
    ///    their token;
    /// 2. region hold: where `unknown & (score < threshold)`, the reference token;
    /// 3. at the last step the prediction is returned as both outputs; otherwise
    ///    `n = max(1, min(count(unknown) - 1, floor(L * starting_ratio * mask_ratio)))`
    ///    positions (see below for `count(unknown) <= 1`) are masked again: those whose
    ///    confidence `ln(max(p[pred], 1e-20)) + temperature * gumbel` is strictly below the
    ///    `n`-th smallest confidence (0-based) of the row, found on the device by bisection
    ///    ([`editmgt_core::select::kth_smallest`]) rather than by sorting.
    ///
    /// Nothing is read back: the outputs and the [`Faults`] stay on the device. The softmax and
    /// sampling run over blocks of positions of at most the sampler's block size.
    ///
    /// Two deliberate differences from the reference, both outside its normal operating range:
    /// known positions get confidence `+inf` (the reference uses `ln(f32::MAX) + T g`, which a
    /// masked position can exceed at temperatures above about 4.3, so a known token could be
    /// masked again), and a row with at most one masked token masks nothing again (the
    /// reference's `max(1, ...)` would keep its last masked token masked, or mask a known one
    /// when none is left). So: known tokens never change, the mask count never grows, and every
    /// step with a masked token unmasks at least one.
    pub fn step(&self, input: StepInput) -> Result<StepOutput, SamplerError> {
        let [batch, codebook, height, width] = input.logits.dims();
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
        if codebook >= i32::MAX as usize {
            return Err(SamplerError::InvalidParameter {
                name: "codebook",
                value: codebook.to_string(),
                reason: "token ids must fit in 31 bits",
            });
        }
        let positions = height * width;
        let temperature = self.schedule.temperature(input.step_index)?;
        let last = self.schedule.is_last(input.step_index);
        let expected = [batch, positions];
        check_dims("sample [B, H*W]", input.sample.dims(), expected)?;
        check_dims(
            "sampling noise [B, H*W]",
            input.noise.sampling.dims(),
            expected,
        )?;
        match (&input.noise.gumbel, last) {
            (Some(g), false) => check_dims("Gumbel noise [B, H*W]", g.dims(), expected)?,
            (None, false) => {
                return Err(SamplerError::InvalidParameter {
                    name: "noise",
                    value: "no Gumbel noise".into(),
                    reason: "every step but the last needs Gumbel noise",
                });
            }
            _ => {}
        }
        let mask_lens = self.mask_lens(
            &input.starting_mask_ratio,
            batch,
            positions,
            input.step_index,
        )?;
        let hold = match input.region_hold {
            Some(h) => {
                if !(0.0..=1.0).contains(&h.threshold) {
                    return Err(SamplerError::InvalidParameter {
                        name: "threshold",
                        value: h.threshold.to_string(),
                        reason: "must be in [0, 1]",
                    });
                }
                check_dims("region-hold scores [B, H*W]", h.scores.dims(), expected)?;
                check_dims("reference tokens [B, H*W]", h.reference.dims(), expected)?;
                (h.threshold > 0.0).then_some(h)
            }
            None => None,
        };

        let device = input.logits.device();
        let mask = i64::from(self.mask_token_id);
        let sample = default_int(input.sample);
        let hold = hold.map(|h| RegionHold {
            reference: default_int(h.reference),
            ..h
        });
        let unknown = sample.clone().equal_elem(mask);
        let held = hold.as_ref().map(|h| {
            unknown
                .clone()
                .bool_and(h.scores.clone().lower_elem(h.threshold))
        });

        // Softmax, sampling and the selected probabilities, block by block of positions.
        let logits = input.logits.reshape([batch, codebook, positions]);
        let logits = if logits.dtype() == DType::F32 {
            logits
        } else {
            logits.cast(DType::F32)
        };
        let span = (self.block_elements / (batch * codebook)).clamp(1, positions);
        let mut preds = Vec::new();
        let mut probs = Vec::new();
        let mut bads = Vec::new();
        let mut start = 0;
        while start < positions {
            let end = (start + span).min(positions);
            let r = start..end;
            let block = Block {
                logits: logits.clone().slice([0..batch, 0..codebook, r.clone()]),
                uniforms: input.noise.sampling.clone().slice([0..batch, r.clone()]),
                sample: sample.clone().slice([0..batch, r.clone()]),
                unknown: unknown.clone().slice([0..batch, r.clone()]),
                held: held
                    .as_ref()
                    .map(|h| h.clone().slice([0..batch, r.clone()])),
                reference: hold
                    .as_ref()
                    .map(|h| h.reference.clone().slice([0..batch, r.clone()])),
            };
            let (pred, q, bad) = block.run(codebook);
            preds.push(pred);
            probs.push(q);
            bads.push(bad);
            start = end;
        }
        let pred = Tensor::cat(preds, 1);
        let q = Tensor::cat(probs, 1);
        let bad = Tensor::cat(bads, 1);

        let invalid_logits = first_position(bad, None).slice(0..1);
        let bad_reference = match (&held, &hold) {
            (Some(held), Some(h)) => {
                let out = h
                    .reference
                    .clone()
                    .lower_elem(0)
                    .bool_or(h.reference.clone().greater_equal_elem(codebook as i64))
                    .bool_and(held.clone());
                first_position(out, Some(h.reference.clone()))
            }
            _ => Tensor::<1, Int>::zeros([2], &device),
        };
        let faults = Faults {
            values: Tensor::cat(vec![invalid_logits, bad_reference], 0),
            positions,
            codebook,
        };

        if last {
            return Ok(StepOutput {
                prev_sample: pred.clone(),
                pred_original_sample: pred,
                faults,
            });
        }

        // Confidence and re-masking, on whole rows.
        let gumbel = input.noise.gumbel.expect("checked above");
        let confidence = (q.clamp_min(MIN_PROBABILITY).log() + gumbel * temperature)
            .mask_fill(unknown.clone().bool_not(), f32::INFINITY);
        let unknown_count = default_int(unknown.int().sum_dim(1)); // [B, 1]
        let mask_lens = match mask_lens {
            MaskLens::All(n) => Tensor::<2, Int>::full([batch, 1], n.max(1) as i64, &device),
            MaskLens::PerRow(ns) => Tensor::<2, Int>::from_data(
                burn::tensor::TensorData::new(
                    ns.iter().map(|&n| n.max(1) as i64).collect::<Vec<_>>(),
                    [batch, 1],
                ),
                &device,
            ),
        };
        // max(1, min(unknown - 1, n)), and 0 when at most one position is masked.
        let remask = (unknown_count - 1).min_pair(mask_lens).clamp_min(0);
        let cutoff = kth_smallest(confidence.clone(), remask);
        let again = confidence.lower(cutoff.expand([batch, positions]));
        Ok(StepOutput {
            prev_sample: pred.clone().mask_fill(again, mask),
            pred_original_sample: pred,
            faults,
        })
    }

    /// `floor(L * starting_ratio * mask_ratio)` of each row.
    fn mask_lens(
        &self,
        ratio: &StartingRatio,
        batch: usize,
        positions: usize,
        step_index: usize,
    ) -> Result<MaskLens, SamplerError> {
        Ok(match ratio {
            StartingRatio::All(r) => {
                MaskLens::All(self.schedule.mask_len(positions, step_index, *r)?)
            }
            StartingRatio::PerRow(rows) => {
                if rows.len() != batch {
                    return Err(SamplerError::LengthMismatch {
                        what: "starting mask ratios (one per batch row)",
                        expected: batch,
                        found: rows.len(),
                    });
                }
                for &r in rows {
                    check_starting_ratio(r)?;
                }
                let lens = rows
                    .iter()
                    .map(|&r| self.schedule.mask_len(positions, step_index, r))
                    .collect::<Result<Vec<_>, _>>()?;
                if lens.windows(2).all(|w| w[0] == w[1]) {
                    MaskLens::All(lens[0])
                } else {
                    MaskLens::PerRow(lens)
                }
            }
        })
    }
}

enum MaskLens {
    All(usize),
    PerRow(Vec<usize>),
}

fn check_dims(
    what: &'static str,
    found: [usize; 2],
    expected: [usize; 2],
) -> Result<(), SamplerError> {
    if found != expected {
        return Err(SamplerError::ShapeMismatch {
            what,
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// `[flat index + 1, value]` of a position where `mask` is true (`[0, 0]` when none), with the
/// value taken from `values` (0 without).
fn first_position(mask: Tensor<2, Bool>, values: Option<Tensor<2, Int>>) -> Tensor<1, Int> {
    let [b, l] = mask.dims();
    let flat = mask.reshape([b * l]);
    let any = default_int(flat.clone().any().int()); // [1]
    let index = default_int(flat.int().argmax(0)); // [1]
    let value = match values {
        Some(v) => v.reshape([b * l]).gather(0, index.clone()) * any.clone(),
        None => any.clone().zeros_like(),
    };
    Tensor::cat(vec![(index + 1) * any, value], 0)
}

/// One block of positions of a step.
struct Block {
    logits: Tensor<3>,
    uniforms: Tensor<2>,
    sample: Tensor<2, Int>,
    unknown: Tensor<2, Bool>,
    held: Option<Tensor<2, Bool>>,
    reference: Option<Tensor<2, Int>>,
}

impl Block {
    /// The prediction `[B, n]`, its probability `[B, n]` and where the logits are not finite at
    /// an unknown position `[B, n]`.
    fn run(self, codebook: usize) -> (Tensor<2, Int>, Tensor<2>, Tensor<2, Bool>) {
        let [b, c, n] = self.logits.dims();
        // Codebook last, so that the softmax, the cumulative sum and the gathers run along
        // contiguous rows (the logits arrive channels-first); the softmax is the backend's
        // fused kernel where it has one.
        let p = softmax(self.logits.swap_dims(1, 2), 2); // [B, n, C]
        let cumulative = p.clone().cumsum(2);
        let total = cumulative.clone().slice([0..b, 0..n, c - 1..c]); // [B, n, 1]
        let target = self.uniforms.unsqueeze_dim::<3>(2) * total.clone();
        let sampled = inverse_cdf(cumulative, target, total.clone())
            .clamp_max(codebook as i64 - 1)
            .reshape([b, n]);
        let mut pred = self.sample.mask_where(self.unknown.clone(), sampled);
        if let (Some(held), Some(reference)) = (self.held, self.reference) {
            pred = pred.mask_where(held, reference);
        }
        let index = pred.clone().clamp(0, codebook as i64 - 1);
        let q = p.gather(2, index.unsqueeze_dim::<3>(2)).reshape([b, n]);
        // Non-finite logits make the softmax, and so its total, non-finite.
        let bad = total
            .reshape([b, n])
            .is_finite()
            .bool_not()
            .bool_and(self.unknown);
        (pred, q, bad)
    }
}

/// The sampled index of each row of a cumulative distribution `[B, n, C]` (non-decreasing
/// along the codebook): the count of `k` with `cumulative[k] <= target` and
/// `cumulative[k] < total`, i.e. the first `k` where `cumulative[k] > target` or
/// `cumulative[k] >= total` (`C` when there is none). `cumulative < total` keeps a uniform of 1
/// on the last token of non-zero probability. Found by bisection over the codebook with one
/// gather per halving (`ceil(log2(C + 1))` of them) instead of comparing all `B x n x C`
/// values; the predicate is monotone along a row, so the count and the first index agree.
fn inverse_cdf(cumulative: Tensor<3>, target: Tensor<3>, total: Tensor<3>) -> Tensor<3, Int> {
    let [b, n, c] = cumulative.dims();
    let device = cumulative.device();
    let mut lo = Tensor::<3, Int>::zeros([b, n, 1], &device);
    let mut hi = Tensor::<3, Int>::full([b, n, 1], c as i64, &device);
    let halvings = usize::BITS - c.leading_zeros(); // ceil(log2(c + 1))
    for _ in 0..halvings {
        let open = lo.clone().lower(hi.clone());
        let mid = (lo.clone() + hi.clone()).div_scalar(2);
        let value = cumulative
            .clone()
            .gather(2, mid.clone().clamp_max(c as i64 - 1));
        let found = value
            .clone()
            .greater(target.clone())
            .bool_or(value.greater_equal(total.clone()));
        hi = hi.mask_where(open.clone().bool_and(found.clone()), mid.clone());
        lo = lo.mask_where(open.bool_and(found.bool_not()), mid + 1);
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The bisection gives the count of `k` with `cumulative[k] <= target && cumulative[k] <
    /// total`, including at the ends (zero-probability tokens first or last, uniforms 0 and 1).
    #[test]
    fn inverse_cdf_counts_below_the_target() {
        let device = Device::flex();
        let rows: Vec<Vec<f32>> = vec![
            vec![0.0, 0.5, 1.0, 1.0],
            vec![0.25, 0.5, 0.75, 1.0],
            vec![0.0, 0.0, 0.0, 1.0],
            vec![0.1, 0.1, 0.9, 0.9],
        ];
        let targets = [0.0f32, 0.25, 0.5, 0.6, 0.9, 1.0];
        let c = rows[0].len();
        for row in &rows {
            for &u in &targets {
                let total = row[c - 1];
                let expected = row.iter().filter(|&&v| v <= u * total && v < total).count();
                let cumulative =
                    Tensor::<3>::from_data(TensorData::new(row.clone(), [1, 1, c]), &device);
                let t =
                    |v: f32| Tensor::<3>::from_data(TensorData::new(vec![v], [1, 1, 1]), &device);
                let found = inverse_cdf(cumulative, t(u * total), t(total))
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .unwrap();
                assert_eq!(found, [expected as i64], "row {row:?}, u {u}");
            }
        }
    }
}
