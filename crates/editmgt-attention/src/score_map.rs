//! [`ScoreMap`]: a batch of per-token scores on an `height x width` grid, on a device.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::AttentionError;
use crate::smoothing::AdaptiveSmoothing;
use crate::upsample::Resize;

/// A batch of scores, one `height x width` grid per batch item: a `[B, H, W]` float tensor on
/// the device it was computed on.
///
/// This is what [`consolidate`](crate::consolidate) returns and what the sampler's region hold
/// reads: a position `i` of the flattened grid is the image token `(i / width, i % width)`.
/// Every method works per batch item, on any grid size, on the map's device; only
/// [`ScoreMap::to_vec`] and [`ScoreMap::heatmap`] read values back to the host.
#[derive(Debug, Clone)]
pub struct ScoreMap {
    values: Tensor<3>,
}

impl ScoreMap {
    /// Wraps `[B, H, W]` scores (cast to `f32` if they are not).
    pub fn new(values: Tensor<3>) -> Self {
        let values = if values.dtype() == DType::F32 {
            values
        } else {
            values.cast(DType::F32)
        };
        Self { values }
    }

    /// Builds a map on `device` from row-major `[batch, height, width]` host values.
    pub fn from_flat(
        data: Vec<f32>,
        batch: usize,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<Self, AttentionError> {
        let expected = batch * height * width;
        if data.len() != expected {
            return Err(AttentionError::LengthMismatch {
                what: format!("score map [{batch}, {height}, {width}]"),
                expected,
                found: data.len(),
            });
        }
        if expected == 0 {
            return Err(AttentionError::empty("score map"));
        }
        Ok(Self {
            values: Tensor::from_data(TensorData::new(data, [batch, height, width]), device),
        })
    }

    /// The batch size `B`.
    pub fn batch(&self) -> usize {
        self.values.dims()[0]
    }

    /// The grid height `H`.
    pub fn height(&self) -> usize {
        self.values.dims()[1]
    }

    /// The grid width `W`.
    pub fn width(&self) -> usize {
        self.values.dims()[2]
    }

    /// The device the scores are on.
    pub fn device(&self) -> Device {
        self.values.device()
    }

    /// The `[B, H, W]` tensor.
    pub fn tensor(&self) -> &Tensor<3> {
        &self.values
    }

    /// The `[B, H, W]` tensor, consuming the map.
    pub fn into_tensor(self) -> Tensor<3> {
        self.values
    }

    /// The scores flattened per batch item, `[B, H * W]`.
    pub fn rows(&self) -> Tensor<2> {
        let [b, h, w] = self.values.dims();
        self.values.clone().reshape([b, h * w])
    }

    /// Batch item `index` alone, as a map of batch 1.
    pub fn item(&self, index: usize) -> Result<Self, AttentionError> {
        if index >= self.batch() {
            return Err(AttentionError::invalid(
                "index",
                index,
                &format!("the map has a batch of {}", self.batch()),
            ));
        }
        Ok(Self {
            values: self.values.clone().slice(index..index + 1),
        })
    }

    /// Reads the row-major values back to the host (`B * H * W`; batch item `b` starts at
    /// `b * H * W`).
    pub fn to_vec(&self) -> Result<Vec<f32>, AttentionError> {
        self.values
            .clone()
            .try_into_data()
            .map_err(|e| AttentionError::Readback(format!("{e:?}")))?
            .try_to_vec::<f32>()
            .map_err(|e| AttentionError::Readback(format!("{e:?}")))
    }

    /// [`rescale_rows`](crate::rescale_rows) applied to every batch item:
    /// `(s - min) / (max - min + 1e-8)`.
    pub fn rescale(&self) -> Self {
        let [b, h, w] = self.values.dims();
        Self {
            values: crate::rescale_rows(self.rows()).reshape([b, h, w]),
        }
    }

    /// Adaptive smoothing ([`AdaptiveSmoothing::apply`]) of every batch item.
    pub fn smooth(&self, smoothing: &AdaptiveSmoothing) -> Result<Self, AttentionError> {
        smoothing.apply(self)
    }

    /// Bicubic upsampling of every batch item by an integer `factor` (see [`Resize`]).
    pub fn upsample(&self, factor: usize) -> Result<Self, AttentionError> {
        if factor == 0 {
            return Err(AttentionError::invalid(
                "factor",
                factor,
                "must be at least 1",
            ));
        }
        self.resize(self.height() * factor, self.width() * factor)
    }

    /// Bicubic resize of every batch item to `height x width` (see [`Resize`]; prepare a
    /// [`Resize`] once to resize many maps without uploading its matrices each time).
    pub fn resize(&self, height: usize, width: usize) -> Result<Self, AttentionError> {
        Resize::new(
            (self.height(), self.width()),
            (height, width),
            &self.device(),
        )?
        .apply(self)
    }

    /// Renders batch item `index` as a heatmap over `source` (see [`heatmap`](crate::heatmap));
    /// reads that item's scores back to the host.
    pub fn heatmap(
        &self,
        index: usize,
        source: &image::RgbImage,
        opacity: f32,
    ) -> Result<image::RgbImage, AttentionError> {
        let values = self.item(index)?.to_vec()?;
        crate::heatmap(&values, self.height(), self.width(), source, opacity)
    }
}
