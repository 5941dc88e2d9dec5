//! EditMGT's attention consolidation: where in the image an instruction applies.
//!
//! During editing the transformer captures, for a few chosen blocks, the attention of the text
//! rows (queries) to the image tokens (keys). This crate turns those maps into one score per
//! image token, the localisation the region-hold sampler (`editmgt-sampler`) uses to keep every
//! token outside the edited region equal to the source (reference.md section 6):
//!
//! 1. [`consolidate`]: the mean over the captured blocks and the text rows (all rows, or only
//!    those of the query words) of head-averaged `[B, T, N]` maps, giving a [`ScoreMap`]
//!    `[B, h, w]`;
//! 2. [`rescale`] / [`ScoreMap::rescale`]: `(s - min) / (max - min + 1e-8)` per batch item;
//! 3. [`AdaptiveSmoothing`] / [`ScoreMap::smooth`]: Gaussian smoothing weighted down where the
//!    local variance is high, peaks preserved, range restored;
//! 4. [`upsample_bicubic`] / [`ScoreMap::upsample`]: PyTorch's bicubic interpolation, from the
//!    attention grid (32x32) to the token grid (64x64).
//!
//! [`local_scores`] chains 1 to 3. [`heatmap`] renders a score grid over the source image as an
//! [`image::RgbImage`], for users who want to see where the edit will land.
//!
//! All of this is small data on the CPU (`ndarray`). Each step reproduces the reference's
//! arithmetic (PyTorch, SciPy and NumPy in `f32`/`f64` as they compute it), so the outputs agree
//! with the reference to float32 rounding. Unlike the reference, which hard-codes a batch of one
//! and a 32x32 grid, every function takes any batch and any `h x w` grid, and refuses bad input
//! with an [`AttentionError`] instead of panicking or producing NaN.
//!
//! ```
//! use editmgt_attention::{AdaptiveSmoothing, consolidate};
//! use ndarray::Array3;
//!
//! // Two captured blocks, batch 1, 3 text rows, a 4x4 image grid.
//! let block_a = Array3::from_shape_fn((1, 3, 16), |(_, t, n)| (t + n) as f32 / 20.0);
//! let block_b = Array3::from_shape_fn((1, 3, 16), |(_, _, n)| (n % 4) as f32 / 4.0);
//! let scores = consolidate(&[block_a.view(), block_b.view()], None, 4, 4)?
//!     .rescale()
//!     .smooth(&AdaptiveSmoothing::default())?;
//! let on_tokens = scores.upsample(2)?; // 8x8 token grid
//! assert_eq!(on_tokens.as_slice().len(), 64);
//! # Ok::<(), editmgt_attention::AttentionError>(())
//! ```

mod consolidate;
mod error;
mod heatmap;
mod rescale;
mod score_map;
pub mod smoothing;
mod upsample;

pub use consolidate::{consolidate, local_scores};
pub use error::AttentionError;
pub use heatmap::{colour, heatmap};
pub use rescale::{RESCALE_EPSILON, rescale, rescale_in_place};
pub use score_map::ScoreMap;
pub use smoothing::AdaptiveSmoothing;
pub use upsample::{CUBIC_A, cubic_coefficients, resize_bicubic, upsample_bicubic};

impl ScoreMap {
    /// Renders batch item `index` as a heatmap over `source` (see [`heatmap`]).
    pub fn heatmap(
        &self,
        index: usize,
        source: &image::RgbImage,
        opacity: f32,
    ) -> Result<image::RgbImage, AttentionError> {
        if index >= self.batch() {
            return Err(AttentionError::invalid(
                "index",
                index,
                &format!("the map has a batch of {}", self.batch()),
            ));
        }
        heatmap(self.grid(index), source, opacity)
    }
}
