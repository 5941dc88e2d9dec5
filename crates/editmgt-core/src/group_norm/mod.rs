//! GroupNorm statistics of large activations, with a CPU kernel where it pays.
//!
//! [`group_stats`] is what the VQ model calls before each normalised convolution. The generic
//! path (every backend) reduces band by band and row by row, so that no single reduction is
//! longer than a band's rows of a group: Burn 0.22's one-pass reduction on wgpu (Mesa lavapipe)
//! gets groups of millions of elements wrong (a 768x768 group's sum comes back 0.44x; 196,608
//! elements are right), and a group of the VQ at 1024x1024 holds millions. On Burn's `flex` CPU
//! backend (this crate's `flex` feature) [`kernel`] reduces each group in two vectorised passes
//! instead of Burn's five element-wise passes. `EDITMGT_GROUP_NORM_KERNEL=0` turns it off.

#[cfg(feature = "flex")]
pub mod kernel;

use burn::tensor::{DType, Tensor};

/// Name of the environment variable that turns the statistics kernel off when set to `0`.
pub const GROUP_NORM_KERNEL_ENV: &str = "EDITMGT_GROUP_NORM_KERNEL";

/// Whether the kernel may run (`$EDITMGT_GROUP_NORM_KERNEL` is not `0`), read once.
#[cfg(feature = "flex")]
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(GROUP_NORM_KERNEL_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Per-channel mean and standard deviation `sqrt(var + eps)` of `x`'s `groups` channel groups,
/// each `[B, C, 1, 1]` in `f32` (the variance as the mean of squared deviations, as PyTorch's and
/// Burn's GroupNorm compute it). The generic path reduces `rows` rows at a time.
///
/// `C` must be a multiple of `groups` (callers check: a GroupNorm's configuration guarantees it).
pub fn group_stats(x: &Tensor<4>, groups: usize, eps: f64, rows: usize) -> (Tensor<4>, Tensor<4>) {
    #[cfg(feature = "flex")]
    if enabled()
        && let Some(stats) = flex_stats(x, groups, eps)
    {
        return stats;
    }
    group_stats_by_bands(x, groups, eps, rows)
}

/// [`kernel::group_moments`] of a plain `f32` flex tensor; `None` for any other tensor.
#[cfg(feature = "flex")]
fn flex_stats(x: &Tensor<4>, groups: usize, eps: f64) -> Option<(Tensor<4>, Tensor<4>)> {
    use burn::tensor::TensorData;

    if groups == 0 {
        return None;
    }
    let [b, c, h, w] = x.dims();
    if c % groups != 0 {
        return None;
    }
    let values = crate::flex_values::RowMajor::of(x)?;
    let per_group = c / groups;
    let moments = kernel::group_moments(values.values(), per_group * h * w).ok()?;
    let per_channel = |f: &dyn Fn(f64, f64) -> f64| -> Tensor<4> {
        let values: Vec<f32> = moments
            .iter()
            .flat_map(|&(mean, var)| std::iter::repeat_n(f(mean, var) as f32, per_group))
            .collect();
        Tensor::from_data(TensorData::new(values, [b, c, 1, 1]), &x.device())
    };
    Some((
        per_channel(&|m, _| m),
        per_channel(&|_, v| (v + eps).sqrt()),
    ))
}

/// [`group_stats`] by Burn's operations, `rows` rows at a time, on every backend (the generic
/// path of [`group_stats`]).
pub fn group_stats_by_bands(
    x: &Tensor<4>,
    groups: usize,
    eps: f64,
    rows: usize,
) -> (Tensor<4>, Tensor<4>) {
    group_stats_of_parts(std::slice::from_ref(x), groups, eps, rows)
}

/// [`group_stats`] of the tensor that `parts` make when joined along the height (dimension 2),
/// without joining them: an activation held as bands of rows, each reduced `rows` rows at a time
/// by Burn's operations. Every part has the same batch, channel and width sizes.
///
/// # Panics
///
/// When `parts` is empty.
pub fn group_stats_of_parts(
    parts: &[Tensor<4>],
    groups: usize,
    eps: f64,
    rows: usize,
) -> (Tensor<4>, Tensor<4>) {
    let [b, c, _, w] = parts[0].dims();
    let h: usize = parts.iter().map(|p| p.dims()[2]).sum();
    let rows = rows.clamp(1, h.max(1));
    let per_group = c / groups;
    let count = (per_group * h * w) as f64;
    let to_channels = |g: Tensor<3>| g.expand([b, groups, per_group]).reshape([b, c, 1, 1]);
    // The per-group sum of `f` of the f32 values, band by band.
    let group_sum = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| -> Tensor<3> {
        let mut sum: Option<Tensor<3>> = None;
        for x in parts {
            let height = x.dims()[2];
            let mut from = 0;
            while from < height {
                let to = (from + rows).min(height);
                let band = f(x.clone().narrow(2, from, to - from).cast(DType::F32));
                // Along the row first, then over the group's rows: no single reduction longer
                // than a row or a band's rows of a group.
                let part = band
                    .reshape([b, groups, per_group * (to - from), w])
                    .sum_dim(3)
                    .sum_dim(2)
                    .reshape([b, groups, 1]);
                sum = Some(match sum {
                    Some(s) => s + part,
                    None => part,
                });
                from = to;
            }
        }
        sum.unwrap_or_else(|| Tensor::zeros([b, groups, 1], &parts[0].device()))
    };
    let mean = to_channels(group_sum(&|band| band) / count);
    let var = group_sum(&|band| {
        let centred = band - mean.clone();
        centred.clone() * centred
    }) / count;
    (mean, to_channels((var + eps).sqrt()))
}
