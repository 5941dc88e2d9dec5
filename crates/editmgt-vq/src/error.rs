use std::path::PathBuf;

use editmgt_core::LoadError;

/// Errors of the VQ tokenizer and the image helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VqError {
    /// The model folder, its configuration or its weights could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An image file could not be read or decoded.
    #[error("cannot read image `{}`: {source}", path.display())]
    ImageFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// Bytes that are not an image in a supported format (PNG, JPEG, WebP).
    #[error("cannot decode image bytes: {0}")]
    ImageBytes(#[source] image::ImageError),
    /// An image could not be written.
    #[error("cannot write image `{}`: {source}", path.display())]
    ImageWrite {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// Height or width not divisible by the model's downsampling factor.
    #[error("image size {height}x{width} is not a multiple of the VQ downsampling factor {factor}")]
    InvalidImageSize {
        /// Image height.
        height: usize,
        /// Image width.
        width: usize,
        /// The factor (16 for the released model).
        factor: usize,
    },
    /// A tensor argument has the wrong shape.
    #[error("{what}: expected {expected}, got shape {found:?}")]
    InvalidShape {
        /// Which argument.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A token index outside the codebook.
    #[error("token {token} is outside the codebook of {codebook} entries")]
    TokenOutOfRange {
        /// The offending token id.
        token: i64,
        /// The codebook size.
        codebook: usize,
    },
    /// An empty batch was passed where at least one image is needed.
    #[error("empty image batch")]
    EmptyBatch,
    /// Images of one batch differ in size.
    #[error(
        "image {index} is {width}x{height}, the batch's first image is {first_width}x{first_height}"
    )]
    MixedSizes {
        /// Index of the offending image.
        index: usize,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The first image's width.
        first_width: u32,
        /// The first image's height.
        first_height: u32,
    },
    /// Reading tensor data back from the device failed.
    #[error("reading tensor data failed: {0}")]
    Readback(String),
}
