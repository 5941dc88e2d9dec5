//! Training data: where edit pairs come from, the prepared shards the training loop reads, and
//! the order examples are drawn in.
//!
//! - [`manifest`]: a JSONL manifest of `{source, instruction, target}` records (image paths
//!   relative to the manifest), and Parquet files with image-bytes columns (`parquet`, feature
//!   `parquet`).
//! - [`prepare`](mod@prepare): runs the VQ encoder and the text encoders once per record and writes token and
//!   embedding shards, so that training holds only the transformer.
//! - [`shards`]: reading and writing the prepared shards.
//! - [`stream`]: the shuffled, resumable order of examples.

pub mod manifest;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod prepare;
pub mod shards;
pub mod stream;

pub use manifest::{ImageSource, Record, read_manifest};
pub use prepare::{PrepareOptions, PrepareReport, prepare};
pub use shards::PreparedDataset;
pub use stream::DataStream;

/// A record that could not be used, with the reason (reported as a warning and counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where the record is (`manifest.jsonl:12`, `part-0.parquet row 7`).
    pub location: String,
    /// Why it was skipped.
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// Sorts parsed records into usable and skipped ones, for the readers of each data format.
#[derive(Debug, Default)]
pub(crate) struct Records {
    records: Vec<Record>,
    skipped: Vec<Skipped>,
}

impl Records {
    /// Adds the record at `location`: usable, or skipped with the reason.
    pub(crate) fn push(
        &mut self,
        location: String,
        parsed: Result<(ImageSource, String, ImageSource), String>,
    ) {
        match parsed {
            Ok((source, instruction, target)) => self.records.push(Record {
                location,
                source,
                instruction,
                target,
            }),
            Err(reason) => self.skipped.push(Skipped { location, reason }),
        }
    }

    /// The usable and the skipped records; none usable is [`crate::TrainError::EmptyDataset`]
    /// for `path`.
    pub(crate) fn finish(
        self,
        path: &std::path::Path,
    ) -> Result<(Vec<Record>, Vec<Skipped>), crate::TrainError> {
        if self.records.is_empty() {
            return Err(crate::TrainError::EmptyDataset {
                path: path.to_path_buf(),
                skipped: self.skipped.len(),
            });
        }
        Ok((self.records, self.skipped))
    }
}
