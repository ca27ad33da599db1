//! View-dependent colour from real spherical harmonics, degrees 0 to 3.
//!
//! Conventions (identical to 3DGS / gsplat): the basis is the real SH basis
//! with the Condon–Shortley phase, evaluated at the **unit** direction
//! `d = normalize(mean − camera_centre)` (from the camera towards the
//! Gaussian, world coordinates), in the order
//! `[Y00, Y1−1, Y10, Y11, Y2−2, …, Y33]`. Coefficients are laid out
//! `[coefficient][channel]` (RGB), DC first. The colour the rasterizer uses is
//! `rgb = max(Σ_k coeff_k · Y_k(d) + 0.5, 0)`; the `+ 0.5` and the clamp are
//! applied by the projection stage, not here.

use crate::real::{c, Real};

/// `Y00`.
pub const SH_C0: f64 = 0.282_094_791_773_878_14;
/// Degree-1 constant.
pub const SH_C1: f64 = 0.488_602_511_902_919_9;
/// Degree-2 constants.
pub const SH_C2: [f64; 5] = [
    1.092_548_430_592_079_2,
    -1.092_548_430_592_079_2,
    0.315_391_565_252_520_05,
    -1.092_548_430_592_079_2,
    0.546_274_215_296_039_6,
];
/// Degree-3 constants.
pub const SH_C3: [f64; 7] = [
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

/// Coefficients per channel for a degree: 1, 4, 9, 16.
pub const fn num_sh_coeffs(degree: u8) -> usize {
    let d = degree as usize + 1;
    d * d
}

/// Evaluates the first `num_sh_coeffs(degree)` basis functions at `d`, and,
/// when `grad` is given, their partial derivatives with respect to the three
/// components of `d` (treating the polynomials as functions on R³; the
/// caller chains through the normalisation). Entries beyond the degree are
/// left untouched.
pub fn sh_basis<F: Real>(
    degree: u8,
    d: [F; 3],
    basis: &mut [F; 16],
    grad: Option<&mut [[F; 3]; 16]>,
) {
    let [x, y, z] = d;
    let z0 = F::ZERO;
    basis[0] = c(SH_C0);
    let mut g_local = [[z0; 3]; 16];
    let want_grad = grad.is_some();
    if degree >= 1 {
        let c1: F = c(SH_C1);
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
        let k = SH_C2.map(c::<F>);
        let (xx, yy, zz) = (x * x, y * y, z * z);
        let two: F = c(2.0);
        basis[4] = k[0] * x * y;
        basis[5] = k[1] * y * z;
        basis[6] = k[2] * (two * zz - xx - yy);
        basis[7] = k[3] * x * z;
        basis[8] = k[4] * (xx - yy);
        if want_grad {
            let four: F = c(4.0);
            g_local[4] = [k[0] * y, k[0] * x, z0];
            g_local[5] = [z0, k[1] * z, k[1] * y];
            g_local[6] = [-two * k[2] * x, -two * k[2] * y, four * k[2] * z];
            g_local[7] = [k[3] * z, z0, k[3] * x];
            g_local[8] = [two * k[4] * x, -two * k[4] * y, z0];
        }
    }
    if degree >= 3 {
        let k = SH_C3.map(c::<F>);
        let (xx, yy, zz) = (x * x, y * y, z * z);
        let (two, three, four, six, eight): (F, F, F, F, F) =
            (c(2.0), c(3.0), c(4.0), c(6.0), c(8.0));
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
        let n = num_sh_coeffs(degree.min(MAX_SH_DEGREE));
        g[..n].copy_from_slice(&g_local[..n]);
    }
}

/// `Σ_k coeffs[k][ch] · Y_k(dir)` for the first `num_sh_coeffs(degree)`
/// coefficients; `coeffs` is `[coefficient][channel]` and may hold more
/// coefficients than the degree uses. `dir` must be a unit vector.
pub fn eval_sh<F: Real>(degree: u8, coeffs: &[F], dir: [F; 3]) -> [F; 3] {
    let mut basis = [F::ZERO; 16];
    sh_basis(degree, dir, &mut basis, None);
    let mut out = [F::ZERO; 3];
    for (k, b) in basis.iter().enumerate().take(num_sh_coeffs(degree)) {
        for ch in 0..3 {
            out[ch] += *b * coeffs[k * 3 + ch];
        }
    }
    out
}

/// Backward of [`eval_sh`]: adds `∂L/∂coeffs` into `v_coeffs` (same layout)
/// and returns `∂L/∂dir` for the *unit* direction (before normalisation).
pub fn eval_sh_backward<F: Real>(
    degree: u8,
    coeffs: &[F],
    dir: [F; 3],
    v_color: [F; 3],
    v_coeffs: &mut [F],
) -> [F; 3] {
    let mut basis = [F::ZERO; 16];
    let mut grad = [[F::ZERO; 3]; 16];
    sh_basis(degree, dir, &mut basis, Some(&mut grad));
    let mut v_dir = [F::ZERO; 3];
    for k in 0..num_sh_coeffs(degree) {
        let mut dot = F::ZERO;
        for ch in 0..3 {
            v_coeffs[k * 3 + ch] += basis[k] * v_color[ch];
            dot += coeffs[k * 3 + ch] * v_color[ch];
        }
        for a in 0..3 {
            v_dir[a] += dot * grad[k][a];
        }
    }
    v_dir
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
                for k in 0..16 {
                    for l in 0..16 {
                        gram[k][l] += w * b[k] * b[l];
                    }
                }
            }
        }
        for k in 0..16 {
            for l in 0..16 {
                let want = if k == l { 1.0 } else { 0.0 };
                assert!(
                    (gram[k][l] - want).abs() < 1e-3,
                    "<Y{k},Y{l}> = {}",
                    gram[k][l]
                );
            }
        }
    }

    #[test]
    fn degree_zero_is_the_dc_term() {
        let coeffs = [0.3f32, -0.2, 1.0];
        let rgb = eval_sh(0, &coeffs, [0.0, 0.0, 1.0]);
        for ch in 0..3 {
            assert!((rgb[ch] - SH_C0 as f32 * coeffs[ch]).abs() < 1e-7);
        }
        // Matches the data model's constant.
        assert!((SH_C0 as f32 - splatforge_splat::SH_C0).abs() < 1e-7);
    }

    /// Central differences of `w · eval_sh` in f64 against the analytic
    /// coefficient and direction gradients.
    #[test]
    fn backward_matches_finite_differences() {
        let mut s = 12345u64;
        let mut rnd = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        for degree in 0..=3u8 {
            let n = num_sh_coeffs(degree) * 3;
            let coeffs: Vec<f64> = (0..n).map(|_| rnd()).collect();
            let dir = [rnd(), rnd(), rnd()];
            let w = [rnd(), rnd(), rnd()];
            let loss = |c: &[f64], d: [f64; 3]| {
                let v = eval_sh(degree, c, d);
                v[0] * w[0] + v[1] * w[1] + v[2] * w[2]
            };
            let mut v_coeffs = vec![0.0; n];
            let v_dir = eval_sh_backward(degree, &coeffs, dir, w, &mut v_coeffs);
            let h = 1e-6;
            for i in 0..n {
                let (mut p, mut m) = (coeffs.clone(), coeffs.clone());
                p[i] += h;
                m[i] -= h;
                let fd = (loss(&p, dir) - loss(&m, dir)) / (2.0 * h);
                assert!((fd - v_coeffs[i]).abs() < 1e-8, "deg {degree} coeff {i}");
            }
            for a in 0..3 {
                let (mut p, mut m) = (dir, dir);
                p[a] += h;
                m[a] -= h;
                let fd = (loss(&coeffs, p) - loss(&coeffs, m)) / (2.0 * h);
                assert!(
                    (fd - v_dir[a]).abs() < 1e-8,
                    "deg {degree} dir {a}: {fd} vs {}",
                    v_dir[a]
                );
            }
        }
    }
}
