//! Token tables in blocks: lookups equal the rows of the file, whatever the block size.

use editmgt_core::token_table::TokenTable;
use editmgt_core::{FloatType, LoadError, WeightFiles};
use editmgt_testkit::weights::write_safetensors;
use safetensors::Dtype;

const ROWS: usize = 10;
const WIDTH: usize = 3;

fn value(row: usize, col: usize) -> f32 {
    row as f32 * 1.25 - col as f32 * 0.5 + 0.125
}

fn table_file(dir: &std::path::Path, dtype: Dtype) -> WeightFiles {
    let path = dir.join(format!("table-{dtype:?}.safetensors"));
    let values = (0..ROWS)
        .flat_map(|r| (0..WIDTH).map(move |c| value(r, c)))
        .collect();
    write_safetensors(
        &path,
        &[("embed.weight".to_string(), vec![ROWS, WIDTH], values)],
        dtype,
    );
    WeightFiles::single(path)
}

#[test]
fn lookups_in_blocks_equal_the_rows() {
    let device = editmgt_testkit::device();
    let dir = tempfile::tempdir().unwrap();
    let ids = [9u32, 0, 4, 4, 7, 1, 9, 3];
    for dtype in [Dtype::F32, Dtype::BF16] {
        let files = table_file(dir.path(), dtype);
        for block_rows in [1, 2, 3, 4, 10, 100] {
            let table = TokenTable::load_in_blocks(
                &files,
                "embed.weight",
                [ROWS, WIDTH],
                &device,
                FloatType::F32,
                (block_rows * WIDTH * 4) as u64,
            )
            .unwrap();
            assert_eq!(table.block_count(), ROWS.div_ceil(block_rows));
            assert_eq!(table.shape(), [ROWS, WIDTH]);
            let rows = table.lookup(&ids);
            assert_eq!(rows.dims(), [ids.len(), WIDTH]);
            let got = rows.into_data().try_to_vec::<f32>().unwrap();
            let expected: Vec<f32> = ids
                .iter()
                .flat_map(|&id| (0..WIDTH).map(move |c| value(id as usize, c)))
                .collect();
            // The values are exact in bf16 too.
            assert_eq!(got, expected, "{dtype:?}, blocks of {block_rows} rows");
        }
    }
}

#[test]
fn bad_tables_are_typed_errors() {
    let device = editmgt_testkit::device();
    let dir = tempfile::tempdir().unwrap();
    let files = table_file(dir.path(), Dtype::F32);
    let load = |name: &str, shape: [usize; 2]| {
        TokenTable::load(&files, name, shape, &device, FloatType::F32).unwrap_err()
    };
    match load("embed.weight", [ROWS + 1, WIDTH]) {
        LoadError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, "embed.weight");
            assert_eq!(expected, vec![ROWS + 1, WIDTH]);
            assert_eq!(found, vec![ROWS, WIDTH]);
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    match load("other.weight", [ROWS, WIDTH]) {
        LoadError::MissingTensors { tensors, .. } => assert_eq!(tensors, vec!["other.weight"]),
        other => panic!("expected a missing tensor, got {other:?}"),
    }
}
