//! Token embedding tables held as blocks of rows, each within the device's buffer bound.
//!
//! Gemma-2-2B's table is `[256000, 2304]`: 2.2 GiB in f32, 1.1 GiB in half precision; CLIP's is
//! 193 MiB in f32. Burn's `Embedding` holds a table as one tensor, which a GPU adapter that binds
//! at most 128 MiB as one buffer (Mesa's lavapipe, WebGPU's default) cannot allocate. A
//! [`TokenTable`] holds the rows in blocks of at most [`BLOCK_BYTES`] (or the device's bound from
//! [`max_buffer_bytes`] when that is smaller), on every backend the same way, and looks a batch
//! of tokens up block by block: one `select` per block that holds any of them, then one to put the
//! rows back in order. Loading reads the checkpoint a block at a time, so it never holds more than
//! one block beyond the table itself.

use burn::module::{Initializer, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::limits::{max_buffer_bytes, rows_within};
use crate::{FloatType, LoadError, WeightFiles};

/// The most bytes one block holds, counted in f32 (the type rows are read and uploaded in):
/// 64 MiB.
pub const BLOCK_BYTES: u64 = 64 << 20;

/// A `[rows, width]` table of token embeddings in blocks of rows.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    blocks: Vec<Param<Tensor<2>>>,
    block_rows: usize,
    rows: usize,
    width: usize,
    device: Device,
}

impl TokenTable {
    /// The most bytes (in f32) of one block on `device`: [`BLOCK_BYTES`], or the device's
    /// bound when that is smaller.
    pub fn block_bytes(device: &Device) -> u64 {
        BLOCK_BYTES.min(max_buffer_bytes(device))
    }

    /// Rows per block of a table `width` wide in blocks of at most `block_bytes` (in f32).
    fn block_rows(rows: usize, width: usize, block_bytes: u64) -> usize {
        rows_within(block_bytes, (width * 4) as u64, rows.max(1))
    }

    /// The row ranges of the blocks.
    fn ranges(rows: usize, block_rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        (0..rows)
            .step_by(block_rows.max(1))
            .map(move |start| start..(start + block_rows).min(rows))
    }

    /// A `[rows, width]` table of lazily initialised values drawn by `initializer` (nothing is
    /// allocated until the first lookup).
    pub fn new(rows: usize, width: usize, initializer: &Initializer, device: &Device) -> Self {
        let block_rows = Self::block_rows(rows, width, Self::block_bytes(device));
        Self {
            blocks: Self::ranges(rows, block_rows)
                .map(|range| initializer.init([range.len(), width], device))
                .collect(),
            block_rows,
            rows,
            width,
            device: device.clone(),
        }
    }

    /// Loads the 2-d tensor `name` of `files`, which must have the shape `[rows, width]`, onto
    /// `device`, holding it as `dtype` (converted from F32, F16 or BF16).
    ///
    /// Errors name the file and the tensor: missing, of another shape, or not a float.
    pub fn load(
        files: &WeightFiles,
        name: &str,
        shape: [usize; 2],
        device: &Device,
        dtype: FloatType,
    ) -> Result<Self, LoadError> {
        let block_bytes = Self::block_bytes(device);
        Self::load_in_blocks(files, name, shape, device, dtype, block_bytes)
    }

    /// [`TokenTable::load`] in blocks of at most `block_bytes` each (counted in f32; at least
    /// one row per block).
    pub fn load_in_blocks(
        files: &WeightFiles,
        name: &str,
        [rows, width]: [usize; 2],
        device: &Device,
        dtype: FloatType,
        block_bytes: u64,
    ) -> Result<Self, LoadError> {
        let found = files.table_shape(name)?;
        if found != [rows, width] {
            return Err(LoadError::ShapeMismatch {
                path: files.primary().to_path_buf(),
                tensor: name.to_string(),
                expected: vec![rows, width],
                found: found.to_vec(),
            });
        }
        let block_rows = Self::block_rows(rows, width, block_bytes);
        let blocks = Self::ranges(rows, block_rows)
            .map(|range| {
                let data = files.read_row_range(name, range)?;
                Ok(Param::from_tensor(
                    Tensor::<2>::from_data(data, device).cast(dtype.dtype()),
                ))
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(Self {
            blocks,
            block_rows,
            rows,
            width,
            device: device.clone(),
        })
    }

    /// The table's shape `[rows, width]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.width]
    }

    /// The number of blocks the rows are held in.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Rows `ids` of the table as `[ids.len(), width]`, in the table's float type.
    ///
    /// # Panics
    ///
    /// When an id is not below the number of rows (callers check their tokens first).
    pub fn lookup(&self, ids: &[u32]) -> Tensor<2> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.rows) {
            panic!("token {id} looked up in a table of {} rows", self.rows);
        }
        let index = |values: Vec<i64>| {
            let n = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [n]), &self.device)
        };
        if let [block] = self.blocks.as_slice() {
            return block
                .val()
                .select(0, index(ids.iter().map(|&id| i64::from(id)).collect()));
        }
        // Each block's rows in the order of the blocks, then `order[i]`: where row `i` is.
        let mut pieces = Vec::new();
        let mut order = vec![0i64; ids.len()];
        let mut taken = 0;
        for (block, range) in self
            .blocks
            .iter()
            .zip(Self::ranges(self.rows, self.block_rows))
        {
            let mut local = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                if range.contains(&(id as usize)) {
                    local.push((id as usize - range.start) as i64);
                    order[i] = taken;
                    taken += 1;
                }
            }
            if !local.is_empty() {
                pieces.push(block.val().select(0, index(local)));
            }
        }
        if pieces.is_empty() {
            return Tensor::zeros([0, self.width], &self.device);
        }
        Tensor::cat(pieces, 0).select(0, index(order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_rows() {
        let ranges: Vec<_> = TokenTable::ranges(10, 4).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
        assert_eq!(TokenTable::ranges(0, 4).count(), 0);
    }
}
