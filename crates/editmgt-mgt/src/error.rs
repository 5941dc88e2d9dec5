//! The errors of this crate.

use editmgt_core::LoadError;

/// Why the transformer could not be loaded or run.
///
/// Loading errors come from `editmgt-core` and name the file, tensor or configuration field at
/// fault. The other variants are bad inputs to [`MgtTransformer::forward`]; the model never
/// panics on them.
///
/// [`MgtTransformer::forward`]: crate::MgtTransformer::forward
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MgtError {
    /// The configuration or the weights could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An input's batch size differs from the token grid's.
    #[error("`{input}` has batch size {found}, the token grid has {expected}")]
    BatchMismatch {
        /// The input at fault.
        input: &'static str,
        /// The token grid's batch size.
        expected: usize,
        /// The input's batch size.
        found: usize,
    },
    /// The reference grid's size differs from the token grid's.
    #[error("the token grid is {tokens:?} but the reference grid is {reference:?}")]
    GridMismatch {
        /// `[height, width]` of the token grid.
        tokens: [usize; 2],
        /// `[height, width]` of the reference grid.
        reference: [usize; 2],
    },
    /// The token grid cannot be processed (empty, or odd while the model halves it).
    #[error("a {height}x{width} token grid is not supported: {reason}")]
    InvalidGrid {
        /// Grid height.
        height: usize,
        /// Grid width.
        width: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A token id is negative or not below `vocab_size`.
    #[error("`{input}` holds token id {id}, outside [0, {vocab_size})")]
    TokenOutOfRange {
        /// `tokens` or `reference`.
        input: &'static str,
        /// The offending id (the largest, or the smallest if negative).
        id: i64,
        /// The model's `vocab_size`.
        vocab_size: usize,
    },
    /// An input's feature width differs from the configuration's.
    #[error("`{input}` has width {found}, the model expects {expected}")]
    WidthMismatch {
        /// The input at fault.
        input: &'static str,
        /// The width the configuration implies.
        expected: usize,
        /// The input's last dimension.
        found: usize,
    },
    /// The number of text rows differs from the number of text positions.
    #[error("`encoder_hidden_states` has {found} text rows but the positions have {positions}")]
    TextLength {
        /// Text rows in the positions (rotary table).
        positions: usize,
        /// Text rows in `encoder_hidden_states`.
        found: usize,
    },
    /// The number of image positions differs from the transformer's grid.
    #[error("the positions have {positions} image rows but the transformer's grid has {tokens}")]
    ImagePositions {
        /// Image rows in the positions (rotary table).
        positions: usize,
        /// Tokens on the transformer's (possibly downsampled) grid.
        tokens: usize,
    },
    /// Positions are malformed (not finite).
    #[error("invalid positions: {reason}")]
    InvalidPositions {
        /// What is wrong with them.
        reason: String,
    },
    /// A capture names a block that does not exist.
    #[error(
        "cannot capture block {block}: the model has {blocks} blocks (double-stream 0..{double}, then single-stream)"
    )]
    NoSuchBlock {
        /// The requested block index.
        block: usize,
        /// Number of blocks in the model.
        blocks: usize,
        /// Number of double-stream blocks.
        double: usize,
    },
    /// A capture names a text or batch row that does not exist, or an empty subset.
    #[error("capture: {what} row {row} is out of range (the input has {len})")]
    CaptureRow {
        /// `text` or `batch`.
        what: &'static str,
        /// The requested row (`usize::MAX` for an empty subset).
        row: usize,
        /// The number of rows of that kind in the input.
        len: usize,
    },
    /// The reference strength must be a positive finite number.
    #[error("reference strength {0} must be finite and positive")]
    InvalidStrength(f32),
    /// The timestep must be finite.
    #[error("timestep {0} must be finite")]
    InvalidTimestep(f32),
    /// A LoRA adapter cannot be attached or merged.
    #[error("LoRA adapter `{path}`: {reason}")]
    Lora {
        /// The adapter's peft module path (e.g. `transformer_blocks.0.attn.to_q`).
        path: String,
        /// What is wrong.
        reason: String,
    },
}
