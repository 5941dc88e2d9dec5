//! What the crates assume of the test device's data path (`$EDITMGT_TEST_DEVICE`): boolean and
//! integer grids uploaded from the host come back unchanged and select the right cells.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use editmgt_testkit::device;

/// A pattern that tells a per-element bool from a packed one (runs of 1, 2, 3 and 5 cells).
fn pattern(n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| matches!(i % 11, 0 | 2 | 3 | 6 | 7 | 8))
        .collect()
}

/// A grid read back as `i64` (the device's int type may be narrower).
fn read_ints(grid: Tensor<2, Int>) -> Vec<i64> {
    grid.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap()
}

/// `tokens` with `value` where `mask` is set.
fn replaced(tokens: &[i64], mask: &[bool], value: i64) -> Vec<i64> {
    tokens
        .iter()
        .zip(mask)
        .map(|(&t, &m)| if m { value } else { t })
        .collect()
}

#[test]
fn bool_grids_round_trip_and_select_cells() {
    let device = device();
    let (rows, cells) = (2, 64 * 64);
    let mask = pattern(rows * cells);
    let uploaded: Tensor<2, Bool> =
        Tensor::from_data(TensorData::new(mask.clone(), [rows, cells]), &device);
    // Read back as integers: a backend may store booleans as u8 or u32.
    let back = read_ints(uploaded.clone().int());
    let expected: Vec<i64> = mask.iter().map(|&m| i64::from(m)).collect();
    assert_eq!(back, expected, "bool upload round trip");

    let tokens: Vec<i64> = (0..(rows * cells) as i64).map(|i| i % 64).collect();
    let grid: Tensor<2, Int> =
        Tensor::from_data(TensorData::new(tokens.clone(), [rows, cells]), &device);
    let filled = read_ints(grid.clone().mask_fill(uploaded.clone(), 71));
    assert_eq!(
        filled,
        replaced(&tokens, &mask, 71),
        "mask_fill with an uploaded bool grid"
    );

    let other = grid.clone().zeros_like() + 5;
    let chosen = read_ints(grid.mask_where(uploaded, other));
    assert_eq!(
        chosen,
        replaced(&tokens, &mask, 5),
        "mask_where with an uploaded bool grid"
    );
}

/// The same with an integer grid the device computed (an `argmin`, as the VQ quantiser's token
/// grid is), reshaped as the editor reshapes it.
#[test]
fn computed_int_grids_take_uploaded_masks() {
    let device = device();
    let (rows, cells, codes) = (2, 32 * 32, 8);
    // Scores whose argmin over the codes is `cell % codes`.
    let scores: Vec<f32> = (0..rows * cells * codes)
        .map(|i| {
            let (cell, code) = (i / codes, i % codes);
            if code == cell % codes {
                -1.0
            } else {
                code as f32
            }
        })
        .collect();
    let scores = Tensor::<2>::from_data(TensorData::new(scores, [rows * cells, codes]), &device);
    let grid: Tensor<2, Int> = scores
        .argmin(1)
        .reshape([-1])
        .reshape([rows, 32, 32])
        .reshape([rows, cells]);
    let mask = pattern(rows * cells);
    let uploaded: Tensor<2, Bool> =
        Tensor::from_data(TensorData::new(mask.clone(), [rows, cells]), &device);
    let filled = read_ints(grid.mask_fill(uploaded, 71));
    let expected: Vec<i64> = (0..rows * cells)
        .map(|i| if mask[i] { 71 } else { (i % codes) as i64 })
        .collect();
    assert_eq!(filled, expected, "mask_fill on an argmin grid");
}
