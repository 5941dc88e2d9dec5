//! Branch-free float functions written so that a loop of them vectorises: `exp` (for the
//! fused attention's softmax) and SiLU (for the convolution's fused input normalisation).
//!
//! Callers compile their loops for AVX-512F, AVX2+FMA and baseline x86-64 and choose at run time
//! (see [`crate::fused_attention`]'s softmax and [`crate::direct_conv::kernel`]).

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

/// `silu(x) = x / (1 + exp(-x))` with [`exp`] (within a few ulp; `exp` clamps its input, so a
/// large negative `x` gives a tiny negative value instead of a NaN).
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
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
    fn silu_matches_its_definition() {
        let mut worst = 0.0f64;
        let mut x = -90.0f32;
        while x <= 90.0 {
            let v = x as f64;
            let want = v / (1.0 + (-v).exp());
            let got = silu(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1e-3));
            x += 0.003_1;
        }
        assert!(worst < 1e-6, "worst error {worst:e}");
        assert_eq!(silu(0.0), 0.0);
        assert!(silu(-1000.0).abs() < 1e-30);
        assert_eq!(silu(1000.0), 1000.0);
    }
}
