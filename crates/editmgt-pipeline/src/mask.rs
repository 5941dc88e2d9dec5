use image::GrayImage;
use image::imageops::FilterType;

/// The token-grid mask of a mask image (white = repaint): greyscale, resized to the grid with a
/// Lanczos filter, scaled to `[0, 1]`, and `>= 0.5` marks a cell to repaint (docs/model.md
/// section 2). Any mask size is accepted. Row-major `height x width`.
pub fn mask_grid(mask: &GrayImage, height: usize, width: usize) -> Vec<bool> {
    let resized = if mask.dimensions() == (width as u32, height as u32) {
        mask.clone()
    } else {
        image::imageops::resize(mask, width as u32, height as u32, FilterType::Lanczos3)
    };
    resized
        .pixels()
        .map(|p| f32::from(p.0[0]) / 255.0 >= 0.5)
        .collect()
}
