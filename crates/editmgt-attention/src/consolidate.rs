//! Consolidating captured text-to-image attention into one score per image token
//! (reference.md section 6).

use ndarray::{ArrayView3, Axis};

use crate::{AdaptiveSmoothing, AttentionError, ScoreMap};

/// Averages captured attention maps into scores `[B, height * width]` (returned as a
/// [`ScoreMap`] on the `height x width` grid).
///
/// Each element of `maps` is one captured block's text-to-image attention for the conditional
/// half of the guidance batch, already averaged over heads: `[B, T, N]` with `T` text rows
/// (queries) and `N = height * width` image tokens (keys). This is what the transformer crate
/// hands over; if you hold per-head maps, average the heads first (all blocks have the same
/// number of heads, so the mean over blocks, heads and rows is the same either way).
///
/// `rows` selects the text rows to average (for example the rows of the query words); `None`
/// averages all `T` rows. Rows index the text sequence the maps were captured with (the Gemma
/// tokens); locate query words in that tokenisation (the reference looks them up in the CLIP
/// tokenisation and uses those positions on the Gemma rows, a bug). Rows are used as listed (a row listed twice counts twice); an empty
/// list is an error (the reference would produce NaN).
///
/// The mean over blocks and rows is accumulated in `f64` and rounded to `f32` once.
pub fn consolidate(
    maps: &[ArrayView3<'_, f32>],
    rows: Option<&[usize]>,
    height: usize,
    width: usize,
) -> Result<ScoreMap, AttentionError> {
    let first = maps.first().ok_or(AttentionError::NoMaps)?;
    let (batch, text_rows, tokens) = first.dim();
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
    for (i, map) in maps.iter().enumerate() {
        if map.dim() != (batch, text_rows, tokens) {
            return Err(AttentionError::ShapeMismatch {
                what: format!("attention map {i} [B, T, N]"),
                expected: vec![batch, text_rows, tokens],
                found: map.shape().to_vec(),
            });
        }
    }
    let all_rows: Vec<usize>;
    let rows = match rows {
        Some(rows) => {
            if rows.is_empty() {
                return Err(AttentionError::NoRows);
            }
            if let Some(&row) = rows.iter().find(|&&r| r >= text_rows) {
                return Err(AttentionError::RowOutOfRange {
                    row,
                    rows: text_rows,
                });
            }
            rows
        }
        None => {
            if text_rows == 0 {
                return Err(AttentionError::NoRows);
            }
            all_rows = (0..text_rows).collect();
            &all_rows
        }
    };

    let mut sums = vec![0f64; batch * tokens];
    for map in maps {
        for (b, item) in map.axis_iter(Axis(0)).enumerate() {
            let acc = &mut sums[b * tokens..(b + 1) * tokens];
            for &r in rows {
                let row = item.index_axis(Axis(0), r);
                match row.as_slice() {
                    Some(values) => {
                        for (a, &v) in acc.iter_mut().zip(values) {
                            *a += f64::from(v);
                        }
                    }
                    None => {
                        for (a, &v) in acc.iter_mut().zip(row.iter()) {
                            *a += f64::from(v);
                        }
                    }
                }
            }
        }
    }
    let count = (maps.len() * rows.len()) as f64;
    let data = sums.into_iter().map(|s| (s / count) as f32).collect();
    ScoreMap::from_flat(data, batch, height, width)
}

/// The localisation scores the region hold uses, on the attention grid: [`consolidate`], then
/// [`ScoreMap::rescale`], then [`ScoreMap::smooth`] with `smoothing`
/// ([`AdaptiveSmoothing::default`] is the released pipeline's setting).
///
/// The sampler upsamples these to the token grid itself.
pub fn local_scores(
    maps: &[ArrayView3<'_, f32>],
    rows: Option<&[usize]>,
    height: usize,
    width: usize,
    smoothing: &AdaptiveSmoothing,
) -> Result<ScoreMap, AttentionError> {
    consolidate(maps, rows, height, width)?
        .rescale()
        .smooth(smoothing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn mean_over_blocks_and_rows() {
        let a = Array3::from_shape_fn((2, 3, 4), |(b, t, n)| (b * 100 + t * 10 + n) as f32);
        let b = a.mapv(|v| v + 1.0);
        let s = consolidate(&[a.view(), b.view()], None, 2, 2).unwrap();
        assert_eq!(s.batch(), 2);
        // mean over t of (10 t) = 10, plus 0.5 from the second block
        assert_eq!(s.as_slice()[..4], [10.5, 11.5, 12.5, 13.5]);
        assert_eq!(s.as_slice()[4..], [110.5, 111.5, 112.5, 113.5]);
        let only = consolidate(&[a.view()], Some(&[2]), 2, 2).unwrap();
        assert_eq!(only.as_slice()[..4], [20.0, 21.0, 22.0, 23.0]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let a = Array3::<f32>::zeros((1, 3, 4));
        let c = Array3::<f32>::zeros((1, 2, 4));
        assert_eq!(consolidate(&[], None, 2, 2), Err(AttentionError::NoMaps));
        assert!(consolidate(&[a.view(), c.view()], None, 2, 2).is_err());
        assert!(consolidate(&[a.view()], None, 3, 2).is_err());
        assert_eq!(
            consolidate(&[a.view()], Some(&[3]), 2, 2),
            Err(AttentionError::RowOutOfRange { row: 3, rows: 3 })
        );
        assert_eq!(
            consolidate(&[a.view()], Some(&[]), 2, 2),
            Err(AttentionError::NoRows)
        );
    }
}
