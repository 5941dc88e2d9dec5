//! A training run: the trainer fed from a prepared dataset, with resumable data order and
//! masking draws, and checkpoints.

use std::path::Path;

use crate::TrainError;
use crate::checkpoint::{DataPosition, load_checkpoint, save_checkpoint};
use crate::data::{DataStream, PreparedDataset};
use crate::objective::{Example, TrainBatch};
use crate::rng::SplitMix64;
use crate::trainer::{StepStats, Trainer};

/// The trainer, its data and the random state of masking and condition dropout.
#[derive(Debug)]
pub struct TrainRun<'a> {
    trainer: Trainer,
    data: &'a PreparedDataset,
    stream: DataStream,
    rng: SplitMix64,
    mask_id: i64,
}

impl<'a> TrainRun<'a> {
    /// A run from the start.
    pub fn new(trainer: Trainer, data: &'a PreparedDataset) -> Result<Self, TrainError> {
        let seed = trainer.config().seed;
        let stream = DataStream::new(data.examples.len(), seed);
        Self::with_state(trainer, data, stream, SplitMix64::new(seed))
    }

    /// A run continued from the checkpoint in `dir` (written by [`TrainRun::save`] with the
    /// same model, data and settings).
    pub fn resume(
        mut trainer: Trainer,
        data: &'a PreparedDataset,
        dir: &Path,
    ) -> Result<Self, TrainError> {
        let position = load_checkpoint(&mut trainer, dir)?;
        let seed = trainer.config().seed;
        let stream = DataStream::resume(data.examples.len(), seed, &position);
        Self::with_state(
            trainer,
            data,
            stream,
            SplitMix64 {
                state: position.rng_state,
            },
        )
    }

    fn with_state(
        trainer: Trainer,
        data: &'a PreparedDataset,
        stream: DataStream,
        rng: SplitMix64,
    ) -> Result<Self, TrainError> {
        if data.examples.is_empty() {
            return Err(TrainError::EmptyDataset {
                path: data.dir.clone(),
                skipped: data.index.skipped,
            });
        }
        let config = trainer.model().config();
        let mask_id = config.vocab_size as i64 - 1;
        let first = &data.examples[0];
        let [h, w] = first.grid;
        if first.states_shape[1] != config.text_state_dim()
            || first.pooled.len() != config.pooled_projection_dim
            || h == 0
            || w == 0
        {
            return Err(TrainError::Batch(format!(
                "the prepared data (text width {}, pooled {}) does not fit the model (text width {}, pooled {})",
                first.states_shape[1],
                first.pooled.len(),
                config.text_state_dim(),
                config.pooled_projection_dim
            )));
        }
        Ok(Self {
            trainer,
            data,
            stream,
            rng,
            mask_id,
        })
    }

    /// The trainer.
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Consumes the run, returning the trainer.
    pub fn into_trainer(self) -> Trainer {
        self.trainer
    }

    /// Where the data and the generator stand.
    pub fn position(&self) -> DataPosition {
        let (epoch, index) = self.stream.position();
        DataPosition {
            epoch,
            index,
            rng_state: self.rng.state,
        }
    }

    /// One optimizer step: `accumulation` micro-batches of `batch_size` examples per device.
    pub fn step(&mut self) -> Result<StepStats, TrainError> {
        let config = self.trainer.config().clone();
        let device = self.trainer.devices()[0].clone();
        let devices = self.trainer.devices().len();
        let mut micro = Vec::with_capacity(config.accumulation);
        for _ in 0..config.accumulation {
            let mut parts = Vec::with_capacity(devices);
            for _ in 0..devices {
                let picks = self.stream.take(config.batch_size);
                let examples: Vec<&Example> =
                    picks.iter().map(|&i| &self.data.examples[i]).collect();
                parts.push(TrainBatch::draw(
                    &examples,
                    self.mask_id,
                    config.min_masking_rate,
                    config.cond_dropout,
                    self.data.empty.as_ref(),
                    &mut self.rng,
                    &device,
                )?);
            }
            micro.push(parts);
        }
        self.trainer.train_step(&micro)
    }

    /// Saves a checkpoint to `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        save_checkpoint(&self.trainer, self.position(), dir)
    }
}
