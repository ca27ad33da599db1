//! Image losses: 3DGS's `(1 − λ)·L1 + λ·(1 − SSIM)` on RGB (SSIM with an
//! 11×11 Gaussian window, σ = 1.5, zero padding, C1 = 0.01², C2 = 0.03²,
//! averaged over pixels and channels, as `utils/loss_utils.py`), an L1
//! alpha term for views with alpha, PSNR; with analytic gradients with
//! respect to the rendered image.
//!
//! Images are interleaved `[y][x][channel]` as the rasterizer writes them.
//! The rendered RGB is clamped to `[0, 1]` before the loss (DreamGaussian's
//! renderer clamps); the gradient is passed through where `0 ≤ x ≤ 1` and
//! is zero elsewhere (PyTorch's `clamp` gradient).
//!
//! SSIM gradient: with `μx = G∗x`, `Exx = G∗x²`, `Exy = G∗(x·y)`,
//! `σx² = Exx − μx²`, `σxy = Exy − μx·μy`, the map is
//! `S = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`.
//! Writing `N1, N2, D1, D2` for the four factors,
//! `∂S/∂μx = 2μy(N2 − N1)/(D1·D2) − 2μx·S/D1 + 2μx·S/D2`,
//! `∂S/∂Exx = −S/D2`, `∂S/∂Exy = 2·N1/(D1·D2)`; and since the zero-padded
//! blur with a symmetric kernel is its own adjoint,
//! `∂mean(S)/∂x = (G∗∂S/∂μx + 2x·(G∗∂S/∂Exx) + y·(G∗∂S/∂Exy)) / count`.

use rayon::prelude::*;
use splatforge_render::Real;

/// SSIM window side (3DGS).
pub const SSIM_WINDOW: usize = 11;
/// SSIM window standard deviation (3DGS).
pub const SSIM_SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// Normalised 1-D Gaussian kernel (3DGS's `gaussian(window_size, sigma)`).
pub fn gaussian_kernel<F: Real>(size: usize, sigma: f64) -> Vec<F> {
    let c = (size / 2) as f64;
    let raw: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| F::from_f64(v / sum)).collect()
}

/// Separable zero-padded "same" filtering of one `w × h` plane with a
/// symmetric odd kernel. `tmp` and `dst` have `w·h` values.
pub fn blur<F: Real>(src: &[F], w: usize, h: usize, kernel: &[F], tmp: &mut [F], dst: &mut [F]) {
    let r = kernel.len() / 2;
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let out = &mut tmp[y * w..(y + 1) * w];
        for x in 0..w {
            let lo = x.saturating_sub(r);
            let hi = (x + r).min(w - 1);
            let mut acc = F::ZERO;
            for xx in lo..=hi {
                acc += kernel[xx + r - x] * row[xx];
            }
            out[x] = acc;
        }
    }
    for y in 0..h {
        let lo = y.saturating_sub(r);
        let hi = (y + r).min(h - 1);
        let out = &mut dst[y * w..(y + 1) * w];
        out.iter_mut().for_each(|v| *v = F::ZERO);
        for yy in lo..=hi {
            let k = kernel[yy + r - y];
            let row = &tmp[yy * w..(yy + 1) * w];
            for x in 0..w {
                out[x] += k * row[x];
            }
        }
    }
}

/// Mean SSIM of `x` against `y` (interleaved, `channels` per pixel), and
/// when `grad` is given, writes `∂ mean SSIM / ∂x` into it. Channels run in
/// parallel.
pub fn ssim<F: Real>(
    x: &[F],
    y: &[F],
    w: usize,
    h: usize,
    channels: usize,
    grad: Option<&mut [F]>,
) -> F {
    let n = w * h;
    assert_eq!(x.len(), n * channels);
    assert_eq!(y.len(), n * channels);
    let want_grad = grad.is_some();
    let per_channel: Vec<(f64, Vec<F>)> = (0..channels)
        .into_par_iter()
        .map(|c| ssim_channel(x, y, w, h, channels, c, want_grad))
        .collect();
    if let Some(g) = grad {
        let inv = F::from_f64(1.0 / (n * channels) as f64);
        for (c, (_, pg)) in per_channel.iter().enumerate() {
            for i in 0..n {
                g[i * channels + c] = pg[i] * inv;
            }
        }
    }
    let total: f64 = per_channel.iter().map(|(s, _)| s).sum();
    F::from_f64(total / (n * channels) as f64)
}

/// Σ of the SSIM map of channel `c`, and (if asked) `∂ΣS/∂x` of that plane.
fn ssim_channel<F: Real>(
    x: &[F],
    y: &[F],
    w: usize,
    h: usize,
    channels: usize,
    c: usize,
    want_grad: bool,
) -> (f64, Vec<F>) {
    let n = w * h;
    let kernel = gaussian_kernel::<F>(SSIM_WINDOW, SSIM_SIGMA);
    let (c1, c2) = (F::from_f64(C1), F::from_f64(C2));
    let two = F::from_f64(2.0);
    let mut tmp = vec![F::ZERO; n];
    let blurred = |src: &[F], tmp: &mut Vec<F>| -> Vec<F> {
        let mut out = vec![F::ZERO; n];
        blur(src, w, h, &kernel, tmp, &mut out);
        out
    };
    let xp: Vec<F> = (0..n).map(|i| x[i * channels + c]).collect();
    let yp: Vec<F> = (0..n).map(|i| y[i * channels + c]).collect();
    let mu_x = blurred(&xp, &mut tmp);
    let mu_y = blurred(&yp, &mut tmp);
    let sq = |a: &[F], b: &[F]| -> Vec<F> { a.iter().zip(b).map(|(&p, &q)| p * q).collect() };
    let exx = blurred(&sq(&xp, &xp), &mut tmp);
    let eyy = blurred(&sq(&yp, &yp), &mut tmp);
    let exy = blurred(&sq(&xp, &yp), &mut tmp);
    let (mut ga, mut gb, mut gc) = if want_grad {
        (vec![F::ZERO; n], vec![F::ZERO; n], vec![F::ZERO; n])
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let mut sum = 0.0f64;
    for i in 0..n {
        let (mx, my) = (mu_x[i], mu_y[i]);
        let sxx = exx[i] - mx * mx;
        let syy = eyy[i] - my * my;
        let sxy = exy[i] - mx * my;
        let n1 = two * mx * my + c1;
        let n2 = two * sxy + c2;
        let d1 = mx * mx + my * my + c1;
        let d2 = sxx + syy + c2;
        let s = n1 * n2 / (d1 * d2);
        sum += s.to_f64();
        if want_grad {
            ga[i] = two * my * (n2 - n1) / (d1 * d2) - two * mx * s / d1 + two * mx * s / d2;
            gb[i] = -s / d2;
            gc[i] = two * n1 / (d1 * d2);
        }
    }
    if !want_grad {
        return (sum, Vec::new());
    }
    let ba = blurred(&ga, &mut tmp);
    let bb = blurred(&gb, &mut tmp);
    let bc = blurred(&gc, &mut tmp);
    let g = (0..n)
        .map(|i| ba[i] + two * xp[i] * bb[i] + yp[i] * bc[i])
        .collect();
    (sum, g)
}

/// PSNR in dB of a mean squared error for images in `[0, 1]`.
pub fn psnr(mse: f64) -> f64 {
    -10.0 * mse.max(1e-20).log10()
}

/// The weights of [`view_loss`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// λ of `(1 − λ)·L1 + λ·(1 − SSIM)`.
    pub lambda_ssim: f32,
    /// Weight of the mean absolute alpha error (views with alpha only).
    pub lambda_alpha: f32,
}

/// The terms of one view's loss.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ViewLoss {
    /// The optimised scalar.
    pub loss: f64,
    pub l1: f64,
    pub ssim: f64,
    /// MSE of the clamped render, for PSNR.
    pub mse: f64,
    /// Mean absolute alpha error (0 without alpha).
    pub alpha_l1: f64,
}

/// Gradients of one view's loss with respect to the rasterizer outputs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ViewLossGrad {
    pub rgb: Vec<f32>,
    /// Present when the view has alpha and `lambda_alpha > 0`.
    pub alpha: Option<Vec<f32>>,
}

/// One view's loss and its gradient, multiplied by `grad_scale` (e.g.
/// `1 / batch` when the optimised loss is the mean over a batch).
#[allow(clippy::too_many_arguments)]
pub fn view_loss(
    render_rgb: &[f32],
    render_alpha: &[f32],
    gt_rgb: &[f32],
    gt_alpha: Option<&[f32]>,
    width: usize,
    height: usize,
    weights: &LossWeights,
    grad_scale: f32,
) -> (ViewLoss, ViewLossGrad) {
    let n = width * height;
    assert_eq!(render_rgb.len(), 3 * n);
    assert_eq!(gt_rgb.len(), 3 * n);
    let x: Vec<f32> = render_rgb.iter().map(|v| v.clamp(0.0, 1.0)).collect();
    let lam = weights.lambda_ssim;
    let mut ssim_grad = vec![0.0f32; if lam > 0.0 { 3 * n } else { 0 }];
    let ssim_value = if lam > 0.0 {
        ssim(&x, gt_rgb, width, height, 3, Some(&mut ssim_grad)) as f64
    } else {
        ssim(&x, gt_rgb, width, height, 3, None) as f64
    };
    let inv = 1.0 / (3 * n) as f32;
    let mut l1 = 0.0f64;
    let mut se = 0.0f64;
    let mut grad_rgb = vec![0.0f32; 3 * n];
    for i in 0..3 * n {
        let d = x[i] - gt_rgb[i];
        l1 += d.abs() as f64;
        se += (d as f64) * (d as f64);
        let inside = (0.0..=1.0).contains(&render_rgb[i]);
        if inside {
            let sign = if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            };
            let mut g = (1.0 - lam) * sign * inv;
            if lam > 0.0 {
                g -= lam * ssim_grad[i];
            }
            grad_rgb[i] = g * grad_scale;
        }
    }
    l1 /= (3 * n) as f64;
    let mse = se / (3 * n) as f64;
    let mut out = ViewLoss {
        loss: (1.0 - lam as f64) * l1 + lam as f64 * (1.0 - ssim_value),
        l1,
        ssim: ssim_value,
        mse,
        alpha_l1: 0.0,
    };
    let mut grad_alpha = None;
    if let Some(gt_a) = gt_alpha {
        assert_eq!(gt_a.len(), n);
        assert_eq!(render_alpha.len(), n);
        let mut sum = 0.0f64;
        let mut ga = vec![0.0f32; n];
        let k = weights.lambda_alpha * grad_scale / n as f32;
        for i in 0..n {
            let d = render_alpha[i] - gt_a[i];
            sum += d.abs() as f64;
            ga[i] = if d > 0.0 {
                k
            } else if d < 0.0 {
                -k
            } else {
                0.0
            };
        }
        out.alpha_l1 = sum / n as f64;
        out.loss += weights.lambda_alpha as f64 * out.alpha_l1;
        if weights.lambda_alpha > 0.0 {
            grad_alpha = Some(ga);
        }
    }
    (
        out,
        ViewLossGrad {
            rgb: grad_rgb,
            alpha: grad_alpha,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_image(rng: &mut Rng, w: usize, h: usize, c: usize) -> Vec<f64> {
        // Smooth-ish content plus noise, away from 0 and 1.
        (0..w * h * c)
            .map(|i| {
                let x = (i / c) % w;
                let y = (i / c) / w;
                0.5 + 0.3 * ((x as f64 * 0.4 + (i % c) as f64).sin() * (y as f64 * 0.3).cos())
                    + 0.1 * (rng.unit() - 0.5)
            })
            .collect()
    }

    #[test]
    fn kernel_is_normalised_and_symmetric() {
        let k = gaussian_kernel::<f64>(11, 1.5);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for i in 0..11 {
            assert!((k[i] - k[10 - i]).abs() < 1e-15);
        }
        assert!((k[5] - 0.266_011_2).abs() < 1e-6, "{}", k[5]);
    }

    #[test]
    fn ssim_of_identical_images_is_one() {
        let mut rng = Rng::new(1);
        let a = random_image(&mut rng, 20, 13, 3);
        let s = ssim(&a, &a, 20, 13, 3, None);
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        let b: Vec<f64> = a.iter().map(|v| 1.0 - v).collect();
        assert!(ssim(&a, &b, 20, 13, 3, None) < 0.5);
    }

    #[test]
    fn ssim_gradient_matches_finite_differences() {
        let (w, h, c) = (17, 12, 3);
        let mut rng = Rng::new(2);
        let x = random_image(&mut rng, w, h, c);
        let y = random_image(&mut rng, w, h, c);
        let mut g = vec![0.0; x.len()];
        ssim(&x, &y, w, h, c, Some(&mut g));
        let eps = 1e-6;
        // Corners, edges (zero padding) and interior pixels, every channel.
        let pixels = [
            (0, 0),
            (w - 1, h - 1),
            (0, 6),
            (8, 0),
            (8, 6),
            (3, 9),
            (15, 2),
        ];
        let mut max_rel = 0.0f64;
        for &(px, py) in &pixels {
            for ch in 0..c {
                let i = (py * w + px) * c + ch;
                let mut xp = x.clone();
                xp[i] += eps;
                let mut xm = x.clone();
                xm[i] -= eps;
                let fd =
                    (ssim(&xp, &y, w, h, c, None) - ssim(&xm, &y, w, h, c, None)) / (2.0 * eps);
                let err = (fd - g[i]).abs() / fd.abs().max(1e-6);
                max_rel = max_rel.max(err);
                assert!(
                    err < 1e-5,
                    "pixel ({px},{py}) ch {ch}: analytic {} vs fd {fd}",
                    g[i]
                );
            }
        }
        assert!(max_rel < 1e-5);
    }

    #[test]
    fn view_loss_gradient_matches_finite_differences() {
        let (w, h) = (14, 11);
        let mut rng = Rng::new(5);
        let x: Vec<f32> = random_image(&mut rng, w, h, 3)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let y: Vec<f32> = random_image(&mut rng, w, h, 3)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let a: Vec<f32> = (0..w * h).map(|_| rng.unit() as f32).collect();
        let ga: Vec<f32> = (0..w * h).map(|_| rng.unit() as f32).collect();
        let weights = LossWeights {
            lambda_ssim: 0.2,
            lambda_alpha: 0.3,
        };
        let (l, g) = view_loss(&x, &a, &y, Some(&ga), w, h, &weights, 0.5);
        assert!(l.loss > 0.0 && l.ssim < 1.0);
        let loss_of =
            |x: &[f32], a: &[f32]| view_loss(x, a, &y, Some(&ga), w, h, &weights, 0.5).0.loss * 0.5;
        let eps = 1e-3f32;
        for i in [0usize, 7, 100, 3 * w * h - 1] {
            let mut xp = x.clone();
            xp[i] += eps;
            let mut xm = x.clone();
            xm[i] -= eps;
            let fd = (loss_of(&xp, &a) - loss_of(&xm, &a)) / (2.0 * eps as f64);
            // f32 loss: the difference quotient is good to ~1e-5 absolute.
            assert!(
                (fd - g.rgb[i] as f64).abs() < 2e-5 + 1e-3 * fd.abs(),
                "rgb {i}: {} vs {fd}",
                g.rgb[i]
            );
        }
        let galpha = g.alpha.unwrap();
        for i in [0usize, 50] {
            let mut ap = a.clone();
            ap[i] += eps;
            let mut am = a.clone();
            am[i] -= eps;
            let fd = (loss_of(&x, &ap) - loss_of(&x, &am)) / (2.0 * eps as f64);
            assert!(
                (fd - galpha[i] as f64).abs() < 1e-3 * fd.abs().max(1e-4),
                "alpha {i}: {} vs {fd}",
                galpha[i]
            );
        }
        // Outside [0, 1] the clamp blocks the gradient.
        let mut xo = x.clone();
        xo[0] = 1.5;
        let (_, g2) = view_loss(&xo, &a, &y, None, w, h, &weights, 1.0);
        assert_eq!(g2.rgb[0], 0.0);
        assert!(g2.alpha.is_none());
    }

    #[test]
    fn psnr_values() {
        assert!((psnr(0.01) - 20.0).abs() < 1e-12);
        assert!((psnr(1e-4) - 40.0).abs() < 1e-12);
    }
}
