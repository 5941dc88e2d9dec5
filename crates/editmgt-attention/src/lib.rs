//! EditMGT's attention consolidation: where in the image an instruction applies.
//!
//! During editing the transformer captures, for a few chosen blocks, the attention of the text
//! rows (queries) to the image tokens (keys). This crate turns those maps into one score per
//! image token, the localisation the region-hold sampler (`editmgt-sampler`) uses to keep every
//! token outside the edited region equal to the source (docs/model.md section 6):
//!
//! 1. [`consolidate`]: the mean over the captured blocks and the text rows (all rows, or only
//!    those of the query words, [`TextRows`]) of head-averaged `[B, T, N]` maps, giving a
//!    [`ScoreMap`] `[B, h, w]`;
//! 2. [`ScoreMap::rescale`]: `(s - min) / (max - min + 1e-8)` per batch item;
//! 3. [`AdaptiveSmoothing`] / [`ScoreMap::smooth`]: Gaussian smoothing weighted down where the
//!    local variance is high, peaks preserved, range restored;
//! 4. [`Resize`] / [`ScoreMap::upsample`]: PyTorch's bicubic interpolation, from the attention
//!    grid (32x32) to the token grid (64x64).
//!
//! [`local_scores`] chains 1 to 3; a [`Localizer`] prepares 1 to 4 once for an edit loop.
//! [`heatmap`] renders a score grid over the source image as an [`image::RgbImage`], for users
//! who want to see where the edit will land.
//!
//! Everything runs on Burn tensors on the caller's device (CPU, wgpu or CUDA alike), so the edit
//! loop never brings scores back to the host: the filters are matrix products with small
//! prepared matrices, and the one order statistic the smoothing needs is found by bisection on
//! the device ([`editmgt_core::select`]). Each step follows the reference's arithmetic (PyTorch,
//! SciPy and NumPy in `f32`/`f64`), so the outputs agree with it to float32 rounding. Unlike the
//! reference, which hard-codes a batch of one and a 32x32 grid, every function takes any batch
//! and any `h x w` grid, and refuses bad input with an [`AttentionError`] instead of panicking
//! or producing NaN.
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use editmgt_attention::{AdaptiveSmoothing, TextRows, consolidate};
//!
//! let device = Device::flex();
//! // Two captured blocks, batch 1, 3 text rows, a 4x4 image grid.
//! let block = |k: usize| {
//!     let values: Vec<f32> = (0..48).map(|i| ((i * 7 + k) % 11) as f32 / 20.0).collect();
//!     Tensor::<3>::from_data(TensorData::new(values, [1, 3, 16]), &device)
//! };
//! let scores = consolidate(&[block(0), block(1)], &TextRows::all(), 4, 4)?
//!     .rescale()
//!     .smooth(&AdaptiveSmoothing::default())?;
//! let on_tokens = scores.upsample(2)?; // 8x8 token grid, still on the device
//! assert_eq!(on_tokens.to_vec()?.len(), 64);
//! # Ok::<(), editmgt_attention::AttentionError>(())
//! ```

mod consolidate;
mod error;
mod heatmap;
mod rescale;
mod score_map;
pub mod smoothing;
mod upsample;

pub use consolidate::{Localization, Localizer, TextRows, consolidate, local_scores};
pub use error::AttentionError;
pub use heatmap::{colour, heatmap};
pub use rescale::{RESCALE_EPSILON, rescale_rows};
pub use score_map::ScoreMap;
pub use smoothing::{AdaptiveSmoothing, Smoother};
pub use upsample::{CUBIC_A, Resize, bicubic_matrix, cubic_coefficients};
