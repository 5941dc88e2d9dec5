//! Capturing text-to-image attention maps for localisation.
//!
//! For a chosen block, the reference computes a separate softmax over the `[text, image]` keys
//! (reference keys left out, no strength bias), with the rotary embedding applied, and keeps the
//! text-query rows restricted to the image keys. Only those rows are needed, so this port
//! computes `softmax(q_text k^T / sqrt(d))` for the requested text rows (and batch rows) only:
//! `T x (T + N)` scores per head instead of the block's full `S x S` matrix, a small fraction of
//! the block's cost. It also works for double-stream blocks with a reference strength other than
//! 1, where the reference implementation crashes.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::MgtError;

/// Which attention maps a forward should return.
///
/// Blocks are numbered with the double-stream blocks first (`0..num_layers`), then the
/// single-stream ones. The optional subsets restrict the work to the rows the caller needs: for
/// example only the conditional half of a guidance batch (`batch_rows: Some(vec![1])`), or only
/// the text rows of the query words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureRequest {
    /// Blocks to capture (duplicates are captured once, in first-seen order).
    pub blocks: Vec<usize>,
    /// Text rows to keep (all when `None`), in the given order.
    pub text_rows: Option<Vec<usize>>,
    /// Batch rows to keep (all when `None`), in the given order.
    pub batch_rows: Option<Vec<usize>>,
}

impl CaptureRequest {
    /// Capture nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Capture every text row of every batch row of `blocks`.
    pub fn blocks(blocks: impl IntoIterator<Item = usize>) -> Self {
        Self {
            blocks: blocks.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Keep only these text rows.
    pub fn with_text_rows(mut self, rows: impl IntoIterator<Item = usize>) -> Self {
        self.text_rows = Some(rows.into_iter().collect());
        self
    }

    /// Keep only these batch rows.
    pub fn with_batch_rows(mut self, rows: impl IntoIterator<Item = usize>) -> Self {
        self.batch_rows = Some(rows.into_iter().collect());
        self
    }

    /// Whether nothing is requested.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Checks the request against a model with `blocks` blocks (`double` of them double-stream)
    /// and an input of `batch` rows and `text` text rows, and prepares the row selections.
    pub(crate) fn resolve(
        &self,
        blocks: usize,
        double: usize,
        batch: usize,
        text: usize,
        device: &Device,
    ) -> Result<ResolvedCapture, MgtError> {
        let mut wanted = Vec::new();
        for &block in &self.blocks {
            if block >= blocks {
                return Err(MgtError::NoSuchBlock {
                    block,
                    blocks,
                    double,
                });
            }
            if !wanted.contains(&block) {
                wanted.push(block);
            }
        }
        let rows = |subset: &Option<Vec<usize>>, len: usize, what: &'static str| {
            let Some(subset) = subset else {
                return Ok(None);
            };
            if subset.is_empty() {
                return Err(MgtError::CaptureRow {
                    what,
                    row: usize::MAX,
                    len,
                });
            }
            if let Some(&row) = subset.iter().find(|&&r| r >= len) {
                return Err(MgtError::CaptureRow { what, row, len });
            }
            // The identity selection needs no gather.
            if subset.len() == len && subset.iter().enumerate().all(|(i, &r)| i == r) {
                return Ok(None);
            }
            let ids: Vec<i64> = subset.iter().map(|&r| r as i64).collect();
            let n = ids.len();
            Ok(Some(Tensor::<1, Int>::from_data(
                TensorData::new(ids, [n]),
                device,
            )))
        };
        Ok(ResolvedCapture {
            blocks: wanted,
            rows: CaptureRows {
                text: rows(&self.text_rows, text, "text")?,
                batch: rows(&self.batch_rows, batch, "batch")?,
            },
        })
    }
}

/// One captured map.
#[derive(Debug, Clone)]
pub struct CapturedAttention {
    /// The block index (double-stream blocks first).
    pub block: usize,
    /// Text-to-image attention averaged over heads, `[batch rows, text rows, image tokens]`,
    /// float32. Image tokens are the transformer's grid in row-major order (32x32 for a 64x64
    /// token grid).
    pub text_to_image: Tensor<3>,
}

/// A validated request.
pub(crate) struct ResolvedCapture {
    pub blocks: Vec<usize>,
    pub rows: CaptureRows,
}

impl ResolvedCapture {
    /// The row selection if `block` is captured.
    pub fn for_block(&self, block: usize) -> Option<&CaptureRows> {
        self.blocks.contains(&block).then_some(&self.rows)
    }
}

/// Row selections of a capture, as index tensors (`None`: all rows).
pub(crate) struct CaptureRows {
    text: Option<Tensor<1, Int>>,
    batch: Option<Tensor<1, Int>>,
}

/// The head-averaged text-to-image attention of one block.
///
/// `q` and `k` are the block's joint queries and keys `[B, H, S, d]` (rotary applied) over the
/// sequence `[text, image, ...]`; only the text rows of `q` and the `[text, image]` rows of `k`
/// are read. Computed in float32.
pub(crate) fn text_to_image(
    q: &Tensor<4>,
    k: &Tensor<4>,
    text_len: usize,
    image_len: usize,
    rows: &CaptureRows,
) -> Tensor<3> {
    let mut q = q.clone().narrow(2, 0, text_len);
    let mut k = k.clone().narrow(2, 0, text_len + image_len);
    if let Some(batch) = &rows.batch {
        q = q.select(0, batch.clone());
        k = k.select(0, batch.clone());
    }
    if let Some(text) = &rows.text {
        q = q.select(2, text.clone());
    }
    let q = q.cast(DType::F32);
    let k = k.cast(DType::F32);
    let head_dim = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (head_dim as f64).sqrt());
    let probs = softmax(scores, 3);
    let [b, _, t, _] = probs.dims();
    probs
        .narrow(3, text_len, image_len)
        .mean_dim(1)
        .reshape([b, t, image_len])
}
