//! [`ScoreMap`]: a batch of per-token scores on an `height x width` grid.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::AttentionError;
use crate::smoothing::AdaptiveSmoothing;

/// A batch of scores, one `height x width` grid per batch item (`[B, H, W]`, row-major).
///
/// This is what [`consolidate`](crate::consolidate) returns and what the sampler's region hold
/// reads: a position `i` of the flattened grid is the image token `(i / width, i % width)`.
/// Every method works per batch item, on any grid size.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMap {
    values: Array3<f32>,
}

impl ScoreMap {
    /// Wraps a `[B, H, W]` array (any memory layout; it is stored row-major).
    pub fn new(values: Array3<f32>) -> Self {
        let values = if values.is_standard_layout() {
            values
        } else {
            values.as_standard_layout().into_owned()
        };
        Self { values }
    }

    /// Builds a map from row-major `[batch, height, width]` values.
    pub fn from_flat(
        data: Vec<f32>,
        batch: usize,
        height: usize,
        width: usize,
    ) -> Result<Self, AttentionError> {
        let expected = batch * height * width;
        if data.len() != expected {
            return Err(AttentionError::LengthMismatch {
                what: format!("score map [{batch}, {height}, {width}]"),
                expected,
                found: data.len(),
            });
        }
        let values = Array3::from_shape_vec((batch, height, width), data).map_err(|_| {
            AttentionError::ShapeMismatch {
                what: "score map".into(),
                expected: vec![batch, height, width],
                found: vec![expected],
            }
        })?;
        Ok(Self { values })
    }

    /// Stacks single grids (all of the same size) into a batch.
    pub fn from_grids(grids: &[Array2<f32>]) -> Result<Self, AttentionError> {
        let first = grids
            .first()
            .ok_or_else(|| AttentionError::empty("batch"))?;
        let (h, w) = first.dim();
        for g in grids {
            if g.dim() != (h, w) {
                return Err(AttentionError::ShapeMismatch {
                    what: "grid of the batch".into(),
                    expected: vec![h, w],
                    found: vec![g.nrows(), g.ncols()],
                });
            }
        }
        let views: Vec<_> = grids.iter().map(|g| g.view()).collect();
        let values =
            ndarray::stack(Axis(0), &views).map_err(|_| AttentionError::ShapeMismatch {
                what: "grids".into(),
                expected: vec![h, w],
                found: vec![],
            })?;
        Ok(Self::new(values))
    }

    /// The batch size `B`.
    pub fn batch(&self) -> usize {
        self.values.dim().0
    }

    /// The grid height `H`.
    pub fn height(&self) -> usize {
        self.values.dim().1
    }

    /// The grid width `W`.
    pub fn width(&self) -> usize {
        self.values.dim().2
    }

    /// The values as a `[B, H, W]` view.
    pub fn view(&self) -> ArrayView3<'_, f32> {
        self.values.view()
    }

    /// One batch item's grid.
    ///
    /// Panics if `index >= self.batch()` (like slice indexing).
    pub fn grid(&self, index: usize) -> ArrayView2<'_, f32> {
        self.values.index_axis(Axis(0), index)
    }

    /// The row-major values (`B * H * W`; batch item `b` starts at `b * H * W`).
    pub fn as_slice(&self) -> &[f32] {
        self.values
            .as_slice()
            .expect("ScoreMap is always stored in standard layout")
    }

    /// The row-major values, consuming the map.
    pub fn into_vec(self) -> Vec<f32> {
        let (data, offset) = self.values.into_raw_vec_and_offset();
        debug_assert!(offset.unwrap_or(0) == 0);
        data
    }

    /// The `[B, H, W]` array, consuming the map.
    pub fn into_array(self) -> Array3<f32> {
        self.values
    }

    fn map_grids(
        &self,
        mut f: impl FnMut(ArrayView2<'_, f32>) -> Result<Array2<f32>, AttentionError>,
    ) -> Result<Self, AttentionError> {
        let grids = self
            .values
            .outer_iter()
            .map(&mut f)
            .collect::<Result<Vec<_>, _>>()?;
        if grids.is_empty() {
            return Err(AttentionError::empty("batch"));
        }
        Self::from_grids(&grids)
    }

    /// [`rescale`](crate::rescale) applied to every batch item: `(s - min) / (max - min + 1e-8)`.
    pub fn rescale(&self) -> Self {
        let mut out = self.values.clone();
        for mut grid in out.outer_iter_mut() {
            if let Some(slice) = grid.as_slice_mut() {
                crate::rescale::rescale_in_place(slice);
            }
        }
        Self { values: out }
    }

    /// Adaptive smoothing ([`AdaptiveSmoothing::apply`]) of every batch item.
    pub fn smooth(&self, smoothing: &AdaptiveSmoothing) -> Result<Self, AttentionError> {
        self.map_grids(|g| smoothing.apply(g))
    }

    /// Bicubic upsampling of every batch item by an integer `factor`
    /// ([`upsample_bicubic`](crate::upsample_bicubic)).
    pub fn upsample(&self, factor: usize) -> Result<Self, AttentionError> {
        self.map_grids(|g| crate::upsample::upsample_bicubic(g, factor))
    }

    /// Bicubic resize of every batch item to `height x width`
    /// ([`resize_bicubic`](crate::resize_bicubic)).
    pub fn resize(&self, height: usize, width: usize) -> Result<Self, AttentionError> {
        self.map_grids(|g| crate::upsample::resize_bicubic(g, height, width))
    }
}
