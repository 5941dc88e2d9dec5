//! JSONL manifests: one `{"source": PATH, "instruction": TEXT, "target": PATH}` object per line,
//! image paths relative to the manifest's folder (or absolute). Blank lines are ignored; lines
//! that are not such an object are skipped and reported.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Skipped;
use crate::TrainError;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A file.
    Path(PathBuf),
    /// Encoded bytes (PNG, JPEG, WebP), e.g. from a Parquet column.
    Bytes(Vec<u8>),
}

/// One edit pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record is, for messages (`file:line`).
    pub location: String,
    /// The image before the edit.
    pub source: ImageSource,
    /// The edit instruction.
    pub instruction: String,
    /// The image after the edit.
    pub target: ImageSource,
}

/// Reads a JSONL manifest: the usable records and the skipped ones. A manifest without any
/// usable record is an error ([`TrainError::EmptyDataset`]).
pub fn read_manifest(path: &Path) -> Result<(Vec<Record>, Vec<Skipped>), TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path, "manifest"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut records = super::Records::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let location = format!("{}:{}", path.display(), i + 1);
        records.push(location, parse_line(line, base));
    }
    records.finish(path)
}

fn parse_line(line: &str, base: &Path) -> Result<(ImageSource, String, ImageSource), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| -> Result<&str, String> {
        value
            .get(name)
            .ok_or_else(|| format!("missing field `{name}`"))?
            .as_str()
            .ok_or_else(|| format!("field `{name}` is not a string"))
    };
    let path = |name: &str| -> Result<ImageSource, String> {
        let p = field(name)?;
        if p.is_empty() {
            return Err(format!("field `{name}` is empty"));
        }
        Ok(ImageSource::Path(base.join(p)))
    };
    Ok((
        path("source")?,
        field("instruction")?.to_string(),
        path("target")?,
    ))
}
