//! Scaled dot-product attention on the CPU over strided `f32` views, without Burn types.
//!
//! `softmax(Q K^T * scale + bias) V` for every batch and head. The work is split into blocks of
//! query rows (one block: every head of those rows); a rayon task computes, per head, the block's
//! scores against *all* keys with one matrix product (`gemm`), the exact row softmax with a
//! vectorised `exp` (the private `softmax` module), and the block's output with a second product. The score
//! block is bounded (a few MiB, in the shared cache), each score is written and read once, and no
//! running rescale of the output is needed (flash attention's online softmax trades that for a
//! bounded buffer, which a CPU with megabytes of cache does not need at these lengths).
//!
//! Inputs may be any non-negative strides (head-interleaved projections are read in place); keys
//! and values may have fewer heads than queries (grouped-query attention). The output is written
//! `[batch, rows, heads, value_dim]`, the layout in which heads are merged afterwards.

use rayon::prelude::*;

use super::softmax::exp_row;
use crate::bf16_products::Isa;
use crate::bf16_products::kernel::{Packed, Weight, product_into};

/// Bytes of scores one task keeps per head. Larger blocks pack the keys and values (the products'
/// right-hand sides) fewer times; measured at 2304 keys on a 2-core AMD EPYC (512 KiB L2 per
/// core): 64 rows 636 ms, 128 rows 578 ms, 256 rows 576 ms, 576 rows 594 ms.
const SCORE_BLOCK_BYTES: usize = 4 << 20;
/// The fewest query rows a block holds (below this the products lose their efficiency).
const MIN_BLOCK_ROWS: usize = 8;
/// The most query rows a block holds.
const MAX_BLOCK_ROWS: usize = 256;

/// Why [`attention`] refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// A view's shape and strides reach past its data.
    OutOfBounds {
        /// `query`, `key`, `value` or `bias`.
        name: &'static str,
    },
    /// Two inputs disagree on a size.
    Mismatch {
        /// What disagrees.
        what: &'static str,
    },
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfBounds { name } => {
                write!(f, "attention: the {name} view reaches past its data")
            }
            Self::Mismatch { what } => write!(f, "attention: inputs disagree on {what}"),
        }
    }
}

impl std::error::Error for ShapeError {}

/// A read-only strided view of a 4-D `f32` tensor `[batch, heads, rows, cols]`.
#[derive(Debug, Clone, Copy)]
pub struct StridedView<'a> {
    data: &'a [f32],
    offset: usize,
    shape: [usize; 4],
    strides: [usize; 4],
}

impl<'a> StridedView<'a> {
    /// The view of `data` whose element `[a, b, c, d]` is at
    /// `offset + a * strides[0] + b * strides[1] + c * strides[2] + d * strides[3]`; `None`
    /// when an element would lie past the end of `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        shape: [usize; 4],
        strides: [usize; 4],
    ) -> Option<Self> {
        if shape.contains(&0) {
            return Some(Self {
                data,
                offset,
                shape,
                strides,
            });
        }
        let mut last = offset;
        for (&n, &s) in shape.iter().zip(&strides) {
            last = last.checked_add((n - 1).checked_mul(s)?)?;
        }
        (last < data.len()).then_some(Self {
            data,
            offset,
            shape,
            strides,
        })
    }

    /// A contiguous (row-major) view of `data`.
    pub fn contiguous(data: &'a [f32], shape: [usize; 4]) -> Option<Self> {
        let strides = [
            shape[1] * shape[2] * shape[3],
            shape[2] * shape[3],
            shape[3],
            1,
        ];
        Self::new(data, 0, shape, strides)
    }

    /// The view's shape.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Index of element `[a, b, c, 0]`; a dimension of size 1 broadcasts.
    fn index(&self, a: usize, b: usize, c: usize) -> usize {
        let a = if self.shape[0] == 1 { 0 } else { a };
        let b = if self.shape[1] == 1 { 0 } else { b };
        self.offset + a * self.strides[0] + b * self.strides[1] + c * self.strides[2]
    }

    fn ptr(&self, a: usize, b: usize, c: usize) -> *const f32 {
        self.data[self.index(a, b, c)..].as_ptr()
    }
}

/// How many query rows one task takes: the score block fits [`SCORE_BLOCK_BYTES`], and there
/// are enough blocks for every thread of the pool.
fn block_rows(batch: usize, rows: usize, keys: usize) -> usize {
    let cached = (SCORE_BLOCK_BYTES / 4 / keys.max(1)).clamp(MIN_BLOCK_ROWS, MAX_BLOCK_ROWS);
    let blocks_per_batch = (4 * rayon::current_num_threads()).div_ceil(batch.max(1));
    cached.min(rows.div_ceil(blocks_per_batch)).max(1)
}

/// `softmax(query key^T * scale + bias) value` per batch and head.
///
/// `query` is `[B, H, Sq, d]`, `key` `[B, Hk, Skv, d]`, `value` `[B, Hk, Skv, dv]` with `H` a
/// multiple of `Hk` (query head `h` uses key head `h / (H / Hk)`), `bias` `[1|B, 1|H, Sq, Skv]`
/// with unit stride along keys. Returns the output as a contiguous `[B, Sq, H, dv]` buffer.
pub fn attention(
    query: StridedView<'_>,
    key: StridedView<'_>,
    value: StridedView<'_>,
    bias: Option<StridedView<'_>>,
    scale: f32,
) -> Result<Vec<f32>, ShapeError> {
    attention_in(query, key, value, bias, scale, None)
}

/// [`attention`] with both products in bf16 on `isa` ([`crate::bf16_products::kernel`]): the
/// scaled queries, keys, softmax numerators and values rounded to bf16, every sum and the softmax
/// in `f32`.
pub fn attention_bf16(
    isa: Isa,
    query: StridedView<'_>,
    key: StridedView<'_>,
    value: StridedView<'_>,
    bias: Option<StridedView<'_>>,
    scale: f32,
) -> Result<Vec<f32>, ShapeError> {
    if !Isa::supported().contains(&isa) {
        return Err(ShapeError::Mismatch {
            what: "the CPU's instructions (no bf16 products here)",
        });
    }
    attention_in(query, key, value, bias, scale, Some(isa))
}

fn attention_in(
    query: StridedView<'_>,
    key: StridedView<'_>,
    value: StridedView<'_>,
    bias: Option<StridedView<'_>>,
    scale: f32,
    bf16: Option<Isa>,
) -> Result<Vec<f32>, ShapeError> {
    let [batch, heads, rows, dim] = query.shape;
    let [_, kv_heads, keys, _] = key.shape;
    let value_dim = value.shape[3];
    let mismatch = |what| Err(ShapeError::Mismatch { what });
    if key.shape[0] != batch || value.shape[0] != batch {
        return mismatch("the batch size");
    }
    if key.shape[3] != dim {
        return mismatch("the head width of queries and keys");
    }
    if value.shape[1] != kv_heads || value.shape[2] != keys {
        return mismatch("the heads or length of keys and values");
    }
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return mismatch("heads (query heads must be a multiple of key heads)");
    }
    if let Some(bias) = &bias {
        let [bb, bh, br, bk] = bias.shape;
        if !(bb == 1 || bb == batch) || !(bh == 1 || bh == heads) || br != rows || bk != keys {
            return mismatch("the bias shape");
        }
        if bias.strides[3] != 1 && keys > 1 {
            return mismatch("the bias layout (keys must be contiguous)");
        }
    }
    let mut out = vec![0.0f32; batch * rows * heads * value_dim];
    if out.is_empty() || keys == 0 {
        return Ok(out);
    }
    let group = heads / kv_heads;
    let block = block_rows(batch, rows, keys);
    let row_len = heads * value_dim;
    let mut tasks = Vec::new();
    for (b, batch_out) in out.chunks_mut(rows * row_len).enumerate() {
        for (i, chunk) in batch_out.chunks_mut(block * row_len).enumerate() {
            tasks.push((b, i * block, chunk));
        }
    }
    // bf16: keys (as `[d, keys]`) and values packed once per batch row and key head.
    let packed = match bf16 {
        None => Vec::new(),
        Some(_) => {
            let mut packed = Vec::with_capacity(batch * kv_heads);
            for b in 0..batch {
                for kh in 0..kv_heads {
                    let keys_t = Weight {
                        data: key.data,
                        offset: key.index(b, kh, 0),
                        shape: [dim, keys],
                        strides: [key.strides[3], key.strides[2]],
                    };
                    let values = Weight {
                        data: value.data,
                        offset: value.index(b, kh, 0),
                        shape: [keys, value_dim],
                        strides: [value.strides[2], value.strides[3]],
                    };
                    let pack = |w: &Weight<'_, f32>| {
                        Packed::columns(w).map_err(|_| ShapeError::OutOfBounds { name: "key" })
                    };
                    packed.push((pack(&keys_t)?, pack(&values)?));
                }
            }
            packed
        }
    };
    let views = Views {
        query,
        key,
        value,
        bias,
        scale,
        group,
        bf16: bf16.map(|isa| (isa, packed)),
    };
    tasks.into_par_iter().for_each_init(
        || (vec![0.0f32; block * keys], vec![0.0f32; block]),
        |(scores, inverse), (b, first, chunk)| {
            views.block(b, first, chunk, scores, inverse);
        },
    );
    Ok(out)
}

/// The inputs of one call, shared by its tasks.
struct Views<'a> {
    query: StridedView<'a>,
    key: StridedView<'a>,
    value: StridedView<'a>,
    bias: Option<StridedView<'a>>,
    scale: f32,
    group: usize,
    /// The instructions and the packed keys and values (per batch row, then key head) of a bf16
    /// call.
    bf16: Option<(Isa, Vec<(Packed, Packed)>)>,
}

impl Views<'_> {
    /// Each score row of head `h` (query rows `first..` of batch `b`) becomes its softmax
    /// numerators, with the bias added, and `inverse[i]` one over row `i`'s sum.
    fn numerators(
        &self,
        b: usize,
        h: usize,
        first: usize,
        scores: &mut [f32],
        inverse: &mut [f32],
    ) {
        let keys = self.key.shape[2];
        for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
            let bias = self.bias.as_ref().map(|bias| {
                let start = bias.index(b, h, first + i);
                &bias.data[start..start + keys]
            });
            inverse[i] = 1.0 / exp_row(row, bias);
        }
    }

    /// Every head of query rows `first..` of batch `b` into `out` (`[n, heads, dv]`).
    fn block(
        &self,
        b: usize,
        first: usize,
        out: &mut [f32],
        scores: &mut [f32],
        inverse: &mut [f32],
    ) {
        let [_, heads, _, dim] = self.query.shape;
        let keys = self.key.shape[2];
        let value_dim = self.value.shape[3];
        let row_len = heads * value_dim;
        let n = out.len() / row_len;
        let scores = &mut scores[..n * keys];
        if let Some((isa, packed)) = &self.bf16 {
            let kv_heads = self.key.shape[1];
            for h in 0..heads {
                let kh = h / self.group;
                let (keys_t, values) = &packed[b * kv_heads + kh];
                let q = Packed::rows(n, dim, |i, row| {
                    let start = self.query.index(b, h, first + i);
                    for (j, x) in row.iter_mut().enumerate() {
                        *x = self.query.data[start + j * self.query.strides[3]] * self.scale;
                    }
                });
                product_into(*isa, &q, keys_t, scores, keys).expect("packed for these sizes");
                self.numerators(b, h, first, scores, inverse);
                let p = Packed::row_major(scores, n, keys);
                product_into(*isa, &p, values, &mut out[h * value_dim..], row_len)
                    .expect("packed for these sizes");
                normalize(out, row_len, h, value_dim, inverse);
            }
            return;
        }
        for h in 0..heads {
            let kh = h / self.group;
            if dim == 0 {
                scores.fill(0.0);
            } else {
                // SAFETY: `StridedView::new` checked that every element of the query rows
                // `first..first + n` of head `h` and of key head `kh` lies inside its data;
                // `scores` holds `n * keys` elements written with row stride `keys`.
                #[allow(unsafe_code)]
                unsafe {
                    gemm::gemm(
                        n,
                        keys,
                        dim,
                        scores.as_mut_ptr(),
                        1,
                        keys as isize,
                        false,
                        self.query.ptr(b, h, first),
                        self.query.strides[3] as isize,
                        self.query.strides[2] as isize,
                        self.key.ptr(b, kh, 0),
                        self.key.strides[2] as isize,
                        self.key.strides[3] as isize,
                        0.0,
                        self.scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            self.numerators(b, h, first, scores, inverse);
            // SAFETY: `scores` holds the `n x keys` numerators; the value rows of key head `kh`
            // were checked by `StridedView::new`; `out` holds `n` rows of `heads * value_dim`
            // elements, of which columns `h * value_dim..(h + 1) * value_dim` are written.
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    n,
                    value_dim,
                    keys,
                    out[h * value_dim..].as_mut_ptr(),
                    1,
                    row_len as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    keys as isize,
                    self.value.ptr(b, kh, 0),
                    self.value.strides[3] as isize,
                    self.value.strides[2] as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            normalize(out, row_len, h, value_dim, inverse);
        }
    }
}

/// Scales head `h`'s columns of each output row (`[n, heads * value_dim]`) by its `inverse`.
fn normalize(out: &mut [f32], row_len: usize, h: usize, value_dim: usize, inverse: &[f32]) {
    for (row, &inv) in out.chunks_exact_mut(row_len).zip(inverse) {
        for x in &mut row[h * value_dim..(h + 1) * value_dim] {
            *x *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tests::{values, worst_error};

    /// Attention in f64 by its definition; output `[B, Sq, H, dv]`.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bias: Option<&[f32]>,
        dims: [usize; 6],
        kv_heads: usize,
        scale: f32,
    ) -> Vec<f64> {
        let [batch, heads, rows, keys, dim, value_dim] = dims;
        let group = heads / kv_heads;
        let mut out = vec![0.0; batch * rows * heads * value_dim];
        for b in 0..batch {
            for h in 0..heads {
                let kh = h / group;
                for r in 0..rows {
                    let mut s: Vec<f64> = (0..keys)
                        .map(|j| {
                            let dot: f64 = (0..dim)
                                .map(|x| {
                                    q[((b * heads + h) * rows + r) * dim + x] as f64
                                        * k[((b * kv_heads + kh) * keys + j) * dim + x] as f64
                                })
                                .sum();
                            dot * scale as f64 + bias.map_or(0.0, |bias| bias[r * keys + j] as f64)
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    s.iter_mut().for_each(|x| *x = (*x - max).exp());
                    let sum: f64 = s.iter().sum();
                    for c in 0..value_dim {
                        let o: f64 = (0..keys)
                            .map(|j| {
                                s[j] * v[((b * kv_heads + kh) * keys + j) * value_dim + c] as f64
                            })
                            .sum();
                        out[((b * rows + r) * heads + h) * value_dim + c] = o / sum;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_bias_and_grouped_heads() {
        for (batch, heads, kv_heads, rows, keys, dim, value_dim) in [
            (1, 1, 1, 1, 1, 1, 1),
            (2, 4, 4, 37, 53, 16, 16),
            (2, 4, 2, 300, 301, 8, 12),
            (1, 2, 1, 5, 2000, 4, 3),
        ] {
            let q = values(batch * heads * rows * dim, 1);
            let k = values(batch * kv_heads * keys * dim, 2);
            let v = values(batch * kv_heads * keys * value_dim, 3);
            let bias = values(rows * keys, 4);
            let scale = 1.0 / (dim as f32).sqrt() * 3.0;
            for with_bias in [false, true] {
                let got = attention(
                    StridedView::contiguous(&q, [batch, heads, rows, dim]).unwrap(),
                    StridedView::contiguous(&k, [batch, kv_heads, keys, dim]).unwrap(),
                    StridedView::contiguous(&v, [batch, kv_heads, keys, value_dim]).unwrap(),
                    with_bias.then(|| StridedView::contiguous(&bias, [1, 1, rows, keys]).unwrap()),
                    scale,
                )
                .unwrap();
                let want = naive(
                    &q,
                    &k,
                    &v,
                    with_bias.then_some(&bias[..]),
                    [batch, heads, rows, keys, dim, value_dim],
                    kv_heads,
                    scale,
                );
                let worst = worst_error(&got, &want);
                assert!(worst < 2e-6, "{batch}x{heads}x{rows}x{keys}: {worst:e}");
            }
        }
    }

    #[test]
    fn bf16_products_are_within_bf16_rounding_of_the_definition() {
        for &isa in Isa::supported() {
            for (batch, heads, kv_heads, rows, keys, dim, value_dim) in [
                (1, 1, 1, 1, 1, 1, 1),
                (2, 4, 2, 70, 301, 40, 12),
                (1, 2, 2, 300, 90, 128, 128),
            ] {
                let q = values(batch * heads * rows * dim, 1);
                let k = values(batch * kv_heads * keys * dim, 2);
                let v = values(batch * kv_heads * keys * value_dim, 3);
                let bias = values(rows * keys, 4);
                let scale = 1.0 / (dim as f32).sqrt() * 3.0;
                let got = attention_bf16(
                    isa,
                    StridedView::contiguous(&q, [batch, heads, rows, dim]).unwrap(),
                    StridedView::contiguous(&k, [batch, kv_heads, keys, dim]).unwrap(),
                    StridedView::contiguous(&v, [batch, kv_heads, keys, value_dim]).unwrap(),
                    Some(StridedView::contiguous(&bias, [1, 1, rows, keys]).unwrap()),
                    scale,
                )
                .unwrap();
                let want = naive(
                    &q,
                    &k,
                    &v,
                    Some(&bias[..]),
                    [batch, heads, rows, keys, dim, value_dim],
                    kv_heads,
                    scale,
                );
                let worst = worst_error(&got, &want);
                // Values in [-1, 1): outputs are averages of them; bf16 keeps 8 bits.
                assert!(
                    worst < 2e-2,
                    "{isa} {batch}x{heads}x{rows}x{keys}: {worst:e}"
                );
                assert!(
                    worst > 0.0 || keys == 1,
                    "{isa}: the bf16 products were not taken"
                );
            }
        }
    }

    #[test]
    fn reads_head_interleaved_inputs_in_place() {
        // Projections `[B, S, H, d]` viewed as `[B, H, S, d]`.
        let (batch, heads, rows, dim) = (2, 3, 41, 8);
        let q = values(batch * rows * heads * dim, 5);
        let k = values(batch * rows * heads * dim, 6);
        let v = values(batch * rows * heads * dim, 7);
        let strides = [rows * heads * dim, dim, heads * dim, 1];
        let view = |x| StridedView::new(x, 0, [batch, heads, rows, dim], strides).unwrap();
        let got = attention(view(&q), view(&k), view(&v), None, 0.5).unwrap();
        let to_heads = |x: &[f32]| {
            let mut y = vec![0.0; x.len()];
            for b in 0..batch {
                for s in 0..rows {
                    for h in 0..heads {
                        for c in 0..dim {
                            y[((b * heads + h) * rows + s) * dim + c] =
                                x[((b * rows + s) * heads + h) * dim + c];
                        }
                    }
                }
            }
            y
        };
        let want = naive(
            &to_heads(&q),
            &to_heads(&k),
            &to_heads(&v),
            None,
            [batch, heads, rows, rows, dim, dim],
            heads,
            0.5,
        );
        let worst = worst_error(&got, &want);
        assert!(worst < 2e-6, "{worst:e}");
    }

    #[test]
    fn refuses_views_past_their_data_and_mismatched_shapes() {
        let data = vec![0.0f32; 10];
        assert!(StridedView::contiguous(&data, [1, 1, 3, 4]).is_none());
        assert!(StridedView::new(&data, 3, [1, 1, 2, 4], [8, 8, 4, 1]).is_none());
        let q = StridedView::contiguous(&data, [1, 1, 2, 5]).unwrap();
        let k = StridedView::contiguous(&data, [1, 1, 5, 2]).unwrap();
        assert_eq!(
            attention(q, k, k, None, 1.0),
            Err(ShapeError::Mismatch {
                what: "the head width of queries and keys"
            })
        );
        let empty = StridedView::contiguous(&data, [1, 1, 0, 5]).unwrap();
        assert_eq!(attention(empty, q, q, None, 1.0), Ok(vec![]));
    }
}
