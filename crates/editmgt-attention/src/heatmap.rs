//! Rendering a score grid as a heatmap over the source image, to see where an edit will land.

use image::{Rgb, RgbImage};

use crate::AttentionError;

/// Anchor colours of the colour map (a "turbo"-like ramp: dark indigo, blue, cyan, green,
/// yellow, orange, dark red), evenly spaced on `[0, 1]` and linearly interpolated.
const RAMP: [[f32; 3]; 9] = [
    [48.0, 18.0, 59.0],
    [67.0, 85.0, 199.0],
    [62.0, 155.0, 254.0],
    [24.0, 215.0, 203.0],
    [70.0, 247.0, 131.0],
    [164.0, 252.0, 60.0],
    [239.0, 203.0, 58.0],
    [251.0, 128.0, 34.0],
    [160.0, 20.0, 6.0],
];

/// The colour of a score in `[0, 1]` (values outside are clamped, NaN is 0): low scores are dark
/// blue, high scores red.
pub fn colour(value: f32) -> [u8; 3] {
    let v = if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    };
    let pos = v * (RAMP.len() - 1) as f32;
    let i = (pos.floor() as usize).min(RAMP.len() - 2);
    let t = pos - i as f32;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    std::array::from_fn(|c| (a[c] + (b[c] - a[c]) * t).round().clamp(0.0, 255.0) as u8)
}

/// Renders `scores` (one `h x w` grid, row-major on the host, values expected in `[0, 1]`,
/// e.g. after [`ScoreMap::rescale`](crate::ScoreMap::rescale)) as a heatmap blended over
/// `source`.
///
/// The grid is stretched over the whole image (bilinear, half-pixel centres), coloured with
/// [`colour`], and mixed as `(1 - opacity) * source + opacity * colour`. The result has the
/// source's size. `opacity` must be in `[0, 1]`.
pub fn heatmap(
    scores: &[f32],
    h: usize,
    w: usize,
    source: &RgbImage,
    opacity: f32,
) -> Result<RgbImage, AttentionError> {
    if !(0.0..=1.0).contains(&opacity) {
        return Err(AttentionError::invalid(
            "opacity",
            opacity,
            "must be in [0, 1]",
        ));
    }
    if h == 0 || w == 0 {
        return Err(AttentionError::empty("score grid"));
    }
    if scores.len() != h * w {
        return Err(AttentionError::LengthMismatch {
            what: format!("score grid {h}x{w}"),
            expected: h * w,
            found: scores.len(),
        });
    }
    let at = |y: usize, x: usize| scores[y * w + x];
    let (width, height) = source.dimensions();
    if width == 0 || height == 0 {
        return Err(AttentionError::empty("source image"));
    }
    let ys = bilinear_taps(h, height as usize);
    let xs = bilinear_taps(w, width as usize);
    let mut out = RgbImage::new(width, height);
    for (py, &(y0, y1, ty)) in ys.iter().enumerate() {
        for (px, &(x0, x1, tx)) in xs.iter().enumerate() {
            let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
            let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
            let value = top * (1.0 - ty) + bottom * ty;
            let c = colour(value);
            let s = source.get_pixel(px as u32, py as u32).0;
            let mixed = std::array::from_fn(|k| {
                (f32::from(s[k]) * (1.0 - opacity) + f32::from(c[k]) * opacity)
                    .round()
                    .clamp(0.0, 255.0) as u8
            });
            out.put_pixel(px as u32, py as u32, Rgb(mixed));
        }
    }
    Ok(out)
}

/// For each output coordinate: the two neighbouring grid cells and the blend factor.
fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (input - 1) as f32);
            let i0 = src.floor() as usize;
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_ends() {
        assert_eq!(colour(0.0), [48, 18, 59]);
        assert_eq!(colour(1.0), [160, 20, 6]);
        assert_eq!(colour(f32::NAN), colour(-3.0));
    }

    #[test]
    fn heatmap_has_the_source_size_and_blends() {
        let source = RgbImage::from_pixel(10, 6, Rgb([100, 100, 100]));
        let scores: Vec<f32> = (0..4).map(|i| i as f32 / 3.0).collect();
        let img = heatmap(&scores, 2, 2, &source, 0.0).unwrap();
        assert_eq!(img.dimensions(), (10, 6));
        assert!(img.pixels().all(|p| p.0 == [100, 100, 100]));
        let img = heatmap(&scores, 2, 2, &source, 1.0).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, colour(0.0));
        assert_eq!(img.get_pixel(9, 5).0, colour(1.0));
        assert!(heatmap(&scores, 2, 2, &source, 1.5).is_err());
    }
}
