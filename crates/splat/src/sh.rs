//! Real spherical harmonics in the 3DGS convention (degree ≤ 3): the basis,
//! its derivatives, and the rotation of coefficients.
//!
//! Conventions (identical to 3DGS / gsplat): the real SH basis with the
//! Condon–Shortley phase, evaluated at a **unit** direction `d` (for a
//! splat's colour, from the camera towards the Gaussian, world coordinates),
//! in the order `[Y00, Y1−1, Y10, Y11, Y2−2, …, Y33]`. Coefficients are laid
//! out `[coefficient][channel]` (RGB), DC first, and a colour is
//! `0.5 + Σ_k coeff_k · Y_k(d)`. The CUDA kernels (`crates/render/cuda/sh.cuh`)
//! keep their own copy of the constants and polynomials.

use std::ops::{Add, Mul, Neg, Sub};

use crate::sh_coeffs_per_channel;

/// `Y00`, the constant of degree 0.
pub const C0: f64 = 0.282_094_791_773_878_14;
/// The constant of degree 1.
pub const C1: f64 = 0.488_602_511_902_919_9;
/// The constants of degree 2, in basis order.
pub const C2: [f64; 5] = [
    1.092_548_430_592_079_2,
    -1.092_548_430_592_079_2,
    0.315_391_565_252_520_05,
    -1.092_548_430_592_079_2,
    0.546_274_215_296_039_6,
];
/// The constants of degree 3, in basis order.
pub const C3: [f64; 7] = [
    -0.590_043_589_926_643_5,
    2.890_611_442_640_554,
    -0.457_045_799_464_465_8,
    0.373_176_332_590_115_4,
    -0.457_045_799_464_465_8,
    1.445_305_721_320_277,
    -0.590_043_589_926_643_5,
];

/// Largest supported SH degree.
pub const MAX_SH_DEGREE: u8 = 3;

/// A floating-point type the basis is evaluated in (`f32` or `f64`); the
/// constants above are rounded to it once, before any arithmetic.
pub trait ShScalar:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Neg<Output = Self>
{
    /// `v` rounded to the nearest value of this type.
    fn from_f64(v: f64) -> Self;
}

impl ShScalar for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl ShScalar for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// Evaluates the first `sh_coeffs_per_channel(degree)` basis functions at
/// `d`, and, when `grad` is given, their partial derivatives with respect to
/// the three components of `d` (treating the polynomials as functions on R³;
/// the caller chains through the normalisation). Entries beyond the degree
/// are left untouched.
pub fn sh_basis<F: ShScalar>(
    degree: u8,
    d: [F; 3],
    basis: &mut [F; 16],
    grad: Option<&mut [[F; 3]; 16]>,
) {
    let c = F::from_f64;
    let [x, y, z] = d;
    let z0 = c(0.0);
    basis[0] = c(C0);
    let mut g_local = [[z0; 3]; 16];
    let want_grad = grad.is_some();
    if degree >= 1 {
        let c1 = c(C1);
        basis[1] = -c1 * y;
        basis[2] = c1 * z;
        basis[3] = -c1 * x;
        if want_grad {
            g_local[1] = [z0, -c1, z0];
            g_local[2] = [z0, z0, c1];
            g_local[3] = [-c1, z0, z0];
        }
    }
    if degree >= 2 {
        let k = C2.map(c);
        let (xx, yy, zz) = (x * x, y * y, z * z);
        let two = c(2.0);
        basis[4] = k[0] * x * y;
        basis[5] = k[1] * y * z;
        basis[6] = k[2] * (two * zz - xx - yy);
        basis[7] = k[3] * x * z;
        basis[8] = k[4] * (xx - yy);
        if want_grad {
            let four = c(4.0);
            g_local[4] = [k[0] * y, k[0] * x, z0];
            g_local[5] = [z0, k[1] * z, k[1] * y];
            g_local[6] = [-two * k[2] * x, -two * k[2] * y, four * k[2] * z];
            g_local[7] = [k[3] * z, z0, k[3] * x];
            g_local[8] = [two * k[4] * x, -two * k[4] * y, z0];
        }
    }
    if degree >= 3 {
        let k = C3.map(c);
        let (xx, yy, zz) = (x * x, y * y, z * z);
        let (two, three, four, six, eight) = (c(2.0), c(3.0), c(4.0), c(6.0), c(8.0));
        basis[9] = k[0] * y * (three * xx - yy);
        basis[10] = k[1] * x * y * z;
        basis[11] = k[2] * y * (four * zz - xx - yy);
        basis[12] = k[3] * z * (two * zz - three * xx - three * yy);
        basis[13] = k[4] * x * (four * zz - xx - yy);
        basis[14] = k[5] * z * (xx - yy);
        basis[15] = k[6] * x * (xx - three * yy);
        if want_grad {
            g_local[9] = [k[0] * six * x * y, k[0] * three * (xx - yy), z0];
            g_local[10] = [k[1] * y * z, k[1] * x * z, k[1] * x * y];
            g_local[11] = [
                -two * k[2] * x * y,
                k[2] * (four * zz - xx - three * yy),
                eight * k[2] * y * z,
            ];
            g_local[12] = [
                -six * k[3] * x * z,
                -six * k[3] * y * z,
                k[3] * (six * zz - three * xx - three * yy),
            ];
            g_local[13] = [
                k[4] * (four * zz - three * xx - yy),
                -two * k[4] * x * y,
                eight * k[4] * x * z,
            ];
            g_local[14] = [two * k[5] * x * z, -two * k[5] * y * z, k[5] * (xx - yy)];
            g_local[15] = [three * k[6] * (xx - yy), -six * k[6] * x * y, z0];
        }
    }
    if let Some(g) = grad {
        let n = sh_coeffs_per_channel(degree.min(MAX_SH_DEGREE));
        g[..n].copy_from_slice(&g_local[..n]);
    }
}

/// Linear maps that rotate SH coefficients, one square matrix per band
/// 1..=degree (band 0 is invariant).
#[derive(Debug, Clone)]
pub struct ShRotation {
    /// `bands[l-1]` is a (2l+1)×(2l+1) row-major matrix.
    bands: Vec<Vec<f64>>,
}

impl ShRotation {
    /// The coefficient maps for rotating a function on the sphere by the
    /// 3×3 rotation `r` (row-major): the new function is `f'(d) = f(rᵀ d)`.
    ///
    /// Each band is spanned by its own basis functions, so sampling the
    /// basis at 2l+1 generic directions and solving the linear system gives
    /// the exact band matrix.
    pub fn new(r: [[f32; 3]; 3], degree: u8) -> ShRotation {
        let dirs: Vec<[f32; 3]> = (0..7)
            .map(|i| {
                let t = i as f32 * 0.9 + 0.3;
                let (a, b) = (t * 2.1, (t * 0.77).sin() * 1.3);
                [b.cos() * a.cos(), b.sin(), b.cos() * a.sin()]
            })
            .collect();
        let rotate_back = |d: [f32; 3]| -> [f32; 3] {
            std::array::from_fn(|j| (0..3).map(|i| r[i][j] * d[i]).sum())
        };
        let bands = (1..=degree as usize)
            .map(|l| {
                let m = 2 * l + 1;
                let first = l * l;
                let basis = |d| -> Vec<f64> {
                    let mut b = [0.0f32; 16];
                    sh_basis(MAX_SH_DEGREE, d, &mut b, None);
                    b[first..first + m].iter().map(|&v| v as f64).collect()
                };
                let b: Vec<Vec<f64>> = dirs[..m].iter().map(|&d| basis(d)).collect();
                let br: Vec<Vec<f64>> = dirs[..m].iter().map(|&d| basis(rotate_back(d))).collect();
                solve(b, br)
            })
            .collect();
        ShRotation { bands }
    }

    /// Rotates one Gaussian's higher-order coefficients in place, laid out
    /// `[coefficient][channel]` without the DC term.
    pub fn apply(&self, rest: &mut [f32]) {
        for (band, mat) in self.bands.iter().enumerate() {
            let l = band + 1;
            let m = 2 * l + 1;
            let first = l * l - 1;
            for c in 0..3 {
                let old: Vec<f64> = (0..m).map(|k| rest[(first + k) * 3 + c] as f64).collect();
                for (row, k) in (0..m).enumerate() {
                    let v: f64 = (0..m).map(|j| mat[row * m + j] * old[j]).sum();
                    rest[(first + k) * 3 + c] = v as f32;
                }
            }
        }
    }
}

/// Solves `a · x = b` for square `a` (rows given) and matrix `b`, returning
/// `x` row-major, by Gauss–Jordan elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<Vec<f64>>) -> Vec<f64> {
    let n = a.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = a[col][col];
        for row in 0..n {
            if row != col {
                let f = a[row][col] / p;
                for k in 0..n {
                    a[row][k] -= f * a[col][k];
                    b[row][k] -= f * b[col][k];
                }
            }
        }
    }
    (0..n)
        .flat_map(|i| (0..n).map(move |k| (i, k)))
        .map(|(i, k)| b[i][k] / a[i][i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn basis_at(theta: f64, phi: f64) -> [f64; 16] {
        let d = [
            theta.sin() * phi.cos(),
            theta.sin() * phi.sin(),
            theta.cos(),
        ];
        let mut b = [0.0; 16];
        sh_basis(3, d, &mut b, None);
        b
    }

    /// Closed forms of the real SH in spherical coordinates (z = cos θ),
    /// with the Condon–Shortley phase 3DGS uses: the m > 0 odd-m and m < 0
    /// odd-m functions carry a minus sign.
    #[test]
    fn basis_matches_closed_form() {
        for &(theta, phi) in &[
            (0.3, 0.2),
            (1.1, -2.0),
            (2.5, 1.7),
            (PI / 2.0, 0.0),
            (0.0, 0.0),
        ] {
            let (st, ct) = (f64::sin(theta), f64::cos(theta));
            let b = basis_at(theta, phi);
            let expect = [
                0.5 * (1.0 / PI).sqrt(),
                -(3.0 / (4.0 * PI)).sqrt() * st * phi.sin(),
                (3.0 / (4.0 * PI)).sqrt() * ct,
                -(3.0 / (4.0 * PI)).sqrt() * st * phi.cos(),
                0.25 * (15.0 / PI).sqrt() * st * st * (2.0 * phi).sin(),
                -0.5 * (15.0 / PI).sqrt() * st * ct * phi.sin(),
                0.25 * (5.0 / PI).sqrt() * (3.0 * ct * ct - 1.0),
                -0.5 * (15.0 / PI).sqrt() * st * ct * phi.cos(),
                0.25 * (15.0 / PI).sqrt() * st * st * (2.0 * phi).cos(),
                -0.25 * (35.0 / (2.0 * PI)).sqrt() * st.powi(3) * (3.0 * phi).sin(),
                0.25 * (105.0 / PI).sqrt() * st * st * ct * (2.0 * phi).sin(),
                -0.25 * (21.0 / (2.0 * PI)).sqrt() * st * (5.0 * ct * ct - 1.0) * phi.sin(),
                0.25 * (7.0 / PI).sqrt() * (5.0 * ct.powi(3) - 3.0 * ct),
                -0.25 * (21.0 / (2.0 * PI)).sqrt() * st * (5.0 * ct * ct - 1.0) * phi.cos(),
                0.25 * (105.0 / PI).sqrt() * st * st * ct * (2.0 * phi).cos(),
                -0.25 * (35.0 / (2.0 * PI)).sqrt() * st.powi(3) * (3.0 * phi).cos(),
            ];
            for k in 0..16 {
                assert!(
                    (b[k] - expect[k]).abs() < 1e-12,
                    "Y_{k} at ({theta},{phi}): {} vs {}",
                    b[k],
                    expect[k]
                );
            }
        }
    }

    /// ∫ Y_k Y_l dΩ = δ_kl, by midpoint quadrature over the sphere.
    #[test]
    fn basis_is_orthonormal() {
        let (nt, np) = (200, 400);
        let mut gram = [[0.0f64; 16]; 16];
        for i in 0..nt {
            let theta = (i as f64 + 0.5) * PI / nt as f64;
            let w = theta.sin() * (PI / nt as f64) * (2.0 * PI / np as f64);
            for j in 0..np {
                let phi = (j as f64 + 0.5) * 2.0 * PI / np as f64;
                let b = basis_at(theta, phi);
                for (row, &bk) in gram.iter_mut().zip(&b) {
                    for (g, &bl) in row.iter_mut().zip(&b) {
                        *g += w * bk * bl;
                    }
                }
            }
        }
        for (k, row) in gram.iter().enumerate() {
            for (l, &g) in row.iter().enumerate() {
                let want = if k == l { 1.0 } else { 0.0 };
                assert!((g - want).abs() < 1e-3, "<Y{k},Y{l}> = {g}");
            }
        }
    }

    fn eval(coeffs: &[f32], d: [f32; 3]) -> f32 {
        let mut b = [0.0f32; 16];
        sh_basis(3, d, &mut b, None);
        b.iter().zip(coeffs).map(|(b, c)| b * c).sum()
    }

    #[test]
    fn rotated_coefficients_evaluate_to_the_rotated_function() {
        // 37° about a tilted axis, built from a unit quaternion.
        let (w, x, y, z) = (0.948_323_6_f32, 0.1, -0.25, 0.17);
        let n = (w * w + x * x + y * y + z * z).sqrt();
        let (w, x, y, z) = (w / n, x / n, y / n, z / n);
        let r = [
            [
                1.0 - 2.0 * (y * y + z * z),
                2.0 * (x * y - w * z),
                2.0 * (x * z + w * y),
            ],
            [
                2.0 * (x * y + w * z),
                1.0 - 2.0 * (x * x + z * z),
                2.0 * (y * z - w * x),
            ],
            [
                2.0 * (x * z - w * y),
                2.0 * (y * z + w * x),
                1.0 - 2.0 * (x * x + y * y),
            ],
        ];
        let coeffs: Vec<f32> = (0..16).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let mut rest: Vec<f32> = coeffs[1..].iter().flat_map(|&c| [c, 2.0 * c, -c]).collect();
        ShRotation::new(r, 3).apply(&mut rest);
        let rotated: Vec<f32> = std::iter::once(coeffs[0])
            .chain((0..15).map(|k| rest[k * 3]))
            .collect();
        for i in 0..20 {
            let t = i as f32 * 0.37;
            let d = [
                t.cos() * (t * 1.3).sin(),
                (t * 1.3).cos(),
                t.sin() * (t * 1.3).sin(),
            ];
            let rd: [f32; 3] = std::array::from_fn(|a| (0..3).map(|b| r[a][b] * d[b]).sum());
            assert!(
                (eval(&rotated, rd) - eval(&coeffs, d)).abs() < 1e-4,
                "direction {i}"
            );
        }
    }
}
