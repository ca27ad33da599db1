//! View-dependent colour from real spherical harmonics, degrees 0 to 3.
//!
//! The basis, its conventions and its derivatives are
//! [`splatforge_splat::sh`]'s (3DGS / gsplat), evaluated at the **unit**
//! direction `d = normalize(mean − camera_centre)` (from the camera towards
//! the Gaussian, world coordinates). Coefficients are laid out
//! `[coefficient][channel]` (RGB), DC first. The colour the rasterizer uses is
//! `rgb = max(Σ_k coeff_k · Y_k(d) + 0.5, 0)`; the `+ 0.5` and the clamp are
//! applied by the projection stage, not here.

use splatforge_splat::sh::sh_basis;
use splatforge_splat::sh_coeffs_per_channel;

use crate::real::Real;

/// `Σ_k coeffs[k][ch] · Y_k(dir)` for the first `sh_coeffs_per_channel(degree)`
/// coefficients; `coeffs` is `[coefficient][channel]` and may hold more
/// coefficients than the degree uses. `dir` must be a unit vector.
pub fn eval_sh<F: Real>(degree: u8, coeffs: &[F], dir: [F; 3]) -> [F; 3] {
    let mut basis = [F::ZERO; 16];
    sh_basis(degree, dir, &mut basis, None);
    let mut out = [F::ZERO; 3];
    for (k, b) in basis.iter().enumerate().take(sh_coeffs_per_channel(degree)) {
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
    for k in 0..sh_coeffs_per_channel(degree) {
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
    use splatforge_splat::SH_C0;

    #[test]
    fn degree_zero_is_the_dc_term() {
        let coeffs = [0.3f32, -0.2, 1.0];
        let rgb = eval_sh(0, &coeffs, [0.0, 0.0, 1.0]);
        for ch in 0..3 {
            assert!((rgb[ch] - SH_C0 * coeffs[ch]).abs() < 1e-7);
        }
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
            let n = sh_coeffs_per_channel(degree) * 3;
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
