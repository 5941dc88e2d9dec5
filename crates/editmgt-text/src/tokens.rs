//! A batch of token ids on the host.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::TextError;

/// Token ids of a batch of prompts, one row per prompt, every row the same length (the
/// tokenizers pad and truncate to a fixed length), kept on the host.
///
/// The encoders read the rows on the host (to check the ids against the vocabulary and, for
/// CLIP, to find the pooling position) and upload them with [`TokenIds::to_tensor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    ids: Vec<u32>,
    rows: usize,
    seq_len: usize,
}

impl TokenIds {
    /// A batch from rows of equal length; fails on an empty batch or ragged rows.
    pub fn from_rows(rows: Vec<Vec<u32>>) -> Result<Self, TextError> {
        let seq_len = rows.first().ok_or(TextError::EmptyBatch)?.len();
        let mut ids = Vec::with_capacity(rows.len() * seq_len);
        for (index, row) in rows.iter().enumerate() {
            if row.len() != seq_len {
                return Err(TextError::RaggedBatch {
                    index,
                    found: row.len(),
                    expected: seq_len,
                });
            }
            ids.extend_from_slice(row);
        }
        Ok(Self {
            ids,
            rows: rows.len(),
            seq_len,
        })
    }

    /// The number of rows (prompts).
    pub fn batch_size(&self) -> usize {
        self.rows
    }

    /// The length of every row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Row `index`; panics if out of range (like slice indexing).
    pub fn row(&self, index: usize) -> &[u32] {
        &self.ids[index * self.seq_len..(index + 1) * self.seq_len]
    }

    /// The rows in order.
    pub fn rows(&self) -> impl Iterator<Item = &[u32]> {
        self.ids.chunks_exact(self.seq_len.max(1)).take(self.rows)
    }

    /// All ids, row-major.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids
    }

    /// The ids as an `Int` tensor `[batch, seq_len]` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2, Int> {
        let data: Vec<i64> = self.ids.iter().map(|&id| i64::from(id)).collect();
        Tensor::from_data(TensorData::new(data, [self.rows, self.seq_len]), device)
    }

    /// Fails with [`TextError::TokenOutOfRange`] if an id is not below `vocab`.
    pub(crate) fn check_vocab(&self, vocab: usize) -> Result<(), TextError> {
        for (row, ids) in self.rows().enumerate() {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(TextError::TokenOutOfRange { id, row, vocab });
            }
        }
        Ok(())
    }
}
