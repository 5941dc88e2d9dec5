//! EditMGT instruction-based image editing in Rust, on [Burn](https://burn.dev).
//!
//! An [`Editor`] holds a loaded EditMGT model (the released `WeiChow/EditMGT` folder layout) on
//! a Burn [`Device`]: the CPU (`flex`, the default feature), wgpu or CUDA. [`Editor::edit`]
//! applies an instruction to an image:
//!
//! ```no_run
//! use editmgt_pipeline::{DeviceSpec, EditRequest, Editor, EditorOptions};
//!
//! # fn main() -> Result<(), editmgt_pipeline::EditError> {
//! let device = DeviceSpec::Cpu.device()?;
//! let editor = Editor::from_folder("EditMGT", &device, EditorOptions::default())?;
//! let image = editmgt_pipeline::load_image("photo.jpg")?;
//! let edited = editor.edit(&image, &EditRequest::new("make it into Ghibli style").seed(7))?;
//! edited.image.save("edited.png").expect("write the result");
//! # Ok(()) }
//! ```
//!
//! One edit (docs/model.md section 8, see `docs/architecture.md`): both prompts go through CLIP
//! and Gemma-2 (`editmgt-text`); the source image becomes a 64x64 token grid (`editmgt-vq`);
//! for every step the transformer (`editmgt-mgt`) predicts all tokens for the guidance batch
//! `[negative, positive]` with the source tokens injected into its attention; the sampler
//! (`editmgt-sampler`) keeps the confident predictions and masks the rest again; with region
//! hold on, the transformer's text-to-image attention, consolidated (`editmgt-attention`),
//! decides which tokens keep their source value. The VQ decoder turns the final tokens into
//! pixels, resized back to the input's size.
//!
//! On the CPU with glibc, a long run is about 15% faster when the allocator keeps freed memory
//! for reuse instead of unmapping every large activation (the `editmgt` CLI sets this itself):
//! start the process with
//! `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295`.
//!
//! [`Device`]: burn::tensor::Device

mod adapter;
mod device;
mod editor;
mod error;
mod freed_memory;
#[cfg(feature = "hub")]
mod hub;
mod mask;
mod request;
mod timings;

pub use adapter::LoraOptions;
pub use device::DeviceSpec;
pub use editor::{
    EditOutput, Editor, EditorOptions, Flow, GenerateOutput, Hooks, Readback, StepEvent,
    TextEncoders,
};
pub use error::EditError;
pub use mask::mask_grid;
pub use request::{DEFAULT_NEGATIVE_PROMPT, EditRequest, GenerateRequest, RegionHold};
pub use timings::{LoadTimings, Timings, peak_rss};

pub use burn::tensor::Device;
pub use editmgt_attention::ScoreMap;
pub use editmgt_core::FloatType;
pub use editmgt_core::bf16_products::Isa as Bf16Isa;
pub use editmgt_mgt::LoraStreams;
pub use editmgt_sampler::{NoiseSource, ReplayNoise, SeededNoise, Temperature};
pub use image::{GrayImage, RgbImage};

/// Reads a PNG, JPEG or WebP file into an RGB image.
pub fn load_image(path: impl AsRef<std::path::Path>) -> Result<RgbImage, EditError> {
    Ok(editmgt_vq::imaging::load_rgb(path)?)
}

/// Reads a mask image (white = repaint) as greyscale.
pub fn load_mask(path: impl AsRef<std::path::Path>) -> Result<GrayImage, EditError> {
    let path = path.as_ref();
    let image = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| {
            EditError::Image(editmgt_vq::VqError::ImageFile {
                path: path.to_path_buf(),
                source: image::ImageError::IoError(e),
            })
        })?
        .decode()
        .map_err(|source| {
            EditError::Image(editmgt_vq::VqError::ImageFile {
                path: path.to_path_buf(),
                source,
            })
        })?;
    Ok(image.to_luma8())
}
