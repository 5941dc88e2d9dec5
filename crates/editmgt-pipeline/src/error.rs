use editmgt_core::LoadError;

/// Everything that can go wrong loading a model or editing an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// A model component could not be loaded (missing folder or file, corrupt weights,
    /// unsupported configuration, ...).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The VQ tokenizer failed, or an image could not be read or written.
    #[error(transparent)]
    Image(#[from] editmgt_vq::VqError),
    /// The text encoders failed.
    #[error(transparent)]
    Text(#[from] editmgt_text::TextError),
    /// The transformer failed.
    #[error(transparent)]
    Transformer(#[from] editmgt_mgt::MgtError),
    /// The sampler failed.
    #[error(transparent)]
    Sampler(#[from] editmgt_sampler::SamplerError),
    /// Attention consolidation failed.
    #[error(transparent)]
    Attention(#[from] editmgt_attention::AttentionError),
    /// A request parameter is out of range.
    #[error("invalid `{field}` = {value}: {reason}")]
    InvalidRequest {
        /// The parameter.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// The requested backend was not compiled in (enable the Cargo feature) or is unknown.
    #[error("device `{name}` is not available: {reason}")]
    Device {
        /// The device asked for.
        name: String,
        /// Why it is not available.
        reason: String,
    },
    /// The progress callback asked to stop.
    #[error("cancelled after {completed} of {total} steps")]
    Cancelled {
        /// Steps completed.
        completed: usize,
        /// Steps requested.
        total: usize,
    },
    /// Downloading the model from the Hugging Face Hub failed.
    #[error("cannot download `{file}` from `{repo}`: {reason}")]
    Hub {
        /// The repository.
        repo: String,
        /// The file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading tensor data back from the device failed.
    #[error("reading tensor data back from the device failed: {0}")]
    Readback(String),
    /// Waiting for the device's queued work failed (an operation failed to execute); only
    /// when a request asks for timings.
    #[error("waiting for the device failed: {0}")]
    Execution(String),
}

impl EditError {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidRequest {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
