//! A 2-D convolution (stride 1, no dilation, one group) on the CPU without im2col, over plain
//! `f32` slices.
//!
//! The input is copied once into a zero-padded buffer whose channel planes are `Wp = W + left +
//! right` wide. Computed over that width, output position `j = y * Wp + x` of tap `(dy, dx)`
//! reads padded element `j + dy * Wp + dx`: a constant shift. So the convolution is `kh * kw`
//! matrix products, `[Co, Ci] x [Ci, columns]`, each on a shifted view of the same buffer and
//! accumulated into one output tile, with no patch matrix. The `kw - 1` extra columns per row
//! are computed and dropped (under 1% at the VQ's widths). A rayon task takes a band of output
//! rows (and, for small images, a block of output channels); its output tile stays in cache
//! across the taps.
//!
//! The copy is also where a normalisation of the input can run for free ([`InputMap`]: a
//! GroupNorm's per-channel affine and a SiLU), and it reads the input through strides, so a
//! band of rows of a larger tensor needs no copy of its own ([`Input`]).

use rayon::prelude::*;

use super::winograd;

/// Output columns (of the padded width) one task accumulates: a `[Co, columns]` tile.
const TILE_COLUMNS: usize = 1024;
/// The fewest output channels a task computes when channels are split between tasks.
const MIN_CHANNELS: usize = 32;

/// Why [`conv2d`] refused its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvError {
    /// A slice is shorter than its shape says.
    TooShort {
        /// `input`, `weight`, `bias` or `map`.
        name: &'static str,
    },
    /// The kernel is larger than the padded input, or a size is zero where it may not be.
    Shape,
}

impl std::fmt::Display for ConvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort { name } => write!(f, "conv2d: the {name} slice is too short"),
            Self::Shape => write!(f, "conv2d: the kernel is larger than the padded input"),
        }
    }
}

impl std::error::Error for ConvError {}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub batch: usize,
    /// Input channels `Ci`.
    pub in_channels: usize,
    /// Input height and width.
    pub size: [usize; 2],
    /// Output channels `Co`.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Zero rows above and below, zero columns left and right: `[[top, bottom], [left, right]]`.
    pub padding: [[usize; 2]; 2],
}

impl ConvShape {
    /// The padded input's height and width.
    fn padded(&self) -> [usize; 2] {
        let [[top, bottom], [left, right]] = self.padding;
        [self.size[0] + top + bottom, self.size[1] + left + right]
    }

    /// The output's height and width (`None` when the kernel does not fit the padded input).
    pub fn output(&self) -> Option<[usize; 2]> {
        let [hp, wp] = self.padded();
        let [kh, kw] = self.kernel;
        (kh >= 1 && kw >= 1 && hp >= kh && wp >= kw).then(|| [hp - kh + 1, wp - kw + 1])
    }
}

/// A raw pointer to the output that tasks share; each writes only its own rows.
#[derive(Clone, Copy)]
pub(super) struct Output(*mut f32);
// SAFETY: tasks write disjoint elements (their own output rows of every channel), and the
// buffer outlives the parallel loop that uses the pointer.
#[allow(unsafe_code)]
unsafe impl Send for Output {}
#[allow(unsafe_code)]
unsafe impl Sync for Output {}

impl Output {
    /// The output's element `at` (a method, so closures capture the `Sync` wrapper whole rather
    /// than its raw pointer field).
    fn at(&self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }

    /// The output `out`, shared.
    pub(super) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// Elements `at..at + len` and `at + len..at + 2 * len`: two consecutive output rows.
    ///
    /// # Safety
    /// Both rows are inside the output, and no other task reads or writes them while the
    /// slices live.
    #[allow(unsafe_code)]
    pub(super) unsafe fn rows<'a>(self, at: usize, len: usize) -> (&'a mut [f32], &'a mut [f32]) {
        // SAFETY: the caller's contract.
        let both = unsafe { std::slice::from_raw_parts_mut(self.at(at), 2 * len) };
        both.split_at_mut(len)
    }
}

/// How the kernel reads its input: a strided `[B, Ci, H, W]` view with contiguous rows, and an
/// optional per-channel map applied to every element as it is read.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The elements; element `[b, c, y, x]` is `data[b * strides[0] + c * strides[1] + y *
    /// strides[2] + x]`.
    pub data: &'a [f32],
    /// Strides of images, channels and rows (columns are contiguous).
    pub strides: [usize; 3],
    /// A normalisation applied to the input before it is convolved (the zero padding stays zero).
    pub map: Option<InputMap<'a>>,
    /// Nearest-neighbour x2 upsampling of `data` before the convolution (see [`Upsample`]).
    pub upsample: Option<Upsample>,
}

/// The convolved input is rows of the nearest-neighbour x2 upsampling of the data (PyTorch's
/// `interpolate(scale_factor=2, mode="nearest")`): element `[b, c, y, x]` of the input of size
/// [`ConvShape::size`] is data element `[b, c, (y + first_row) / 2, x / 2]`. The upsampled
/// tensor, four times the data, is never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upsample {
    /// The first upsampled row that is convolved (0 or 1 for a band that starts at a data row).
    pub first_row: usize,
}

impl<'a> Input<'a> {
    /// A contiguous `[B, Ci, H, W]` input, read as it is.
    pub fn contiguous(data: &'a [f32], shape: &ConvShape) -> Self {
        let [h, w] = shape.size;
        Self {
            data,
            strides: [shape.in_channels * h * w, h * w, w],
            map: None,
            upsample: None,
        }
    }
}

/// `y = (x - mean[b, c]) * scale[b, c] + shift[b, c]`, then `silu(y)` when `silu` is set: a
/// GroupNorm with its affine (`scale = gamma / sqrt(var + eps)`, `shift = beta`) and the
/// activation after it, applied while the input is copied, so the normalised input is never
/// stored on its own. Each slice holds `B * Ci` values, image-major.
#[derive(Debug, Clone, Copy)]
pub struct InputMap<'a> {
    /// Subtracted first.
    pub mean: &'a [f32],
    /// Then multiplied.
    pub scale: &'a [f32],
    /// Then added.
    pub shift: &'a [f32],
    /// Whether SiLU follows.
    pub silu: bool,
}

/// `out[b, co, y, x] = bias[co] + sum over ci, dy, dx of
/// weight[co, ci, dy, dx] * padded_input[b, ci, y + dy, x + dx]`.
///
/// `input` is contiguous `[B, Ci, H, W]`, `weight` contiguous `[Co, Ci, kh, kw]`, `bias` `[Co]`.
/// Returns the contiguous `[B, Co, Ho, Wo]` output.
pub fn conv2d(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> Result<Vec<f32>, ConvError> {
    conv2d_input(Input::contiguous(input, &shape), weight, bias, shape)
}

/// [`conv2d`] of a strided, optionally mapped input (see [`Input`]).
pub fn conv2d_input(
    input: Input<'_>,
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
) -> Result<Vec<f32>, ConvError> {
    let ConvShape {
        batch,
        in_channels: ci,
        size: [h, w],
        out_channels: co,
        kernel: [kh, kw],
        padding: [[top, _], [left, right]],
    } = shape;
    let [ho, wo] = shape.output().ok_or(ConvError::Shape)?;
    let [hp, wp] = shape.padded();
    let [batch_stride, channel_stride, row_stride] = input.strides;
    // The data rows and columns that the input's `h x w` elements read.
    let source = |y: usize| match input.upsample {
        Some(up) => (y + up.first_row) / 2,
        None => y,
    };
    let data_width = if input.upsample.is_some() {
        w.div_ceil(2)
    } else {
        w
    };
    let needed = if batch * ci * h * w == 0 {
        0
    } else {
        (batch - 1) * batch_stride
            + (ci - 1) * channel_stride
            + source(h - 1) * row_stride
            + data_width
    };
    if input.data.len() < needed {
        return Err(ConvError::TooShort { name: "input" });
    }
    if let Some(map) = &input.map
        && [map.mean, map.scale, map.shift]
            .iter()
            .any(|m| m.len() < batch * ci)
    {
        return Err(ConvError::TooShort { name: "map" });
    }
    if weight.len() < co * ci * kh * kw {
        return Err(ConvError::TooShort { name: "weight" });
    }
    if bias.is_some_and(|b| b.len() < co) {
        return Err(ConvError::TooShort { name: "bias" });
    }
    let mut out = vec![0.0f32; batch * co * ho * wo];
    if out.is_empty() {
        return Ok(out);
    }
    if ci == 0 {
        if let Some(bias) = bias {
            for (plane, &b) in out.chunks_mut(ho * wo).zip(bias.iter().cycle()) {
                plane.fill(b);
            }
        }
        return Ok(out);
    }

    // Each padded plane has `kw - 1` zeros after it, which the last row's last taps read.
    let plane = hp * wp + (kw - 1);
    let direct = shape.padding == [[0, 0], [0, 0]]
        && kw == 1
        && input.map.is_none()
        && input.upsample.is_none()
        && input.strides == [ci * h * w, h * w, w];
    let padded: std::borrow::Cow<'_, [f32]> = if direct {
        std::borrow::Cow::Borrowed(&input.data[..batch * ci * h * w])
    } else {
        let mut padded = vec![0.0f32; batch * ci * plane];
        padded
            .par_chunks_mut(plane)
            .enumerate()
            .for_each_init(Vec::new, |mapped, (index, dst)| {
                let (b, c) = (index / ci, index % ci);
                let from = b * batch_stride + c * channel_stride;
                let affine = input
                    .map
                    .map(|m| ([m.mean[index], m.scale[index], m.shift[index]], m.silu));
                for y in 0..h {
                    let row = &input.data[from + source(y) * row_stride..][..data_width];
                    let start = (y + top) * wp + left;
                    let dst = &mut dst[start..start + w];
                    match (affine, input.upsample) {
                        (None, None) => dst.copy_from_slice(row),
                        (Some((affine, silu)), None) => map_row(dst, row, affine, silu),
                        (affine, Some(_)) => {
                            // Mapped first (at the data's width), then each value written twice.
                            let values = match affine {
                                Some((affine, silu)) => {
                                    mapped.resize(data_width, 0.0);
                                    map_row(mapped, row, affine, silu);
                                    &mapped[..]
                                }
                                None => row,
                            };
                            for (pair, &v) in dst.chunks_mut(2).zip(values) {
                                pair.fill(v);
                            }
                        }
                    }
                }
            });
        std::borrow::Cow::Owned(padded)
    };
    let plane = if direct { h * w } else { plane };
    debug_assert!(right + left + w == wp);
    if !direct && super::winograd_enabled() && winograd::takes([kh, kw], [ho, wo], [ci, co]) {
        let input = winograd::Padded {
            data: &padded,
            plane,
            width: wp,
        };
        let sizes = winograd::Sizes {
            batch,
            in_channels: ci,
            out_channels: co,
            output: [ho, wo],
        };
        winograd::conv3x3(input, weight, bias, sizes, &mut out);
        return Ok(out);
    }

    // Bands of whole output rows of about TILE_COLUMNS columns; when that leaves too few tasks
    // for the pool (small images), the output channels are split as well.
    let rows = (TILE_COLUMNS / wp).clamp(1, ho);
    let (channels, tasks) = split_tasks(batch, ho, rows, co);
    let output = Output(out.as_mut_ptr());
    let padded = &padded[..];
    tasks.into_par_iter().for_each_init(
        || vec![0.0f32; channels * rows * wp],
        |tile, (b, y0, c0)| {
            let n = rows.min(ho - y0);
            let m = channels.min(co - c0);
            let columns = n * wp;
            let tile = &mut tile[..m * columns];
            for dy in 0..kh {
                for dx in 0..kw {
                    let first = dy == 0 && dx == 0;
                    let from = b * ci * plane + (y0 + dy) * wp + dx;
                    // The last column read is from + (ci - 1) * plane + columns - 1
                    //   <= b * ci * plane + (ci - 1) * plane + (hp - 1) * wp + wp - 1 + kw - 1,
                    // inside the batch's planes (each `hp * wp + kw - 1` long).
                    debug_assert!(from + (ci - 1) * plane + columns <= padded.len());
                    // SAFETY: `tile` holds `m x columns`; the weight taps
                    // `weight[c0 + i, ci', dy, dx]` are inside `weight` (length checked above);
                    // the shifted view of `padded` stays inside it (bound above).
                    #[allow(unsafe_code)]
                    unsafe {
                        gemm::gemm(
                            m,
                            columns,
                            ci,
                            tile.as_mut_ptr(),
                            1,
                            columns as isize,
                            !first,
                            weight[c0 * ci * kh * kw + dy * kw + dx..].as_ptr(),
                            (kh * kw) as isize,
                            (ci * kh * kw) as isize,
                            padded[from..].as_ptr(),
                            1,
                            plane as isize,
                            if first { 0.0 } else { 1.0 },
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            for (i, acc) in tile.chunks_exact(columns).enumerate() {
                let c = c0 + i;
                let add = bias.map_or(0.0, |bias| bias[c]);
                for (y, row) in acc.chunks_exact(wp).enumerate() {
                    let at = ((b * co + c) * ho + y0 + y) * wo;
                    // SAFETY: rows `y0..y0 + n` of channels `c0..c0 + m` of image `b` belong to
                    // this task alone, and `at + wo <= batch * co * ho * wo`, the output's length.
                    #[allow(unsafe_code)]
                    let dst = unsafe { std::slice::from_raw_parts_mut(output.at(at), wo) };
                    for (d, &s) in dst.iter_mut().zip(&row[..wo]) {
                        *d = s + add;
                    }
                }
            }
        },
    );
    Ok(out)
}

/// The tasks of a convolution whose `batch` images have `height` rows (output rows, or tile
/// rows) computed `rows` at a time: `(image, first row, first output channel)`, and the output
/// channels each task computes. When the row bands leave too few tasks for the pool (small
/// images), the `co` output channels are split as well, in blocks of at least
/// [`MIN_CHANNELS`].
pub(super) fn split_tasks(
    batch: usize,
    height: usize,
    rows: usize,
    co: usize,
) -> (usize, Vec<(usize, usize, usize)>) {
    let bands = batch * height.div_ceil(rows);
    let wanted = 4 * rayon::current_num_threads();
    let channel_blocks = wanted.div_ceil(bands).min(co.div_ceil(MIN_CHANNELS)).max(1);
    let channels = co.div_ceil(channel_blocks);
    let tasks = (0..batch)
        .flat_map(|b| (0..height).step_by(rows).map(move |y| (b, y)))
        .flat_map(|(b, y)| (0..co).step_by(channels).map(move |c| (b, y, c)))
        .collect();
    (channels, tasks)
}

widest! {
    /// `dst[i] = (src[i] - mean) * scale + shift` for `affine = [mean, scale, shift]`, then SiLU
    /// when `silu` (see [`InputMap`]).
    fn map_row(dst: &mut [f32], src: &[f32], affine: [f32; 3], silu: bool) {
        let [mean, scale, shift] = affine;
        if silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = crate::vector_math::silu((s - mean) * scale + shift);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = (s - mean) * scale + shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_tests::{values, worst_error};

    /// The convolution by its definition, in f64.
    fn naive(input: &[f32], weight: &[f32], bias: Option<&[f32]>, s: ConvShape) -> Vec<f64> {
        let [ho, wo] = s.output().unwrap();
        let [[top, _], [left, _]] = s.padding;
        let [h, w] = s.size;
        let [kh, kw] = s.kernel;
        let mut out = vec![0.0; s.batch * s.out_channels * ho * wo];
        for b in 0..s.batch {
            for c in 0..s.out_channels {
                for y in 0..ho {
                    for x in 0..wo {
                        let mut acc = bias.map_or(0.0, |bias| bias[c] as f64);
                        for i in 0..s.in_channels {
                            for dy in 0..kh {
                                for dx in 0..kw {
                                    let (iy, ix) = (y + dy, x + dx);
                                    if iy < top || ix < left || iy - top >= h || ix - left >= w {
                                        continue;
                                    }
                                    let v = input
                                        [((b * s.in_channels + i) * h + iy - top) * w + ix - left];
                                    let k = weight[((c * s.in_channels + i) * kh + dy) * kw + dx];
                                    acc += v as f64 * k as f64;
                                }
                            }
                        }
                        out[((b * s.out_channels + c) * ho + y) * wo + x] = acc;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition() {
        for (batch, ci, size, co, kernel, padding) in [
            (1, 1, [1, 1], 1, [1, 1], [[0, 0], [0, 0]]),
            (2, 3, [9, 7], 4, [3, 3], [[1, 1], [1, 1]]),
            (1, 5, [6, 11], 2, [3, 3], [[0, 1], [1, 1]]),
            (1, 4, [40, 33], 3, [3, 3], [[1, 0], [1, 1]]),
            (2, 6, [5, 8], 7, [1, 1], [[0, 0], [0, 0]]),
            (1, 2, [7, 6], 3, [2, 3], [[0, 2], [1, 0]]),
            // Few rows, many channels: output channels split between tasks.
            (1, 3, [5, 5], 70, [3, 3], [[1, 1], [1, 1]]),
            // Winograd's F(2x2, 3x3) (even output sizes, at least 256 tiles; checked below): two
            // bands of tile rows per image; channels split between tasks; asymmetric padding.
            (2, 5, [32, 34], 7, [3, 3], [[1, 1], [1, 1]]),
            (1, 4, [32, 32], 70, [3, 3], [[1, 1], [1, 1]]),
            (1, 4, [33, 32], 5, [3, 3], [[1, 0], [1, 1]]),
        ] {
            let shape = ConvShape {
                batch,
                in_channels: ci,
                size,
                out_channels: co,
                kernel,
                padding,
            };
            if size[1] == 32 || size[1] == 34 {
                let output = shape.output().unwrap();
                assert!(winograd::takes(kernel, output, [ci, co]), "{shape:?}");
            }
            let input = values(batch * ci * size[0] * size[1], 1);
            let weight = values(co * ci * kernel[0] * kernel[1], 2);
            let bias = values(co, 3);
            for with_bias in [false, true] {
                let bias = with_bias.then_some(&bias[..]);
                let got = conv2d(&input, &weight, bias, shape).unwrap();
                let want = naive(&input, &weight, bias, shape);
                assert_eq!(got.len(), want.len());
                let worst = worst_error(&got, &want);
                assert!(worst < 1e-5, "{shape:?}: {worst:e}");
            }
        }
    }

    /// A 3x3 convolution's sizes.
    fn shape_3x3(
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        size: [usize; 2],
        padding: [[usize; 2]; 2],
    ) -> ConvShape {
        ConvShape {
            batch,
            in_channels,
            size,
            out_channels,
            kernel: [3, 3],
            padding,
        }
    }

    /// A strided input (a band of rows of a taller tensor) with a GroupNorm-style map and SiLU
    /// gives the convolution of the mapped band.
    #[test]
    fn strided_mapped_input_is_the_convolution_of_the_mapped_band() {
        let (batch, ci, co, full_h, w) = (2, 3, 4, 9, 7);
        let (from, h) = (2, 5);
        let data = values(batch * ci * full_h * w, 4);
        let mean = values(batch * ci, 5);
        let scale = values(batch * ci, 6);
        let shift = values(batch * ci, 7);
        let weight = values(co * ci * 9, 8);
        let shape = shape_3x3(batch, ci, co, [h, w], [[1, 0], [1, 1]]);
        for silu in [false, true] {
            // The band, mapped, as a contiguous input.
            let mut band = Vec::new();
            for b in 0..batch {
                for c in 0..ci {
                    let i = b * ci + c;
                    for y in from..from + h {
                        for x in 0..w {
                            let v = data[((b * ci + c) * full_h + y) * w + x] as f64;
                            let v = (v - mean[i] as f64) * scale[i] as f64 + shift[i] as f64;
                            let v = if silu { v / (1.0 + (-v).exp()) } else { v };
                            band.push(v as f32);
                        }
                    }
                }
            }
            let want = naive(&band, &weight, None, shape);
            let input = Input {
                data: &data[from * w..],
                strides: [ci * full_h * w, full_h * w, w],
                upsample: None,
                map: Some(InputMap {
                    mean: &mean,
                    scale: &scale,
                    shift: &shift,
                    silu,
                }),
            };
            let got = conv2d_input(input, &weight, None, shape).unwrap();
            let worst = worst_error(&got, &want);
            assert!(worst < 1e-5, "silu {silu}: {worst:e}");
            let short = InputMap {
                mean: &mean[..batch * ci - 1],
                scale: &scale,
                shift: &shift,
                silu,
            };
            let input = Input {
                map: Some(short),
                ..input
            };
            assert_eq!(
                conv2d_input(input, &weight, None, shape),
                Err(ConvError::TooShort { name: "map" })
            );
            let input = Input {
                data: &data[from * w + 1..],
                map: None,
                ..input
            };
            assert!(conv2d_input(input, &weight, None, shape).is_ok());
            let input = Input {
                data: &data[(full_h - h + 1) * w..],
                ..input
            };
            assert_eq!(
                conv2d_input(input, &weight, None, shape),
                Err(ConvError::TooShort { name: "input" })
            );
        }
    }

    /// Rows of a strided input's x2 nearest upsampling give the convolution of those rows of
    /// the upsampled tensor, odd widths and a band starting on an odd row included.
    #[test]
    fn upsampled_input_is_the_convolution_of_the_upsampled_rows() {
        let (batch, ci, co, data_h, data_w) = (2, 3, 4, 6, 5);
        let data = values(batch * ci * data_h * data_w, 9);
        let weight = values(co * ci * 9, 10);
        let bias = values(co, 11);
        // (first upsampled row, rows, width of the convolved input: 2 * data_w or one less)
        for (first_row, h, w, padding) in [
            (0, 12, 10, [[1, 1], [1, 1]]),
            (1, 7, 10, [[0, 0], [1, 1]]),
            (3, 9, 9, [[0, 1], [1, 1]]),
        ] {
            let shape = shape_3x3(batch, ci, co, [h, w], padding);
            let mut up = Vec::new();
            for b in 0..batch {
                for c in 0..ci {
                    for y in first_row..first_row + h {
                        for x in 0..w {
                            up.push(data[((b * ci + c) * data_h + y / 2) * data_w + x / 2]);
                        }
                    }
                }
            }
            let want = naive(&up, &weight, Some(&bias), shape);
            let input = Input {
                data: &data,
                strides: [ci * data_h * data_w, data_h * data_w, data_w],
                map: None,
                upsample: Some(Upsample { first_row }),
            };
            let got = conv2d_input(input, &weight, Some(&bias), shape).unwrap();
            let worst = worst_error(&got, &want);
            assert!(worst < 1e-5, "first row {first_row}, {h}x{w}: {worst:e}");
        }
        // Past the data's last row.
        let shape = shape_3x3(batch, ci, co, [12, 10], [[1, 1], [1, 1]]);
        let input = Input {
            data: &data,
            strides: [ci * data_h * data_w, data_h * data_w, data_w],
            map: None,
            upsample: Some(Upsample { first_row: 1 }),
        };
        assert_eq!(
            conv2d_input(input, &weight, None, shape),
            Err(ConvError::TooShort { name: "input" })
        );
    }

    #[test]
    fn refuses_short_slices_and_kernels_past_the_input() {
        let shape = ConvShape {
            batch: 1,
            in_channels: 2,
            size: [4, 4],
            out_channels: 3,
            kernel: [3, 3],
            padding: [[0, 0], [0, 0]],
        };
        let x = vec![0.0; 32];
        let k = vec![0.0; 54];
        assert_eq!(
            conv2d(&x[..31], &k, None, shape),
            Err(ConvError::TooShort { name: "input" })
        );
        assert_eq!(
            conv2d(&x, &k[..53], None, shape),
            Err(ConvError::TooShort { name: "weight" })
        );
        let big = ConvShape {
            kernel: [5, 5],
            ..shape
        };
        assert_eq!(
            conv2d(&x, &vec![0.0; 150], None, big),
            Err(ConvError::Shape)
        );
    }
}
