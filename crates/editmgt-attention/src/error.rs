//! The typed error of this crate.

/// Why a consolidation, smoothing, upsampling or heatmap call refused its input.
///
/// Every variant names the argument at fault; no function of this crate panics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AttentionError {
    /// No attention maps were given to [`consolidate`](crate::consolidate).
    #[error("no attention maps to consolidate")]
    NoMaps,
    /// Two inputs that must agree in shape do not.
    #[error("{what}: shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Which input disagrees.
        what: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A slice does not have the length its stated dimensions imply.
    #[error("{what}: {found} values, expected {expected}")]
    LengthMismatch {
        /// Which input.
        what: String,
        /// The length the dimensions imply.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A text row index is not below the number of text rows `T` of the maps.
    #[error("text row {row} is out of range (the maps have {rows} text rows)")]
    RowOutOfRange {
        /// The offending row index.
        row: usize,
        /// The number of text rows of the maps.
        rows: usize,
    },
    /// The set of text rows to average is empty (the mean would be undefined).
    #[error("the set of text rows to average is empty")]
    NoRows,
    /// A grid, image, batch or block has a zero dimension.
    #[error("{what} is empty")]
    Empty {
        /// What is empty.
        what: String,
    },
    /// A parameter is outside its valid range.
    #[error("{name} = {value} is invalid: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Its value, as text.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// Reading scores back from the device failed.
    #[error("reading scores back from the device failed: {0}")]
    Readback(String),
}

impl AttentionError {
    pub(crate) fn empty(what: &str) -> Self {
        Self::Empty {
            what: what.to_string(),
        }
    }

    pub(crate) fn invalid(name: &str, value: impl ToString, reason: &str) -> Self {
        Self::InvalidParameter {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
