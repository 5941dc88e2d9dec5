//! Parquet datasets: binary and `datasets`-style struct image columns, configurable names, bad
//! rows skipped, an empty file refused.
#![cfg(feature = "parquet")]

use std::sync::Arc;

use editmgt_train::data::ImageSource;
use editmgt_train::data::parquet::{ParquetColumns, read_parquet};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One row: (before, prompt, after), None = null.
type Row<'a> = (Option<&'a [u8]>, Option<&'a str>, Option<&'a [u8]>);

/// Writes rows of (before, prompt, after) with optional values (None = null).
fn write(path: &std::path::Path, rows: &[Row<'_>]) {
    let schema = Arc::new(
        parse_message_type(
            "message edits { optional binary before; optional binary prompt (UTF8); optional binary after; }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))
            .unwrap();
    let mut group = writer.next_row_group().unwrap();
    for col in 0..3 {
        let mut column = group.next_column().unwrap().unwrap();
        let mut values = Vec::new();
        let mut levels = Vec::new();
        for row in rows {
            let value: Option<Vec<u8>> = match col {
                0 => row.0.map(<[u8]>::to_vec),
                1 => row.1.map(|s| s.as_bytes().to_vec()),
                _ => row.2.map(<[u8]>::to_vec),
            };
            levels.push(i16::from(value.is_some()));
            if let Some(v) = value {
                values.push(ByteArray::from(v));
            }
        }
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn reads_image_bytes_and_skips_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edits.parquet");
    let png: &[u8] = b"\x89PNG fake";
    write(
        &path,
        &[
            (Some(png), Some("make it red"), Some(b"after")),
            (Some(png), None, Some(b"after")),
            (Some(b"b2"), Some("second"), Some(b"a2")),
        ],
    );
    let columns = ParquetColumns {
        source: "before".into(),
        instruction: "prompt".into(),
        target: "after".into(),
    };
    let (records, skipped) = read_parquet(&path, &columns).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].instruction, "make it red");
    assert_eq!(records[0].source, ImageSource::Bytes(png.to_vec()));
    assert_eq!(records[1].target, ImageSource::Bytes(b"a2".to_vec()));
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].reason.contains("prompt"), "{}", skipped[0]);

    // Default column names do not exist here: every row is skipped, which is an error.
    let err = read_parquet(&path, &ParquetColumns::default()).unwrap_err();
    assert!(err.to_string().contains("no usable example"), "{err}");
}
