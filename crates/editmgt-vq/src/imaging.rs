//! Image files, resizing, and conversion between images and tensors.
//!
//! Images enter the model as `[B, 3, H, W]` float tensors with values in `[0, 1]` (no `[-1, 1]`
//! normalisation) and leave it through [`from_tensor`], which clips to `[0, 1]` and rounds
//! `x * 255` half-to-even, as the reference's numpy post-processing does.

use std::borrow::Borrow;
use std::io::Cursor;
use std::path::Path;

use burn::tensor::{DType, Device, Tensor, TensorData};
use image::imageops::FilterType;
use image::{ImageReader, RgbImage};

use crate::VqError;

/// Reads a PNG, JPEG or WebP file into an RGB image (alpha is dropped, grey expanded).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage, VqError> {
    let path = path.as_ref();
    let wrap = |source| VqError::ImageFile {
        path: path.to_path_buf(),
        source,
    };
    let reader = ImageReader::open(path)
        .map_err(|e| wrap(image::ImageError::IoError(e)))?
        .with_guessed_format()
        .map_err(|e| wrap(image::ImageError::IoError(e)))?;
    Ok(reader.decode().map_err(wrap)?.to_rgb8())
}

/// Decodes PNG, JPEG or WebP bytes into an RGB image.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, VqError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| VqError::ImageBytes(image::ImageError::IoError(e)))?;
    Ok(reader.decode().map_err(VqError::ImageBytes)?.to_rgb8())
}

/// Writes an image; the format follows the file extension (PNG, JPEG, WebP).
pub fn save(image: &RgbImage, path: impl AsRef<Path>) -> Result<(), VqError> {
    let path = path.as_ref();
    image.save(path).map_err(|source| VqError::ImageWrite {
        path: path.to_path_buf(),
        source,
    })
}

/// Resizes with a bicubic (Catmull-Rom, a = -0.5, as PIL's `BICUBIC`) filter whose support
/// widens when shrinking, so downscaling is antialiased. Returns a copy when the size already
/// matches.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.width() == width && image.height() == height {
        return image.clone();
    }
    image::imageops::resize(image, width, height, FilterType::CatmullRom)
}

/// Converts same-sized RGB images (owned or borrowed) into a `[B, 3, H, W]` f32 tensor with
/// values in `[0, 1]`.
pub fn to_tensor<I: Borrow<RgbImage>>(images: &[I], device: &Device) -> Result<Tensor<4>, VqError> {
    let first = images.first().ok_or(VqError::EmptyBatch)?.borrow();
    let (w, h) = first.dimensions();
    for (index, img) in images.iter().map(Borrow::borrow).enumerate() {
        if img.dimensions() != (w, h) {
            return Err(VqError::MixedSizes {
                index,
                width: img.width(),
                height: img.height(),
                first_width: w,
                first_height: h,
            });
        }
    }
    let (w, h) = (w as usize, h as usize);
    let plane = w * h;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (img, out) in images
        .iter()
        .map(Borrow::borrow)
        .zip(data.chunks_exact_mut(3 * plane))
    {
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = f32::from(px.0[c]) / 255.0;
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [images.len(), 3, h, w]),
        device,
    ))
}

/// Converts a `[B, 3, H, W]` tensor with values nominally in `[0, 1]` into RGB images:
/// clip to `[0, 1]`, then `round(x * 255)` (ties to even).
pub fn from_tensor(images: Tensor<4>) -> Result<Vec<RgbImage>, VqError> {
    let [b, c, h, w] = images.dims();
    if c != 3 {
        return Err(VqError::InvalidShape {
            what: "images",
            expected: "[B, 3, H, W]".into(),
            found: vec![b, c, h, w],
        });
    }
    let data = images
        .cast(DType::F32)
        .try_into_data()
        .map_err(|e| VqError::Readback(format!("{e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| VqError::Readback(format!("{e:?}")))?;
    let plane = h * w;
    Ok(data
        .chunks_exact(3 * plane)
        .map(|item| {
            let mut img = RgbImage::new(w as u32, h as u32);
            for (i, px) in img.pixels_mut().enumerate() {
                for ch in 0..3 {
                    px.0[ch] = to_u8(item[ch * plane + i]);
                }
            }
            img
        })
        .collect())
}

/// `round(clip(x, 0, 1) * 255)`, ties to even like numpy.
pub fn to_u8(x: f32) -> u8 {
    let x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
    (x * 255.0).round_ties_even() as u8
}
