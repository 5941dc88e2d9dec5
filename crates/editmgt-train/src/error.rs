//! The errors of this crate.

use std::path::PathBuf;

use editmgt_core::LoadError;
use editmgt_mgt::MgtError;

/// Why training, data preparation or a checkpoint failed.
///
/// Every variant names the file, tensor, record or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] MgtError),
    /// A model component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The VQ tokenizer failed (loading it, or an image).
    #[error(transparent)]
    Vq(#[from] editmgt_vq::VqError),
    /// The text encoders failed.
    #[error(transparent)]
    Text(#[from] editmgt_text::TextError),
    /// A configuration value is out of range.
    #[error("invalid training setting `{field}` = {value}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Its value, as given.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the file is.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A safetensors or JSON file is malformed or lacks a tensor.
    #[error("`{path}`: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (naming the tensor or field).
        reason: String,
    },
    /// The dataset has no usable example.
    #[error("the dataset `{path}` has no usable example ({skipped} records skipped)")]
    EmptyDataset {
        /// The dataset file or folder.
        path: PathBuf,
        /// Records skipped as bad.
        skipped: usize,
    },
    /// A batch is malformed (mismatched examples).
    #[error("bad batch: {0}")]
    Batch(String),
    /// A tensor of a checkpoint or adapter does not fit the model.
    #[error("`{path}`: tensor `{tensor}` {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The loss or the gradients became NaN or infinite.
    #[error("the loss is not finite at step {step} ({loss})")]
    NonFinite {
        /// The optimizer step.
        step: u64,
        /// The loss value.
        loss: f32,
    },
}

impl TrainError {
    /// An [`TrainError::Io`] for `path`.
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        what: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, what, source }
    }

    /// A [`TrainError::Format`] for `path`.
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
