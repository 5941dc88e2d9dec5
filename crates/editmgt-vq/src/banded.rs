//! Activations held in horizontal bands of rows, and the VQ's convolutions computed band by band.
//!
//! At 1024x1024 one activation of the VQ's image-side levels is 0.5-1 GB in f32 (128 channels, or
//! 256 right after the decoder's last upsampling), while many GPU adapters bind at most 128 MiB
//! as one buffer (lavapipe's `maxStorageBufferRange`, WebGPU's default). So an activation is a
//! [`Bands`]: consecutive row ranges, each one tensor of at most [`Cut::band_bytes`] (the
//! device's bound from [`editmgt_core::limits::max_buffer_bytes`]; one band on the CPU). Every
//! layer reads its input bands and writes its output bands; nothing makes the whole tensor.
//!
//! Within a band the work runs in pieces of at most [`Cut::piece_elements`] input elements, so
//! what precedes a 3x3 convolution (GroupNorm + SiLU, or the nearest-neighbour x2 upsampling) is
//! applied to a piece's input rows only: the normalised or upsampled input (as large as the
//! activation, or four times) is never stored whole, on any backend. A piece reads the rows it
//! needs across band borders ([`Bands::rows`]). GroupNorm statistics are whole-activation
//! (reduced band by band, a row at a time), so the result is the same computation as the plain
//! one up to float rounding of the sums. Every backend runs the same code; on the CPU the
//! normalisation and the upsampling happen inside the convolution's own copy of its input
//! (`editmgt_core::direct_conv`), so a piece's input is not stored either.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::accumulate::{conv_forward, conv2d_normalized_with, conv2d_upsampled_with, conv2d_with};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor};
use editmgt_core::direct_conv::InputNorm;
use editmgt_core::group_norm::{group_stats, group_stats_of_parts};
use editmgt_core::limits::rows_within;

/// Input elements of one piece: 2 Mi (8 MiB in f32; its 3x3 patches are nine times that).
pub(crate) const PIECE_ELEMENTS: usize = 2 << 20;

/// How activations are cut: bands (what is stored) and pieces (what one operation computes).
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    /// The most bytes one stored band may hold (at least one row is stored whatever the bound).
    pub(crate) band_bytes: u64,
    /// The most input elements one piece of a 3x3 convolution reads.
    pub(crate) piece_elements: usize,
    /// The largest band stored so far, in bytes (shared by the model's clones).
    pub(crate) largest: Arc<AtomicU64>,
}

impl Cut {
    /// Bands of at most `band_bytes`, pieces of [`PIECE_ELEMENTS`], recording into `largest`.
    pub(crate) fn new(band_bytes: u64, largest: Arc<AtomicU64>) -> Self {
        Self {
            band_bytes,
            piece_elements: PIECE_ELEMENTS,
            largest,
        }
    }

    /// Output rows per piece of a 3x3 convolution whose input rows hold `row_elements` each.
    fn piece_rows(&self, row_elements: usize) -> usize {
        (self.piece_elements / row_elements.max(1)).max(1)
    }
}

/// An activation `[B, C, H, W]` as horizontal bands: consecutive row ranges, each one tensor.
#[derive(Debug, Clone)]
pub(crate) struct Bands {
    parts: Vec<Tensor<4>>,
    /// Each part's first row, then the height.
    starts: Vec<usize>,
    dims: [usize; 4],
}

impl Bands {
    /// One band holding all of `x`.
    pub(crate) fn whole(x: Tensor<4>) -> Self {
        let dims = x.dims();
        Self {
            parts: vec![x],
            starts: vec![0, dims[2]],
            dims,
        }
    }

    /// The activation's shape `[B, C, H, W]`.
    pub(crate) fn dims(&self) -> [usize; 4] {
        self.dims
    }

    fn device(&self) -> Device {
        self.parts[0].device()
    }

    fn dtype(&self) -> DType {
        self.parts[0].dtype()
    }

    /// Rows `[from, to)` (non-empty, within the height) as one tensor: a view of one band, or
    /// the rows of neighbouring bands joined.
    pub(crate) fn rows(&self, from: usize, to: usize) -> Tensor<4> {
        debug_assert!(
            from < to && to <= self.dims[2],
            "rows {from}..{to} of {:?}",
            self.dims
        );
        let mut pieces: Vec<Tensor<4>> = self
            .parts
            .iter()
            .zip(self.starts.windows(2))
            .filter_map(|(part, range)| {
                let (start, end) = (range[0], range[1]);
                let (a, b) = (from.max(start), to.min(end));
                (a < b).then(|| {
                    if (a, b) == (start, end) {
                        part.clone()
                    } else {
                        part.clone().narrow(2, a - start, b - a)
                    }
                })
            })
            .collect();
        if pieces.len() == 1 {
            pieces.remove(0)
        } else {
            Tensor::cat(pieces, 2)
        }
    }

    /// The activation as one tensor (for small ones: the image, the latent grid).
    pub(crate) fn into_whole(mut self) -> Tensor<4> {
        if self.parts.len() == 1 {
            self.parts.remove(0)
        } else {
            Tensor::cat(self.parts, 2)
        }
    }

    /// `self + other`, band by band in `self`'s bands (`other` has the same shape).
    pub(crate) fn add(self, other: &Bands) -> Bands {
        debug_assert_eq!(self.dims, other.dims);
        let Bands {
            parts,
            starts,
            dims,
        } = self;
        let parts = parts
            .into_iter()
            .zip(starts.windows(2))
            .map(|(part, range)| part + other.rows(range[0], range[1]))
            .collect();
        Bands {
            parts,
            starts,
            dims,
        }
    }

    /// Per-channel GroupNorm mean and standard deviation of the whole activation
    /// ([`group_stats`]), reduced `rows` rows at a time.
    fn group_stats(&self, groups: usize, eps: f64, rows: usize) -> (Tensor<4>, Tensor<4>) {
        match self.parts.as_slice() {
            // Our statistics even for one band: Burn's GroupNorm reduces each group in one
            // pass, which wgpu 0.22 on lavapipe gets wrong for groups as large as the VQ's at
            // 1024x1024 (see `group_stats`).
            [whole] => group_stats(whole, groups, eps, rows.min(self.dims[2])),
            parts => group_stats_of_parts(parts, groups, eps, rows),
        }
    }

    /// The bytes of the largest band.
    #[cfg(test)]
    fn largest_band_bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| (p.shape().num_elements() * p.dtype().size()) as u64)
            .max()
            .unwrap_or(0)
    }

    /// `x` cut into bands of at most `band_bytes` (at least one row each).
    #[cfg(test)]
    fn split(x: Tensor<4>, band_bytes: u64) -> Self {
        let dims = x.dims();
        let whole = Bands::whole(x);
        let row_bytes = (dims[0] * dims[1] * dims[3] * whole.dtype().size()) as u64;
        let rows = rows_within(band_bytes, row_bytes, dims[2]);
        let mut parts = Vec::new();
        let mut starts = vec![0];
        let mut from = 0;
        while from < dims[2] {
            let to = (from + rows).min(dims[2]);
            parts.push(whole.rows(from, to));
            starts.push(to);
            from = to;
        }
        Bands {
            parts,
            starts,
            dims,
        }
    }
}

/// An output `[B, C, height, W]` of `dtype` made piece by piece: `piece(from, to)` returns output
/// rows `[from, to)`, at most `piece_rows` at a time, and the output is stored in bands of at most
/// `cut.band_bytes`.
fn produce(
    dims: [usize; 4],
    dtype: DType,
    device: &Device,
    cut: &Cut,
    piece_rows: usize,
    mut piece: impl FnMut(usize, usize) -> Tensor<4>,
) -> Bands {
    let [b, c, height, w] = dims;
    let row_bytes = (b * c * w * dtype.size()) as u64;
    let band_rows = rows_within(cut.band_bytes, row_bytes, height);
    let piece_rows = piece_rows.clamp(1, band_rows);
    cut.largest
        .fetch_max(band_rows as u64 * row_bytes, Ordering::Relaxed);
    let mut parts = Vec::with_capacity(height.div_ceil(band_rows));
    let mut starts = vec![0];
    let mut start = 0;
    while start < height {
        let end = (start + band_rows).min(height);
        let part = if end - start <= piece_rows {
            piece(start, end)
        } else {
            let mut out = Tensor::<4>::empty([b, c, end - start, w], (device, dtype));
            let mut from = start;
            while from < end {
                let to = (from + piece_rows).min(end);
                out = out.slice_assign(
                    [0..b, 0..c, from - start..to - start, 0..w],
                    piece(from, to),
                );
                from = to;
            }
            out
        };
        parts.push(part);
        starts.push(end);
        start = end;
    }
    Bands {
        parts,
        starts,
        dims,
    }
}

/// Whether `conv` is a 3x3, stride 1, padding 1, ungrouped convolution (what the VQ builds).
fn is_same_3x3(conv: &Conv2d) -> bool {
    conv.kernel_size == [3, 3]
        && matches!(conv.padding, PaddingConfig2d::Explicit(1, 1, 1, 1))
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
}

/// A 3x3 same convolution's options for a piece: one zero row above (below) only at the image's
/// top (bottom), one zero column on each side.
fn band_options(top: bool, bottom: bool) -> ConvOptions<2> {
    ConvOptions::new_with_padding(
        [1, 1],
        [(usize::from(top), usize::from(bottom)), (1, 1)],
        [1, 1],
        1,
    )
}

/// The input rows `[from - 1, to + 1)`, clipped to `height`, of a 3x3 same convolution's output
/// rows `[from, to)`.
fn halo(from: usize, to: usize, height: usize) -> (usize, usize) {
    (from.saturating_sub(1), (to + 1).min(height))
}

fn out_channels(conv: &Conv2d) -> usize {
    conv.weight.dims()[0]
}

/// `conv(x)` for a 3x3 same convolution.
pub(crate) fn conv3x3(conv: &Conv2d, x: &Bands, cut: &Cut) -> Bands {
    let [b, c, _, w] = x.dims();
    let rows = cut.piece_rows(b * c * w);
    same_3x3(conv, x, cut, rows, |input, options| {
        conv2d_with(conv, input, options)
    })
}

/// `conv(silu(norm(x)))` for a 3x3 same convolution and an affine GroupNorm.
pub(crate) fn norm_silu_conv(norm: &GroupNorm, conv: &Conv2d, x: &Bands, cut: &Cut) -> Bands {
    let [b, c, _, w] = x.dims();
    debug_assert!(c % norm.num_groups == 0);
    let rows = cut.piece_rows(b * c * w);
    let (mean, std) = x.group_stats(norm.num_groups, norm.epsilon, rows);
    let per_channel = |p: &Option<Param<Tensor<1>>>, default: f32| match p {
        Some(p) => p.val().cast(DType::F32).reshape([1, c, 1, 1]),
        None => Tensor::full([1, c, 1, 1], default, &x.device()),
    };
    let input_norm = InputNorm {
        mean,
        scale: per_channel(&norm.gamma, 1.0) / std,
        shift: per_channel(&norm.beta, 0.0),
        silu: true,
    };
    same_3x3(conv, x, cut, rows, |input, options| {
        conv2d_normalized_with(conv, input, options, &input_norm)
    })
}

/// A 3x3 same convolution of `x`, `rows` output rows per piece: `convolve(input, options)` gets
/// a piece's input rows with their one-row halo and the padding that says which image borders
/// the piece touches.
fn same_3x3(
    conv: &Conv2d,
    x: &Bands,
    cut: &Cut,
    rows: usize,
    convolve: impl Fn(Tensor<4>, ConvOptions<2>) -> Tensor<4>,
) -> Bands {
    debug_assert!(is_same_3x3(conv));
    let [b, _, h, w] = x.dims();
    produce(
        [b, out_channels(conv), h, w],
        x.dtype(),
        &x.device(),
        cut,
        rows,
        |from, to| {
            let (start, end) = halo(from, to, h);
            convolve(x.rows(start, end), band_options(from == 0, to == h))
        },
    )
}

/// `conv(nearest_2x(x))` for a 3x3 same convolution (diffusers `Upsample2D`).
pub(crate) fn upsample_conv(conv: &Conv2d, x: &Bands, cut: &Cut) -> Bands {
    debug_assert!(is_same_3x3(conv));
    let [b, c, h, w] = x.dims();
    let (height, width) = (2 * h, 2 * w);
    let rows = cut.piece_rows(b * c * width);
    let dims = [b, out_channels(conv), height, width];
    produce(dims, x.dtype(), &x.device(), cut, rows, |from, to| {
        // Upsampled rows [from - 1, to + 1) clipped, from input rows [first, last]; the
        // convolution upsamples them as it reads them (on the CPU, without storing them).
        let (start, end) = halo(from, to, height);
        let (first, last) = (start / 2, (end - 1) / 2);
        conv2d_upsampled_with(
            conv,
            x.rows(first, last + 1),
            band_options(from == 0, to == height),
            start - 2 * first,
            end - start,
        )
    })
}

/// A stride-2 3x3 convolution that pads one zero row and column at the bottom and the right only
/// (diffusers `Downsample2D` with `padding = 0`): output rows `[from, to)` read input rows
/// `[2 from, 2 to + 1)`, the last of them a zero row at the image's bottom.
pub(crate) fn downsample(conv: &Conv2d, x: &Bands, cut: &Cut) -> Bands {
    let [b, c, h, w] = x.dims();
    let (height, width) = (h.saturating_sub(2) / 2 + 1, w.saturating_sub(2) / 2 + 1);
    let rows = (cut.piece_rows(b * c * w) / 2).max(1);
    let dims = [b, out_channels(conv), height, width];
    produce(dims, x.dtype(), &x.device(), cut, rows, |from, to| {
        let end = (2 * to + 1).min(h);
        let options =
            ConvOptions::new_with_padding([2, 2], [(0, 2 * to + 1 - end), (0, 1)], [1, 1], 1);
        conv2d_with(conv, x.rows(2 * from, end), options)
    })
}

/// A 1x1 convolution (a ResNet block's shortcut), a band's worth of rows at a time.
pub(crate) fn pointwise(conv: &Conv2d, x: &Bands, cut: &Cut) -> Bands {
    let [b, c, h, w] = x.dims();
    let rows = rows_within(cut.band_bytes, (b * c * w * x.dtype().size()) as u64, h);
    produce(
        [b, out_channels(conv), h, w],
        x.dtype(),
        &x.device(),
        cut,
        rows,
        |from, to| conv_forward(conv, x.rows(from, to)),
    )
}

#[cfg(test)]
mod tests {
    use burn::nn::GroupNormConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;
    use burn::tensor::activation::silu;
    use editmgt_core::direct_conv::nearest_2x;
    use editmgt_core::group_norm::group_stats_by_bands;

    use super::*;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).abs().max().into_data().try_to_vec::<f32>().unwrap()[0]
    }

    fn conv(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
        Conv2dConfig::new([c_in, c_out], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device)
    }

    fn norm(groups: usize, c: usize, device: &Device) -> GroupNorm {
        let mut norm = GroupNormConfig::new(groups, c)
            .with_epsilon(1e-6)
            .init(device);
        // Non-trivial affine parameters.
        norm.gamma = Some(burn::module::Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(0.5, 1.5),
            device,
        )));
        norm.beta = Some(burn::module::Param::from_tensor(Tensor::random(
            [c],
            Distribution::Uniform(-0.5, 0.5),
            device,
        )));
        norm
    }

    fn cut(band_bytes: u64, piece_elements: usize) -> Cut {
        Cut {
            band_bytes,
            piece_elements,
            largest: Arc::default(),
        }
    }

    /// Every layer kind, for bands of one row to the whole height (stored as given, the input
    /// cut otherwise than the output) and pieces of one row to a whole band, gives the plain
    /// result, at the borders too (odd heights, last bands and pieces shorter than the others),
    /// and stores no band over its bound, on the test device (`$EDITMGT_TEST_DEVICE`).
    #[test]
    fn bands_equal_the_whole_computation() {
        let device = editmgt_testkit::device();
        device.seed(3);
        let (c, h, w) = (8, 13, 11);
        let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.3, 2.0), &device);
        let norm = norm(4, c, &device);
        let same = conv(c, 6, &device);
        let up = conv(c, 5, &device);
        let down = Conv2dConfig::new([c, 7], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(0, 0, 1, 1))
            .init(&device);
        let shortcut = Conv2dConfig::new([c, 12], [1, 1]).init(&device);
        let expected = [
            same.forward(silu(norm.forward(x.clone()))),
            same.forward(x.clone()),
            up.forward(nearest_2x(x.clone())),
            down.forward(x.clone()),
            shortcut.forward(x.clone()),
            x.clone() + x.clone(),
        ];
        // Bytes of one row of 1 channel of the batch.
        let row = (2 * w * 4) as u64;
        for input_rows in [1, 4, h] {
            let input = Bands::split(x.clone(), input_rows as u64 * c as u64 * row);
            assert_eq!(input.parts.len(), h.div_ceil(input_rows));
            for band_rows in [1, 2, 3, 5, 100] {
                for piece_rows in [1, 2, 7, 100] {
                    // Bounds in output channels' rows of the widest output (12 channels).
                    let cut = cut(band_rows * 12 * row, piece_rows * 2 * c * 2 * w);
                    let outputs = [
                        norm_silu_conv(&norm, &same, &input, &cut),
                        conv3x3(&same, &input, &cut),
                        upsample_conv(&up, &input, &cut),
                        downsample(&down, &input, &cut),
                        pointwise(&shortcut, &input, &cut),
                        input.clone().add(&input),
                    ];
                    // What the model reports (`VqModel::largest_band_bytes`): the largest band
                    // made (the sum keeps its first operand's bands and makes none).
                    let made = outputs[..5].iter().map(Bands::largest_band_bytes).max();
                    assert_eq!(Some(cut.largest.load(Ordering::Relaxed)), made);
                    for (k, (out, plain)) in outputs.into_iter().zip(&expected).enumerate() {
                        let what = format!(
                            "layer {k}, input bands of {input_rows} rows, bands of {band_rows} \
                             rows of 12 channels, pieces of {piece_rows}"
                        );
                        let [b, c_out, _, w_out] = out.dims();
                        let bound = cut.band_bytes.max((b * c_out * w_out * 4) as u64);
                        // The sum (layer 5) keeps its first operand's bands.
                        assert!(
                            k == 5 || out.largest_band_bytes() <= bound,
                            "{what}: a band over its bound"
                        );
                        let diff = max_diff(out.into_whole(), plain.clone());
                        assert!(diff < 1e-5, "{what}: {diff}");
                    }
                }
            }
        }
    }

    /// An activation in bands has the statistics of the whole.
    #[test]
    fn statistics_of_bands_are_those_of_the_whole() {
        let device = editmgt_testkit::device();
        device.seed(4);
        let x = Tensor::<4>::random([2, 8, 9, 5], Distribution::Normal(-0.2, 1.5), &device);
        let (mean, std) = group_stats_by_bands(&x, 4, 1e-6, 9);
        for rows in [1, 2, 4] {
            let bands = Bands::split(x.clone(), (rows * 2 * 8 * 5 * 4) as u64);
            let (m, s) = bands.group_stats(4, 1e-6, 3);
            assert!(
                max_diff(m, mean.clone()) < 1e-5,
                "mean, {rows} rows per band"
            );
            assert!(max_diff(s, std.clone()) < 1e-5, "std, {rows} rows per band");
        }
    }

    /// Group statistics of groups of 2.4 M elements on the test device, against sums on the
    /// host in f64 (Burn's one-pass GroupNorm reduction fails there on wgpu/lavapipe).
    #[test]
    fn statistics_of_large_groups() {
        let device = editmgt_testkit::device();
        let (c, h, w, groups) = (8, 768, 768, 2);
        let cpu = Device::flex();
        cpu.seed(5);
        let data =
            Tensor::<4>::random([1, c, h, w], Distribution::Normal(0.3, 2.0), &cpu).into_data();
        let values = data.clone().try_to_vec::<f32>().unwrap();
        let x = Tensor::<4>::from_data(data, &device);
        let per_group = values.len() / groups;
        let rows = cut(u64::MAX, PIECE_ELEMENTS).piece_rows(c * w).min(h);
        let (mean, std) = group_stats(&x, groups, 1e-6, rows);
        // Also the generic reduction, whatever the device.
        let (banded_mean, banded_std) = group_stats_by_bands(&x, groups, 1e-6, rows);
        assert!(max_diff(mean.clone(), banded_mean) < 1e-4);
        assert!(max_diff(std.clone(), banded_std) < 1e-4);
        let mean = mean.into_data().try_to_vec::<f32>().unwrap();
        let std = std.into_data().try_to_vec::<f32>().unwrap();
        for g in 0..groups {
            let group = &values[g * per_group..(g + 1) * per_group];
            let m = group.iter().map(|&v| f64::from(v)).sum::<f64>() / per_group as f64;
            let var = group
                .iter()
                .map(|&v| (f64::from(v) - m).powi(2))
                .sum::<f64>()
                / per_group as f64;
            let channel = g * c / groups;
            assert!(
                (f64::from(mean[channel]) - m).abs() < 1e-4,
                "group {g} mean {} against {m}",
                mean[channel]
            );
            let s = (var + 1e-6).sqrt();
            assert!(
                (f64::from(std[channel]) - s).abs() < 1e-4 * s,
                "group {g} std {} against {s}",
                std[channel]
            );
        }
    }

    #[test]
    fn piece_heights_are_positive() {
        let cut = cut(u64::MAX, PIECE_ELEMENTS);
        assert_eq!(cut.piece_rows(1 << 30), 1);
        assert_eq!(cut.piece_rows(128 * 1024), 16);
        assert_eq!(cut.piece_rows(0), PIECE_ELEMENTS);
    }
}
