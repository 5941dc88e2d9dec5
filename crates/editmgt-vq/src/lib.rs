//! EditMGT's VQ image tokenizer on Burn.
//!
//! The first and last stage of an edit: [`VqModel::tokenize`] turns a `[B, 3, H, W]` image batch
//! with values in `[0, 1]` into a `[B, H/16, W/16]` grid of codebook indices (a 1024x1024 image
//! becomes 64x64 tokens), and [`VqModel::decode`] turns a token grid back into pixels. The model is
//! diffusers' `VQModel` as EditMGT releases it (`vqvae/` in the model folder), loaded from
//! safetensors stored as f32, f16 or bf16 onto any Burn [`Device`](burn::tensor::Device).
//!
//! [`imaging`] reads PNG/JPEG/WebP files into RGB, resizes (bicubic) and converts between images
//! and tensors.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use editmgt_vq::{imaging, VqModel};
//!
//! # fn main() -> Result<(), editmgt_vq::VqError> {
//! let device = Device::flex();
//! let vq = VqModel::from_folder("model/vqvae", &device, Default::default())?;
//! let image = imaging::load_rgb("photo.jpg")?;
//! let image = imaging::resize(&image, 1024, 1024);
//! let tokens = vq.tokenize(imaging::to_tensor(&[image], &device)?)?; // [1, 64, 64]
//! let pixels = vq.decode(tokens)?; // [1, 3, 1024, 1024]
//! let edited = imaging::from_tensor(pixels)?;
//! # Ok(()) }
//! ```

mod accumulate;
mod banded;
mod config;
mod decoder;
mod encoder;
mod error;
pub mod imaging;
mod model;
mod quantizer;
mod resnet;

pub use config::VqConfig;
pub use error::VqError;
pub use model::VqModel;
pub use quantizer::VectorQuantizer;
