//! Order statistics of tensor rows on the tensor's own device, without sorting.
//!
//! Burn's `sort` is native on the CPU backend but, on the GPU backends of Burn 0.22, reads the
//! tensor back to the host and sorts it there. The sampler's re-masking and the 90th percentile
//! of the adaptive smoothing only need one order statistic per row, which a bisection on the
//! value finds with a fixed number of counting passes, all on the device:
//!
//! `v = min { t : count(x <= t) > k }` is the `k`-th smallest value (0-based). Starting from
//! `lo` below every value and `hi` at the largest finite one, each pass halves `(lo, hi]` while
//! keeping `count(x <= lo) <= k < count(x <= hi)`. In floating point the interval stops
//! shrinking once `lo` and `hi` are adjacent floats, and then `hi` is exactly `v`.
//! [`KTH_ITERATIONS`] passes reach that for every value whose magnitude is above about `2^-17`
//! times the row's range; smaller values come out within `range * 2^-48` of `v`.

use burn::tensor::{Int, Tensor};

/// Bisection passes of [`kth_smallest`]: enough to pin down `f32` values to the last bit for
/// any row whose range is below `2^24` times their magnitude.
pub const KTH_ITERATIONS: usize = 48;

/// `tensor` in its device's default integer type (what `Bool::int()`, `Tensor::full` and
/// Burn's reductions produce), so that integer tensors from different sources combine: a tensor
/// built from `i64` host data is `i64` while a device may default to `i32`, and Burn's integer
/// operations refuse mixed types. A no-op when the type is already the default.
pub fn default_int<const D: usize>(tensor: Tensor<D, Int>) -> Tensor<D, Int> {
    let dtype = tensor.device().settings().int_dtype;
    tensor.cast(dtype)
}

/// The `k`-th smallest value (0-based) of each row of `values` `[R, N]`, as `[R, 1]`, with
/// `k` given per row (`[R, 1]`, values in `0..N`).
///
/// `+inf` entries take part as values (a row whose `k`-th smallest is `+inf` gives `+inf`), as
/// do `-inf` entries; NaN entries count as larger than everything. Everything happens on the
/// device of `values`; nothing is read back.
pub fn kth_smallest(values: Tensor<2>, k: Tensor<2, Int>) -> Tensor<2> {
    let [rows, n] = values.dims();
    let k = default_int(k).expand([rows, 1]);
    let finite = values.clone().is_finite();
    let not_finite = finite.bool_not();
    // The row's finite range (0..0 for a row with no finite value).
    let vmin = values
        .clone()
        .mask_fill(not_finite.clone(), f32::MAX)
        .min_dim(1);
    let vmax = values.clone().mask_fill(not_finite, -f32::MAX).max_dim(1);
    let empty = vmin.clone().greater(vmax.clone());
    let vmin = vmin.mask_fill(empty.clone(), 0.0);
    let vmax = vmax.mask_fill(empty, 0.0);

    let count_le = |t: Tensor<2>| -> Tensor<2, Int> {
        default_int(
            values
                .clone()
                .lower_equal(t.expand([rows, n]))
                .int()
                .sum_dim(1),
        )
    };

    // Strictly below every finite value, even where |vmin| is large.
    let mut lo = vmin.clone() - (vmin.abs() + 1.0);
    let mut hi = vmax;
    for _ in 0..KTH_ITERATIONS {
        let mid = lo.clone() + (hi.clone() - lo.clone()) * 0.5;
        let above = count_le(mid.clone()).greater(k.clone());
        hi = hi.mask_where(above.clone(), mid.clone());
        lo = mid.mask_where(above, lo);
    }
    // Rows whose k-th smallest is not finite: +inf (or NaN) when even `hi` (the largest finite
    // value) has too few values below it, -inf when `lo` (below every finite value) has enough.
    let too_few = count_le(hi.clone()).lower_equal(k.clone());
    let negative = count_le(lo).greater(k);
    hi.mask_fill(too_few, f32::INFINITY)
        .mask_fill(negative, f32::NEG_INFINITY)
}

/// [`kth_smallest`] with the same `k` for every row.
pub fn kth_smallest_const(values: Tensor<2>, k: usize) -> Tensor<2> {
    let [rows, _] = values.dims();
    let device = values.device();
    let k = Tensor::<2, Int>::full([rows, 1], k as i64, &device);
    kth_smallest(values, k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn read(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn matches_sorting() {
        let device = Device::flex();
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
        };
        let (rows, n) = (5, 97);
        let mut data: Vec<f32> = (0..rows * n).map(|_| next()).collect();
        // ties, infinities and tiny values
        data[3] = data[4];
        data[n + 7] = f32::INFINITY;
        data[2 * n + 1] = 1e-30;
        data[2 * n + 2] = -1e-30;
        for v in &mut data[3 * n..4 * n] {
            *v = (*v * 0.25).round();
        }
        for k in [0usize, 1, 13, 48, 95, 96] {
            let t = Tensor::<2>::from_data(TensorData::new(data.clone(), [rows, n]), &device);
            let got = read(kth_smallest_const(t, k));
            for r in 0..rows {
                let mut row = data[r * n..(r + 1) * n].to_vec();
                row.sort_by(f32::total_cmp);
                let finite: Vec<f32> = row.iter().copied().filter(|v| v.is_finite()).collect();
                let range = finite[finite.len() - 1] - finite[0];
                if row[k].abs() > 1e-6 * range || !row[k].is_finite() {
                    assert_eq!(got[r], row[k], "row {r}, k {k}");
                } else {
                    // Values this close to 0 come out within range * 2^-40 (module docs).
                    assert!((got[r] - row[k]).abs() <= range * 1e-12, "row {r}, k {k}");
                }
            }
        }
    }

    #[test]
    fn all_infinite_rows_and_per_row_k() {
        let device = Device::flex();
        let t = Tensor::<2>::from_data(
            TensorData::new(
                vec![
                    f32::INFINITY,
                    f32::INFINITY,
                    f32::INFINITY,
                    1.0,
                    f32::INFINITY,
                    2.0,
                ],
                [2, 3],
            ),
            &device,
        );
        let k = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [2, 1]), &device);
        assert_eq!(read(kth_smallest(t, k)), vec![f32::INFINITY, 2.0]);
    }
}
