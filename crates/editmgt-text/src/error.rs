use std::path::PathBuf;

use editmgt_core::LoadError;

/// Errors of the text encoders and their tokenizers.
///
/// Loading problems (a missing folder or file, a configuration of another architecture, weights
/// with missing or misshapen tensors, a float type the device cannot hold) are
/// [`TextError::Load`], which names the file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A model folder, configuration or weight file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A tokenizer file exists but does not describe a usable tokenizer (a `tokenizer.json` that
    /// does not parse, a malformed `merges.txt`, ...).
    #[error("`{}`: not a usable tokenizer: {message}", path.display())]
    TokenizerFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A special token named in a tokenizer's configuration is not in its vocabulary.
    #[error("`{}`: special token `{token}` ({role}) is not in the vocabulary", path.display())]
    UnknownSpecialToken {
        /// The tokenizer folder.
        path: PathBuf,
        /// What the token is for (`pad`, `bos`, ...).
        role: &'static str,
        /// The token text.
        token: String,
    },
    /// The tokenizer failed on a prompt.
    #[error("cannot tokenise prompt {index}: {message}")]
    Tokenize {
        /// Index of the prompt in the batch.
        index: usize,
        /// The tokenizer's message.
        message: String,
    },
    /// An empty batch was passed where at least one prompt (or row) is needed.
    #[error("empty batch: at least one prompt is needed")]
    EmptyBatch,
    /// Token id rows of different lengths were put in one batch.
    #[error("token row {index} has {found} ids, the batch's rows have {expected}")]
    RaggedBatch {
        /// The offending row.
        index: usize,
        /// Its length.
        found: usize,
        /// The length of the first row.
        expected: usize,
    },
    /// A token id outside the model's vocabulary.
    #[error("token id {id} (row {row}) is outside the vocabulary of {vocab} entries")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The row it is in.
        row: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A sequence longer than the model accepts.
    #[error("sequence of {found} tokens is longer than the {max} positions of {model}")]
    SequenceTooLong {
        /// The model (`CLIP`, `Gemma-2`).
        model: &'static str,
        /// The sequence length passed.
        found: usize,
        /// The maximum.
        max: usize,
    },
}
