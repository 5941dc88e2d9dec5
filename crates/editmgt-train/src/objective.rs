//! The masked-token objective of the reference's `train.py`.
//!
//! Per example: `u ~ U[0, 1)`, mask ratio `r = max(cos(u pi/2), min_masking_rate)`,
//! `n = max(1, round(L r))` random positions replaced by the mask token; the transformer runs
//! with the source tokens as reference (strength 1) and the float timestep `r * 1000`; the
//! loss is the cross entropy of the logits at the masked positions, averaged over them.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use editmgt_mgt::{MgtInput, MgtTransformer};

use crate::TrainError;
use crate::rng::SplitMix64;

/// The label of positions that are not predicted (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// The reference's mask ratio for a uniform draw `u`: `max(cos(u pi / 2), min_rate)`.
pub fn mask_ratio(u: f64, min_rate: f64) -> f64 {
    (u * std::f64::consts::FRAC_PI_2).cos().max(min_rate)
}

/// Number of masked positions of `len` at ratio `ratio`: `max(1, round(len * ratio))`.
pub fn masked_count(len: usize, ratio: f64) -> usize {
    ((len as f64 * ratio).round() as usize).clamp(1, len.max(1))
}

/// One example's masked positions: a uniformly random subset of `count` of `0..len`, sorted.
pub fn draw_mask(len: usize, count: usize, rng: &mut SplitMix64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..len).collect();
    rng.shuffle(&mut order);
    let mut mask = vec![false; len];
    for &i in &order[..count.min(len)] {
        mask[i] = true;
    }
    mask
}

/// One prepared training example on the host: token grids and text conditioning.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Target (edited image) tokens, row-major `[height * width]`.
    pub target: Vec<i64>,
    /// Reference (source image) tokens, same grid.
    pub reference: Vec<i64>,
    /// Token grid `[height, width]`.
    pub grid: [usize; 2],
    /// Text encoder states, row-major `[text_len * width]`.
    pub states: Vec<f32>,
    /// `[text_len, width]` of `states`.
    pub states_shape: [usize; 2],
    /// Pooled text embedding.
    pub pooled: Vec<f32>,
    /// Micro-conditioning `[width, height, crop_top, crop_left, aesthetic]`.
    pub micro_conds: [f32; 5],
}

/// The empty prompt's conditioning, used by condition dropout.
#[derive(Debug, Clone, PartialEq)]
pub struct EmptyPrompt {
    /// Text encoder states `[text_len * width]`.
    pub states: Vec<f32>,
    /// Pooled embedding.
    pub pooled: Vec<f32>,
}

/// A batch ready for the transformer: masked inputs and the labels of the masked positions.
#[derive(Debug, Clone)]
pub struct TrainBatch {
    /// Token grids with mask tokens `[B, H, W]`.
    pub input_ids: Tensor<3, Int>,
    /// Reference grids `[B, H, W]`.
    pub reference: Tensor<3, Int>,
    /// Flat indices (into `B * H * W`) of the masked positions.
    pub masked: Vec<i64>,
    /// The target token at each masked position.
    pub targets: Vec<i64>,
    /// `[B, T, D]`.
    pub encoder_hidden_states: Tensor<3>,
    /// `[B, P]`.
    pub pooled: Tensor<2>,
    /// `[B, 5]`.
    pub micro_conds: Tensor<2>,
    /// Per-example float timesteps (`mask_ratio * 1000`).
    pub timesteps: Vec<f32>,
}

impl TrainBatch {
    /// A batch from explicit labels (`IGNORE` where not masked, the target token where masked),
    /// as the reference's fixture records it. `input_ids` already hold the mask token.
    #[allow(clippy::too_many_arguments)]
    pub fn from_labels(
        input_ids: Tensor<3, Int>,
        reference: Tensor<3, Int>,
        labels: &[i64],
        encoder_hidden_states: Tensor<3>,
        pooled: Tensor<2>,
        micro_conds: Tensor<2>,
        timesteps: Vec<f32>,
    ) -> Result<Self, TrainError> {
        let [b, h, w] = input_ids.dims();
        if labels.len() != b * h * w {
            return Err(TrainError::Batch(format!(
                "{} labels for a [{b}, {h}, {w}] grid",
                labels.len()
            )));
        }
        let (masked, targets) = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| **l != IGNORE)
            .map(|(i, l)| (i as i64, *l))
            .unzip();
        Ok(Self {
            input_ids,
            reference,
            masked,
            targets,
            encoder_hidden_states,
            pooled,
            micro_conds,
            timesteps,
        })
    }

    /// Masks `examples` as `train.py` does (ratio, count, positions and condition dropout drawn
    /// from `rng`) and puts the batch on `device`. `mask_id` is the model's mask token
    /// (`vocab_size - 1`).
    pub fn draw(
        examples: &[&Example],
        mask_id: i64,
        min_masking_rate: f64,
        cond_dropout: f64,
        empty: Option<&EmptyPrompt>,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let first = examples
            .first()
            .ok_or_else(|| TrainError::Batch("no example".into()))?;
        let [h, w] = first.grid;
        let [t, d] = first.states_shape;
        let p = first.pooled.len();
        let len = h * w;
        let b = examples.len();
        let mut input = Vec::with_capacity(b * len);
        let mut reference = Vec::with_capacity(b * len);
        let mut states = Vec::with_capacity(b * t * d);
        let mut pooled = Vec::with_capacity(b * p);
        let mut micro = Vec::with_capacity(b * 5);
        let mut masked = Vec::new();
        let mut targets = Vec::new();
        let mut timesteps = Vec::with_capacity(b);
        for (i, ex) in examples.iter().enumerate() {
            if ex.grid != first.grid
                || ex.states_shape != first.states_shape
                || ex.pooled.len() != p
                || ex.target.len() != len
                || ex.reference.len() != len
                || ex.states.len() != t * d
            {
                return Err(TrainError::Batch(format!(
                    "example {i} has grid {:?} / text {:?}, the first {:?} / {:?} (batch \
                     examples must share sizes)",
                    ex.grid, ex.states_shape, first.grid, first.states_shape
                )));
            }
            let ratio = mask_ratio(rng.next_f64(), min_masking_rate);
            let mask = draw_mask(len, masked_count(len, ratio), rng);
            for (j, (&m, &tok)) in mask.iter().zip(&ex.target).enumerate() {
                if m {
                    input.push(mask_id);
                    masked.push((i * len + j) as i64);
                    targets.push(tok);
                } else {
                    input.push(tok);
                }
            }
            reference.extend_from_slice(&ex.reference);
            let dropped = cond_dropout > 0.0 && rng.next_f64() < cond_dropout;
            match (dropped, empty) {
                (true, Some(e)) if e.states.len() == t * d && e.pooled.len() == p => {
                    states.extend_from_slice(&e.states);
                    pooled.extend_from_slice(&e.pooled);
                }
                (true, _) => {
                    return Err(TrainError::Batch(
                        "condition dropout needs the empty prompt's embeddings of the same \
                         size (prepare writes them)"
                            .into(),
                    ));
                }
                (false, _) => {
                    states.extend_from_slice(&ex.states);
                    pooled.extend_from_slice(&ex.pooled);
                }
            }
            micro.extend_from_slice(&ex.micro_conds);
            timesteps.push((ratio * 1000.0) as f32);
        }
        Ok(Self {
            input_ids: Tensor::from_data(TensorData::new(input, [b, h, w]), device),
            reference: Tensor::from_data(TensorData::new(reference, [b, h, w]), device),
            masked,
            targets,
            encoder_hidden_states: Tensor::from_data(TensorData::new(states, [b, t, d]), device),
            pooled: Tensor::from_data(TensorData::new(pooled, [b, p]), device),
            micro_conds: Tensor::from_data(TensorData::new(micro, [b, 5]), device),
            timesteps,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.input_ids.dims()[0]
    }

    /// Whether the batch has no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of masked positions (the loss's denominator for this batch alone).
    pub fn masked_count(&self) -> usize {
        self.masked.len()
    }

    /// The same batch with every tensor moved to `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        Self {
            input_ids: self.input_ids.clone().to_device(device),
            reference: self.reference.clone().to_device(device),
            masked: self.masked.clone(),
            targets: self.targets.clone(),
            encoder_hidden_states: self.encoder_hidden_states.clone().to_device(device),
            pooled: self.pooled.clone().to_device(device),
            micro_conds: self.micro_conds.clone().to_device(device),
            timesteps: self.timesteps.clone(),
        }
    }
}

/// The forward's logits `[B, codebook, H, W]` for `batch` (reference strength 1).
pub fn logits(model: &MgtTransformer, batch: &TrainBatch) -> Result<Tensor<4>, TrainError> {
    let input = MgtInput::new(
        batch.input_ids.clone(),
        batch.encoder_hidden_states.clone(),
        batch.pooled.clone(),
        batch.micro_conds.clone(),
        0.0,
    )
    .with_reference(batch.reference.clone(), 1.0)
    .with_timesteps(batch.timesteps.clone());
    Ok(model.forward(input)?.logits)
}

/// Cross entropy of `logits [B, C, H, W]` at the masked positions, summed and divided by
/// `normalizer` (the number of masked positions gives the reference's mean). `[1]`.
pub fn masked_cross_entropy(
    logits: Tensor<4>,
    batch: &TrainBatch,
    normalizer: f32,
) -> Result<Tensor<1>, TrainError> {
    let [b, c, h, w] = logits.dims();
    let device = logits.device();
    let m = batch.masked.len();
    if m == 0 {
        return Err(TrainError::Batch("no masked position".into()));
    }
    if let Some(bad) = batch.targets.iter().find(|&&t| t < 0 || t >= c as i64) {
        return Err(TrainError::Batch(format!(
            "target token {bad} outside the codebook [0, {c})"
        )));
    }
    let rows = logits
        .reshape([b, c, h * w])
        .swap_dims(1, 2)
        .reshape([b * h * w, c]);
    let index = Tensor::<1, Int>::from_data(TensorData::new(batch.masked.clone(), [m]), &device);
    let picked = log_softmax(rows.select(0, index), 1);
    let targets =
        Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), [m, 1]), &device);
    let nll = picked.gather(1, targets).neg();
    Ok(nll.sum() / normalizer as f64)
}

/// The loss of `batch`: the cross entropy summed over its masked positions and divided by
/// `normalizer` (its masked count gives the reference's mean). Returns the loss tensor `[1]`
/// (tracked when the model is) and the logits.
pub fn batch_loss(
    model: &MgtTransformer,
    batch: &TrainBatch,
    normalizer: f32,
) -> Result<(Tensor<1>, Tensor<4>), TrainError> {
    let logits = logits(model, batch)?;
    let loss = masked_cross_entropy(logits.clone(), batch, normalizer)?;
    Ok((loss, logits))
}
