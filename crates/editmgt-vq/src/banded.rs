//! Large activations in horizontal bands: the 3x3 convolutions of the VQ model computed a band
//! of output rows at a time, with what precedes them (GroupNorm + SiLU, or the nearest-neighbour
//! x2 upsampling) applied to that band's input rows only.
//!
//! At 1024x1024 one activation of the decoder's last level is 0.5-1 GB in f32. Computing
//! `conv(silu(norm(x)))` or `conv(upsample(x))` whole materialises the normalised or upsampled
//! input (as large as `x`, or four times) next to `x` and the output. Here only the output is
//! allocated whole; the band's input (a few tens of MB) is made, convolved and dropped. GroupNorm
//! statistics are whole-tensor (reduced band by band, a row at a time), so the result is the same
//! computation as the plain one up to float rounding of the sums. A tensor whose input fits in
//! one band is convolved whole, after the same normalisation. Every backend runs the same code;
//! on the CPU the normalisation and the upsampling happen inside the convolution's own copy of
//! its input (`editmgt_core::direct_conv`), so a band's input is not stored either.

use crate::accumulate::{conv_forward, conv2d_normalized_with, conv2d_upsampled_with};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use editmgt_core::direct_conv::{InputNorm, nearest_2x};
use editmgt_core::group_norm::group_stats;

/// Elements of a band's input: 2 Mi (8 MiB in f32; its 3x3 patches are nine times that).
const BAND_ELEMENTS: usize = 2 << 20;

/// Output rows per band for an input row of `row_elements` elements (at least one row).
fn band_rows(row_elements: usize, limit: usize) -> usize {
    (limit / row_elements.max(1)).max(1)
}

/// Whether `conv` is a 3x3, stride 1, padding 1, ungrouped convolution (what banding supports).
fn is_same_3x3(conv: &Conv2d) -> bool {
    conv.kernel_size == [3, 3]
        && matches!(conv.padding, PaddingConfig2d::Explicit(1, 1, 1, 1))
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
}

/// `conv` of rows `[from, to)` of its padded input `input` (which holds input rows
/// `[from - 1, to + 1)` clipped to the image), normalised by `norm` when given: zero rows are
/// added only at the image borders.
fn conv_band(
    conv: &Conv2d,
    input: Tensor<4>,
    norm: &InputNorm,
    top: bool,
    bottom: bool,
) -> Tensor<4> {
    conv2d_normalized_with(conv, input, band_options(top, bottom), norm)
}

/// A 3x3 convolution's options for a band: one zero row above (below) only at the image's top
/// (bottom), one zero column on each side.
fn band_options(top: bool, bottom: bool) -> ConvOptions<2> {
    ConvOptions::new_with_padding(
        [1, 1],
        [(usize::from(top), usize::from(bottom)), (1, 1)],
        [1, 1],
        1,
    )
}

/// Fills an output of shape `[b, channels, height, w]` band by band: `band(from, to)` returns
/// output rows `[from, to)`.
fn fill_bands(
    like: &Tensor<4>,
    [b, channels, height, w]: [usize; 4],
    rows: usize,
    mut band: impl FnMut(usize, usize) -> Tensor<4>,
) -> Tensor<4> {
    let mut out = Tensor::<4>::empty([b, channels, height, w], (&like.device(), like.dtype()));
    let mut from = 0;
    while from < height {
        let to = (from + rows).min(height);
        out = out.slice_assign([0..b, 0..channels, from..to, 0..w], band(from, to));
        from = to;
    }
    out
}

/// `conv(silu(norm(x)))` for a 3x3 same convolution, in bands when `x` is large.
pub(crate) fn norm_silu_conv(norm: &GroupNorm, conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    norm_silu_conv_with(norm, conv, x, BAND_ELEMENTS)
}

fn norm_silu_conv_with(norm: &GroupNorm, conv: &Conv2d, x: Tensor<4>, limit: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if !is_same_3x3(conv) || !norm.affine || c % norm.num_groups != 0 {
        return conv_forward(conv, silu(norm.forward(x)));
    }
    let rows = band_rows(c * w, limit);
    // Our statistics even when one band holds the whole tensor: Burn's GroupNorm reduces each
    // group in one pass, which wgpu 0.22 on lavapipe gets wrong for groups as large as the VQ's
    // at 1024x1024 (see `group_stats`).
    let (mean, std) = group_stats(&x, norm.num_groups, norm.epsilon, rows.min(h));
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
    if rows >= h {
        return conv_band(conv, x, &input_norm, true, true);
    }
    let out_channels = conv.weight.dims()[0];
    fill_bands(&x, [b, out_channels, h, w], rows, |from, to| {
        let start = from.saturating_sub(1);
        let end = (to + 1).min(h);
        let band = x.clone().narrow(2, start, end - start);
        conv_band(conv, band, &input_norm, from == 0, to == h)
    })
}

/// `conv(nearest_2x(x))` for a 3x3 same convolution, in bands of output rows when the
/// upsampled input is large.
pub(crate) fn upsample_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    upsample_conv_with(conv, x, BAND_ELEMENTS)
}

fn upsample_conv_with(conv: &Conv2d, x: Tensor<4>, limit: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let (height, width) = (2 * h, 2 * w);
    let rows = band_rows(c * width, limit);
    if !is_same_3x3(conv) {
        return conv_forward(conv, nearest_2x(x));
    }
    if rows >= height {
        return conv2d_upsampled_with(conv, x, band_options(true, true), 0, height);
    }
    let out_channels = conv.weight.dims()[0];
    fill_bands(&x, [b, out_channels, height, width], rows, |from, to| {
        // Upsampled rows [from - 1, to + 1) clipped, from input rows [first, last]; the
        // convolution upsamples them as it reads them (on the CPU, without storing them).
        let start = from.saturating_sub(1);
        let end = (to + 1).min(height);
        let (first, last) = (start / 2, (end - 1) / 2);
        conv2d_upsampled_with(
            conv,
            x.clone().narrow(2, first, last - first + 1),
            band_options(from == 0, to == height),
            start - 2 * first,
            end - start,
        )
    })
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, PaddingConfig2d};
    use burn::tensor::{Device, Distribution};

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

    /// Every band height, from one row to all but one, gives the plain result, at the borders
    /// too (odd heights, a last band shorter than the others), on the test device
    /// (`$EDITMGT_TEST_DEVICE`).
    #[test]
    fn bands_equal_the_whole_computation() {
        let device = editmgt_testkit::device();
        device.seed(3);
        let (c, h, w) = (8, 13, 11);
        let x = Tensor::<4>::random([2, c, h, w], Distribution::Normal(0.3, 2.0), &device);
        let norm = norm(4, c, &device);
        let same = conv(c, 6, &device);
        let plain = same.forward(silu(norm.forward(x.clone())));
        for rows in [1, 2, 3, 5, 12] {
            let banded = norm_silu_conv_with(&norm, &same, x.clone(), rows * c * w);
            let diff = max_diff(banded, plain.clone());
            assert!(diff < 1e-5, "norm-silu-conv, {rows} rows per band: {diff}");
        }
        let up = conv(c, 5, &device);
        let plain = up.forward(nearest_2x(x.clone()));
        for rows in [1, 2, 3, 7, 25] {
            let banded = upsample_conv_with(&up, x.clone(), rows * c * 2 * w);
            let diff = max_diff(banded, plain.clone());
            assert!(diff < 1e-5, "upsample-conv, {rows} rows per band: {diff}");
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
        let rows = band_rows(c * w, BAND_ELEMENTS).min(h);
        let (mean, std) = group_stats(&x, groups, 1e-6, rows);
        // Also the generic reduction, whatever the device.
        let (banded_mean, banded_std) =
            editmgt_core::group_norm::group_stats_by_bands(&x, groups, 1e-6, rows);
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
    fn band_heights_are_positive() {
        assert_eq!(band_rows(1 << 30, BAND_ELEMENTS), 1);
        assert_eq!(band_rows(128 * 1024, BAND_ELEMENTS), 16);
        assert_eq!(band_rows(0, 10), 10);
    }
}
