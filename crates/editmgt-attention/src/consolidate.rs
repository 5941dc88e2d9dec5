//! Consolidating captured text-to-image attention into one score per image token
//! (docs/model.md section 6), on the maps' device.

use burn::tensor::{Device, Tensor, TensorData};

use crate::smoothing::Smoother;
use crate::upsample::Resize;
use crate::{AdaptiveSmoothing, AttentionError, ScoreMap};

/// Which text rows (queries) of the captured maps each batch item averages.
///
/// Rows index the text sequence the maps were captured with (the Gemma tokens); locate query
/// words in that tokenisation (the reference looks them up in the CLIP tokenisation and uses
/// those positions on the Gemma rows, a bug). A row listed twice counts twice.
#[derive(Debug, Clone)]
pub struct TextRows {
    /// `[B, T]` averaging weights (each item's weights sum to 1); `None` for all rows.
    weights: Option<Tensor<2>>,
    text_rows: Option<usize>,
}

impl TextRows {
    /// Every text row, for every batch item.
    pub fn all() -> Self {
        Self {
            weights: None,
            text_rows: None,
        }
    }

    /// Per batch item, the rows to average (`None`: all of them), for maps with `text_rows`
    /// rows; the weights are uploaded to `device` once. An empty list, or a row not below
    /// `text_rows`, is an error.
    pub fn per_item(
        rows: &[Option<Vec<usize>>],
        text_rows: usize,
        device: &Device,
    ) -> Result<Self, AttentionError> {
        if rows.iter().all(Option::is_none) {
            return Ok(Self::all());
        }
        if text_rows == 0 {
            return Err(AttentionError::NoRows);
        }
        let mut weights = vec![0f32; rows.len() * text_rows];
        for (item, selection) in rows.iter().enumerate() {
            let w = &mut weights[item * text_rows..(item + 1) * text_rows];
            match selection {
                None => w.fill(1.0 / text_rows as f32),
                Some(list) => {
                    if list.is_empty() {
                        return Err(AttentionError::NoRows);
                    }
                    if let Some(&row) = list.iter().find(|&&r| r >= text_rows) {
                        return Err(AttentionError::RowOutOfRange {
                            row,
                            rows: text_rows,
                        });
                    }
                    for &r in list {
                        w[r] += 1.0;
                    }
                    let count = list.len() as f32;
                    for v in w.iter_mut() {
                        *v /= count;
                    }
                }
            }
        }
        Ok(Self {
            weights: Some(Tensor::from_data(
                TensorData::new(weights, [rows.len(), text_rows]),
                device,
            )),
            text_rows: Some(text_rows),
        })
    }

    /// The same `rows` for each of `batch` items.
    pub fn same(
        rows: &[usize],
        batch: usize,
        text_rows: usize,
        device: &Device,
    ) -> Result<Self, AttentionError> {
        if rows.is_empty() {
            return Err(AttentionError::NoRows);
        }
        Self::per_item(&vec![Some(rows.to_vec()); batch], text_rows, device)
    }
}

/// Averages captured attention maps into scores on the `height x width` image grid.
///
/// Each element of `maps` is one captured block's text-to-image attention for the conditional
/// half of the guidance batch, already averaged over heads: `[B, T, N]` with `T` text rows
/// (queries) and `N = height * width` image tokens (keys). This is what the transformer crate
/// hands over; if you hold per-head maps, average the heads first (all blocks have the same
/// number of heads, so the mean over blocks, heads and rows is the same either way).
///
/// `rows` selects the text rows each item averages ([`TextRows::all`] for all `T`). Everything
/// runs on the maps' device, in `f32` (the mean over rows as one matrix product).
pub fn consolidate(
    maps: &[Tensor<3>],
    rows: &TextRows,
    height: usize,
    width: usize,
) -> Result<ScoreMap, AttentionError> {
    let first = maps.first().ok_or(AttentionError::NoMaps)?;
    let [batch, text_rows, tokens] = first.dims();
    if batch == 0 {
        return Err(AttentionError::empty("batch"));
    }
    if tokens == 0 || height == 0 || width == 0 {
        return Err(AttentionError::empty("image token grid"));
    }
    if tokens != height * width {
        return Err(AttentionError::ShapeMismatch {
            what: format!("attention maps' image tokens for a {height}x{width} grid"),
            expected: vec![height * width],
            found: vec![tokens],
        });
    }
    if text_rows == 0 {
        return Err(AttentionError::NoRows);
    }
    for (i, map) in maps.iter().enumerate() {
        if map.dims() != [batch, text_rows, tokens] {
            return Err(AttentionError::ShapeMismatch {
                what: format!("attention map {i} [B, T, N]"),
                expected: vec![batch, text_rows, tokens],
                found: map.dims().to_vec(),
            });
        }
    }
    // The maps are summed as deviations from one centre per batch item (the mean of its first
    // map), which is added back once at the end. The scores are rescaled to [0, 1] next, which
    // divides their spread (a small fraction of their size: attention is spread thinly over the
    // image tokens) by itself; summing the raw values in f32 would amplify rounding errors by
    // their size over their spread. This way the deviations are summed at the precision of the
    // spread and each score is rounded to f32 once, as an exact mean would be.
    let centre = maps[0]
        .clone()
        .reshape([batch, text_rows * tokens])
        .mean_dim(1)
        .reshape([batch, 1, 1]);
    let mut deviations = maps[0].clone() - centre.clone();
    for map in &maps[1..] {
        deviations = deviations + (map.clone() - centre.clone());
    }
    let per_row = match (&rows.weights, rows.text_rows) {
        (Some(weights), Some(t)) => {
            if t != text_rows || weights.dims()[0] != batch {
                return Err(AttentionError::ShapeMismatch {
                    what: "text row selection [B, T]".into(),
                    expected: vec![batch, text_rows],
                    found: weights.dims().to_vec(),
                });
            }
            // [B, 1, T] x [B, T, N]
            weights.clone().unsqueeze_dim::<3>(1).matmul(deviations)
        }
        _ => deviations.mean_dim(1),
    };
    let scores = per_row / maps.len() as f32 + centre;
    Ok(ScoreMap::new(scores.reshape([batch, height, width])))
}

/// The localisation scores the region hold uses, on the attention grid: [`consolidate`], then
/// [`ScoreMap::rescale`], then [`ScoreMap::smooth`] with `smoothing`
/// ([`AdaptiveSmoothing::default`] is the released pipeline's setting).
pub fn local_scores(
    maps: &[Tensor<3>],
    rows: &TextRows,
    height: usize,
    width: usize,
    smoothing: &AdaptiveSmoothing,
) -> Result<ScoreMap, AttentionError> {
    consolidate(maps, rows, height, width)?
        .rescale()
        .smooth(smoothing)
}

/// Everything the edit loop needs to turn captured maps into region-hold scores, prepared once
/// on the device: the text-row weights, the smoothing filters and the bicubic resize from the
/// attention grid to the token grid. [`Localizer::locate`] then uploads nothing.
#[derive(Debug, Clone)]
pub struct Localizer {
    rows: TextRows,
    attention_grid: (usize, usize),
    smoother: Smoother,
    resize: Resize,
}

/// What [`Localizer::locate`] returns.
#[derive(Debug, Clone)]
pub struct Localization {
    /// The localisation scores on the attention grid (consolidated, rescaled, smoothed).
    pub scores: ScoreMap,
    /// The same scores resized to the token grid, `[B, token_h * token_w]`, as the sampler's
    /// region hold reads them.
    pub on_tokens: Tensor<2>,
}

impl Localizer {
    /// Prepares localisation of maps on `attention_grid` for a `token_grid`, on `device`.
    pub fn new(
        rows: TextRows,
        attention_grid: (usize, usize),
        token_grid: (usize, usize),
        smoothing: &AdaptiveSmoothing,
        device: &Device,
    ) -> Result<Self, AttentionError> {
        Ok(Self {
            rows,
            attention_grid,
            smoother: smoothing.prepare(attention_grid.0, attention_grid.1, device)?,
            resize: Resize::new(attention_grid, token_grid, device)?,
        })
    }

    /// Consolidates, rescales and smooths `maps` (see [`local_scores`]) and resizes the result
    /// to the token grid.
    pub fn locate(&self, maps: &[Tensor<3>]) -> Result<Localization, AttentionError> {
        let (h, w) = self.attention_grid;
        let scores = self
            .smoother
            .apply(&consolidate(maps, &self.rows, h, w)?.rescale())?;
        let up = self.resize.apply(&scores)?;
        Ok(Localization {
            on_tokens: up.rows(),
            scores,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(data: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(data, shape), &Device::flex())
    }

    #[test]
    fn mean_over_blocks_and_rows() {
        let a: Vec<f32> = (0..24)
            .map(|i| ((i / 12) * 100 + (i / 4 % 3) * 10 + i % 4) as f32)
            .collect();
        let b: Vec<f32> = a.iter().map(|v| v + 1.0).collect();
        let maps = [tensor(a.clone(), [2, 3, 4]), tensor(b, [2, 3, 4])];
        let s = consolidate(&maps, &TextRows::all(), 2, 2).unwrap();
        assert_eq!(s.batch(), 2);
        let v = s.to_vec().unwrap();
        // mean over t of (10 t) = 10, plus 0.5 from the second block
        assert_eq!(v[..4], [10.5, 11.5, 12.5, 13.5]);
        assert_eq!(v[4..], [110.5, 111.5, 112.5, 113.5]);
        let device = Device::flex();
        let only = consolidate(
            &[tensor(a.clone(), [2, 3, 4])],
            &TextRows::per_item(&[Some(vec![2]), None], 3, &device).unwrap(),
            2,
            2,
        )
        .unwrap()
        .to_vec()
        .unwrap();
        let expected = [20.0, 21.0, 22.0, 23.0, 110.0, 111.0, 112.0, 113.0];
        for (got, want) in only.iter().zip(expected) {
            assert!((got - want).abs() <= 1e-4, "{only:?}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let device = Device::flex();
        let a = tensor(vec![0.0; 12], [1, 3, 4]);
        let c = tensor(vec![0.0; 8], [1, 2, 4]);
        let all = TextRows::all();
        assert!(matches!(
            consolidate(&[], &all, 2, 2),
            Err(AttentionError::NoMaps)
        ));
        assert!(consolidate(&[a.clone(), c], &all, 2, 2).is_err());
        assert!(consolidate(std::slice::from_ref(&a), &all, 3, 2).is_err());
        assert!(matches!(
            TextRows::same(&[3], 1, 3, &device),
            Err(AttentionError::RowOutOfRange { row: 3, rows: 3 })
        ));
        assert!(matches!(
            TextRows::same(&[], 1, 3, &device),
            Err(AttentionError::NoRows)
        ));
        let wrong = TextRows::same(&[0], 1, 2, &device).unwrap();
        assert!(consolidate(&[a], &wrong, 2, 2).is_err());
    }
}

#[cfg(test)]
mod precision {
    use super::*;

    /// Attention spread thinly over the image tokens (values ~1/N, spread a few percent of that):
    /// the rescaled consolidation must stay close to an f64 computation.
    #[test]
    fn rescaled_scores_keep_their_precision() {
        let device = Device::flex();
        let (blocks, b, t, n) = (2, 1, 256, 1024);
        let mut state = 1u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f64 / (1u64 << 24) as f64
        };
        let data: Vec<Vec<f32>> = (0..blocks)
            .map(|_| {
                (0..b * t * n)
                    .map(|_| ((1.0 + 0.03 * next()) / 1280.0) as f32)
                    .collect()
            })
            .collect();
        let maps: Vec<Tensor<3>> = data
            .iter()
            .map(|d| Tensor::from_data(TensorData::new(d.clone(), [b, t, n]), &device))
            .collect();
        let ours = consolidate(&maps, &TextRows::all(), 32, 32)
            .unwrap()
            .rescale()
            .to_vec()
            .unwrap();
        let mut exact = vec![0f64; n];
        for d in &data {
            for row in d.chunks_exact(n) {
                for (e, &v) in exact.iter_mut().zip(row) {
                    *e += f64::from(v);
                }
            }
        }
        // The consolidated scores are f32: the best they can be is the exact mean rounded to f32
        // once (its rounding, ~6e-8 of ~1/1280, is ~2e-5 of the spread here). Summing the raw
        // maps in f32 instead would be off by far more; the test bounds what is ours to keep.
        let rounded: Vec<f64> = exact
            .iter()
            .map(|&e| f64::from((e / (blocks * t) as f64) as f32))
            .collect();
        let (lo, hi) = rounded
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
        let worst = ours
            .iter()
            .zip(&rounded)
            .map(|(&o, &r)| (f64::from(o) - (r - lo) / (hi - lo + 1e-8)).abs())
            .fold(0f64, f64::max);
        assert!(worst < 2e-6, "worst rescaled error {worst:e}");
    }
}
