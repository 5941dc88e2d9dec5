//! The row softmax of the fused attention: bias add, maximum, a vectorised `exp` and the sum, in
//! two passes over a row of scores.
//!
//! The body is plain Rust written in fixed-width lanes so that the compiler vectorises it; it is
//! compiled three times (baseline x86-64, AVX2+FMA, AVX-512F) and the widest one the running CPU
//! supports is chosen at run time.

/// Lanes of the accumulators: two AVX2 registers or one AVX-512 register of `f32`.
const LANES: usize = 16;

/// Below this `exp(x)` is not a normal `f32` (`ln(2^-126)`); inputs are clamped to it.
const EXP_MIN: f32 = -87.336_54;
/// Above this `exp(x)` overflows `f32`; inputs are clamped to it.
const EXP_MAX: f32 = 88.376_26;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `x - n ln 2` is exact in its high part (Cody and Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `1.5 * 2^23`: adding it to a float of magnitude below `2^22` rounds it to an integer, which
/// then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `exp(x)` within 2 ulp over the normal range (Cephes' `expf` polynomial): `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, `exp(r)` by a degree-7 polynomial, `2^n` built in the exponent bits.
/// Branch-free and without float-to-int conversions, so a loop of it vectorises.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = if x < EXP_MIN { EXP_MIN } else { x };
    let x = if x > EXP_MAX { EXP_MAX } else { x };
    // n = round(x / ln 2), also held as an integer in the low bits of `t`.
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is in [-126, 127] after the clamps: the low 9 bits of `t`'s bits plus 127 are the
    // biased exponent n + 127 (the mantissa offset 0x400000 is a multiple of 512), and the
    // shift drops every other bit.
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    y * scale
}

/// Softmax numerators of one row in place: `row[j] = exp(row[j] + bias[j] - max)` where `max`
/// is the row's maximum after the bias; returns the sum of the numerators (at least 1 unless
/// the row is empty or holds a NaN).
#[inline(always)]
fn exp_row_body(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    match bias {
        Some(bias) => {
            let bias = &bias[..row.len()];
            let mut rows = row.chunks_exact_mut(LANES);
            let mut biases = bias.chunks_exact(LANES);
            for (r, b) in (&mut rows).zip(&mut biases) {
                for j in 0..LANES {
                    let v = r[j] + b[j];
                    r[j] = v;
                    max[j] = if v > max[j] { v } else { max[j] };
                }
            }
            for (r, b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
                *r += b;
                max[0] = if *r > max[0] { *r } else { max[0] };
            }
        }
        None => {
            let mut rows = row.chunks_exact(LANES);
            for r in &mut rows {
                for j in 0..LANES {
                    max[j] = if r[j] > max[j] { r[j] } else { max[j] };
                }
            }
            for &r in rows.remainder() {
                max[0] = if r > max[0] { r } else { max[0] };
            }
        }
    }
    let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    // A row of -inf only (every key masked): every numerator is exp(-inf - -inf); keep it 0.
    let max = if max == f32::NEG_INFINITY { 0.0 } else { max };
    let mut sum = [0.0f32; LANES];
    let mut rows = row.chunks_exact_mut(LANES);
    for r in &mut rows {
        for j in 0..LANES {
            let e = exp(r[j] - max);
            r[j] = e;
            sum[j] += e;
        }
    }
    let mut tail = 0.0;
    for r in rows.into_remainder() {
        *r = exp(*r - max);
        tail += *r;
    }
    sum.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_row_avx512(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    exp_row_body(row, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_row_avx2(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    exp_row_body(row, bias)
}

/// Softmax numerators of one row in place (see [`exp_row_body`]), with the widest vector unit
/// of the running CPU; returns their sum. `bias`, when given, is at least as long as `row`.
pub(crate) fn exp_row(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, the only feature the function is compiled for.
            #[allow(unsafe_code)]
            return unsafe { exp_row_avx512(row, bias) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, the features the function is compiled for.
            #[allow(unsafe_code)]
            return unsafe { exp_row_avx2(row, bias) };
        }
    }
    exp_row_body(row, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_over_the_softmax_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn a_row_becomes_its_softmax_numerators() {
        for len in [1usize, 7, 16, 33, 100] {
            let row: Vec<f32> = (0..len)
                .map(|j| ((j * 37 % 11) as f32) * 0.7 - 3.0)
                .collect();
            let bias: Vec<f32> = (0..len).map(|j| (j % 3) as f32 * -0.25).collect();
            for with_bias in [false, true] {
                let mut got = row.clone();
                let sum = exp_row(&mut got, with_bias.then_some(&bias[..]));
                let biased: Vec<f64> = row
                    .iter()
                    .zip(&bias)
                    .map(|(&r, &b)| r as f64 + if with_bias { b as f64 } else { 0.0 })
                    .collect();
                let max = biased.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let want: Vec<f64> = biased.iter().map(|v| (v - max).exp()).collect();
                let want_sum: f64 = want.iter().sum();
                assert!((sum as f64 - want_sum).abs() < 1e-5 * want_sum, "len {len}");
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-6, "len {len}: {g} vs {w}");
                }
            }
        }
    }
}
