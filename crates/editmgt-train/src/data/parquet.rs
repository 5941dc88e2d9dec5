//! Parquet datasets (feature `parquet`): one edit pair per row, the two images as encoded bytes
//! (PNG, JPEG, WebP) and the instruction as text. An image column may be a plain binary column
//! or a struct with a `bytes` field (how Hugging Face `datasets` stores an `Image` feature).
//! Column names are configurable. Rows with a missing or mistyped value are skipped and
//! reported; unreadable image bytes are caught later by [`prepare`](super::prepare()).

use std::fs::File;
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use super::{ImageSource, Record, Skipped};
use crate::TrainError;

/// Which columns hold what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParquetColumns {
    /// The image before the edit.
    pub source: String,
    /// The edit instruction.
    pub instruction: String,
    /// The image after the edit.
    pub target: String,
}

impl Default for ParquetColumns {
    fn default() -> Self {
        Self {
            source: "source".into(),
            instruction: "instruction".into(),
            target: "target".into(),
        }
    }
}

fn column<'a>(row: &'a Row, name: &str) -> Result<&'a Field, String> {
    row.get_column_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| f)
        .ok_or_else(|| format!("no column `{name}`"))
}

/// The Parquet type of a field, for error messages.
fn kind(field: &Field) -> &'static str {
    match field {
        Field::Null => "null",
        Field::Bool(_) => "a bool",
        Field::Byte(_) | Field::Short(_) | Field::Int(_) | Field::Long(_) => "an integer",
        Field::UByte(_) | Field::UShort(_) | Field::UInt(_) | Field::ULong(_) => "an integer",
        Field::Float16(_) | Field::Float(_) | Field::Double(_) => "a float",
        Field::Decimal(_) => "a decimal",
        Field::Str(_) => "a string",
        Field::Bytes(_) => "bytes",
        Field::Date(_) | Field::TimeMillis(_) | Field::TimeMicros(_) => "a date or time",
        Field::TimestampMillis(_) | Field::TimestampMicros(_) => "a timestamp",
        Field::Group(_) => "a group",
        Field::ListInternal(_) => "a list",
        Field::MapInternal(_) => "a map",
    }
}

fn image_bytes(row: &Row, name: &str) -> Result<Vec<u8>, String> {
    match column(row, name)? {
        Field::Bytes(b) => Ok(b.data().to_vec()),
        Field::Group(inner) => match column(inner, "bytes")? {
            Field::Bytes(b) => Ok(b.data().to_vec()),
            other => Err(format!("`{name}.bytes` is {}, expected bytes", kind(other))),
        },
        Field::Null => Err(format!("`{name}` is null")),
        other => Err(format!("`{name}` is {}, expected bytes", kind(other))),
    }
}

fn text(row: &Row, name: &str) -> Result<String, String> {
    match column(row, name)? {
        Field::Str(s) => Ok(s.clone()),
        Field::Bytes(b) => {
            String::from_utf8(b.data().to_vec()).map_err(|_| format!("`{name}` is not UTF-8"))
        }
        Field::Null => Err(format!("`{name}` is null")),
        other => Err(format!("`{name}` is {}, expected a string", kind(other))),
    }
}

/// Reads every row of a Parquet file: the usable records and the skipped ones. A file without
/// any usable row is [`TrainError::EmptyDataset`].
pub fn read_parquet(
    path: &Path,
    columns: &ParquetColumns,
) -> Result<(Vec<Record>, Vec<Skipped>), TrainError> {
    let file = File::open(path).map_err(TrainError::io(path, "Parquet file"))?;
    let reader =
        SerializedFileReader::new(file).map_err(|e| TrainError::format(path, e.to_string()))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| TrainError::format(path, e.to_string()))?;
    let mut records = super::Records::default();
    for (i, row) in rows.enumerate() {
        let location = format!("{} row {i}", path.display());
        let parsed = row.map_err(|e| e.to_string()).and_then(|row| {
            Ok((
                ImageSource::Bytes(image_bytes(&row, &columns.source)?),
                text(&row, &columns.instruction)?,
                ImageSource::Bytes(image_bytes(&row, &columns.target)?),
            ))
        });
        records.push(location, parsed);
    }
    records.finish(path)
}
