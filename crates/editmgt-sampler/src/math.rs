//! Portable elementary functions.
//!
//! The sampler must give the same edit for the same seed on every platform, but `f32::ln` and
//! `f32::cos` call the platform's libm, whose last bit differs between systems.
//! These versions use only IEEE-754 additions, multiplications, divisions and bit manipulation
//! (no fused multiply-add, no libm), so they return the same bits everywhere.
//!
//! - [`ln_f32`] and [`cos_f32`] are evaluated in `f64` by series and rounded once to `f32`, so
//!   they are correctly rounded except in (astronomically rare) near-halfway cases.

/// Natural logarithm of an `f32`, evaluated in `f64` and rounded once. `0 -> -inf`,
/// negative or NaN -> NaN, `+inf -> +inf`.
pub fn ln_f32(x: f32) -> f32 {
    ln_f64(f64::from(x)) as f32
}

/// Natural logarithm in `f64` (about 1e-16 relative error) from basic operations only.
pub fn ln_f64(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    // x = m * 2^e with m in [1, 2) (x is normal here when it comes from an f32 or is >= 2^-1022).
    let (mut m, mut e) = {
        let mut x = x;
        let mut shift = 0i64;
        if x < f64::MIN_POSITIVE {
            x *= 2f64.powi(64);
            shift = -64;
        }
        let bits = x.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
        (mantissa, exponent + shift)
    };
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    // ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), |s| <= 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..14 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// Cosine of an `f32` in `[-4, 4]` (the sampler needs `[0, pi/2]`), evaluated in `f64` by its
/// Taylor series and rounded once. Outside `[-4, 4]` the argument is first reduced modulo `2 pi`
/// in `f64` (less accurate, unused by the sampler).
pub fn cos_f32(x: f32) -> f32 {
    let mut x = f64::from(x);
    if !x.is_finite() {
        return f32::NAN;
    }
    if x.abs() > 4.0 {
        let two_pi = 2.0 * std::f64::consts::PI;
        x -= (x / two_pi).round() * two_pi;
    }
    let x2 = x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..=18 {
        let k = k as f64;
        term *= -x2 / ((2.0 * k - 1.0) * (2.0 * k));
        sum += term;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn ln_and_cos_are_correctly_rounded_on_samples() {
        let mut x = 1e-20f32;
        while x < 1e6 {
            assert!(ulps(ln_f32(x), f64::from(x).ln() as f32) <= 1, "ln {x}");
            x *= 1.0137;
        }
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert!(ln_f32(-1.0).is_nan());
        assert!((ln_f32(f32::MAX) - 88.722_84).abs() < 1e-4);
        let mut x = 0.0f32;
        while x < 1.6 {
            assert!(ulps(cos_f32(x), f64::from(x).cos() as f32) <= 1, "cos {x}");
            x += 0.001;
        }
        assert_eq!(cos_f32(0.0), 1.0);
    }
}
