//! The scalar type the rasterizer is generic over: `f32` in production,
//! `f64` for finite-difference gradient checks (so that a check can tell a
//! real bug from rounding noise).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use splatforge_splat::sh::ShScalar;

/// A floating-point scalar (`f32` or `f64`). `from_f64` (rounding to the
/// nearest value) comes from [`ShScalar`], so that the SH basis of
/// [`splatforge_splat::sh`] evaluates in it.
pub trait Real:
    ShScalar
    + Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Sum
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn ceil(self) -> Self;
    fn abs(self) -> Self;
    /// IEEE `max`: returns the other operand when one is NaN.
    fn max(self, other: Self) -> Self;
    /// IEEE `min`: returns the other operand when one is NaN.
    fn min(self, other: Self) -> Self;
    fn is_finite(self) -> bool;
    fn is_nan(self) -> bool;
    /// A `u64` whose unsigned order is the order of non-negative values
    /// (the IEEE bit pattern); used as a depth sort key.
    fn sort_key(self) -> u64;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn min(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn sort_key(self) -> u64 {
                self.to_bits() as u64
            }
        }
    };
}

impl_real!(f32);
impl_real!(f64);

/// Shorthand for a constant in the generic scalar type.
#[inline(always)]
pub fn c<F: Real>(v: f64) -> F {
    F::from_f64(v)
}

/// Logistic sigmoid `1 / (1 + e^-x)`; 0 for `-inf`, 1 for `+inf`.
#[inline]
pub fn sigmoid<F: Real>(x: F) -> F {
    F::ONE / (F::ONE + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_orders_positive_values() {
        let v = [1e-30f32, 0.01, 0.5, 1.0, 2.0, 1e30];
        for w in v.windows(2) {
            assert!(w[0].sort_key() < w[1].sort_key());
        }
        let v = [1e-300f64, 0.01, 0.5, 1.0, 2.0, 1e300];
        for w in v.windows(2) {
            assert!(w[0].sort_key() < w[1].sort_key());
        }
    }

    #[test]
    fn sigmoid_limits() {
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid(f32::INFINITY), 1.0);
        assert_eq!(sigmoid(-200.0f32), 0.0);
        assert!((sigmoid(0.0f64) - 0.5).abs() < 1e-15);
    }
}
