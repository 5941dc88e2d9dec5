//! Fine-tuning EditMGT's masked generative transformer on Burn's autodiff.
//!
//! The training step of the reference's `train/train.py` (edit model), over the same
//! `editmgt-mgt` modules that run inference:
//!
//! 1. [`objective`]: per example a mask ratio `cos(u pi/2)` (clipped below by
//!    `min_masking_rate`), `round(L ratio)` random positions masked, the transformer run with the
//!    source tokens as reference (strength 1) and the float timestep `ratio * 1000`, cross
//!    entropy over the masked positions (mean); optional condition dropout.
//! 2. [`trainer`]: full fine-tuning, or LoRA on chosen projections with the base frozen
//!    ([`lora`]; the reference stream only, as the reference trains edit models, or every
//!    stream); gradient accumulation; data-parallel over several devices.
//! 3. [`optim`]: AdamW with the reference's decay groups, global gradient-norm clipping,
//!    constant learning rate with linear warm-up, optional EMA.
//! 4. [`checkpoint`]: save and resume (weights or LoRA factors, AdamW moments, EMA, step, data
//!    position) in safetensors; LoRA adapters in peft's format.
//! 5. [`data`]: JSONL manifests of `{source, instruction, target}` and prepared token and
//!    embedding shards.

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod export;
pub mod lora;
pub mod objective;
pub mod optim;
pub mod params;
pub mod rng;
pub mod run;
pub mod trainer;

pub use checkpoint::{DataPosition, load_checkpoint, save_checkpoint};
pub use config::{EmaConfig, LoraConfig, OptimizerConfig, TrainConfig};
pub use error::TrainError;
pub use objective::{Example, TrainBatch};
pub use run::TrainRun;
pub use trainer::{StepStats, Trainer};
