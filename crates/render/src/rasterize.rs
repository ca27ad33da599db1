//! Stage 3: front-to-back alpha compositing per pixel, and its backward
//! (gsplat's `rasterize_to_pixels` forward and backward).
//!
//! For pixel centre `p = (j + 0.5, i + 0.5)` and the tile's Gaussians in depth
//! order, with `d = p − mean2d`:
//! - `σ = ½(a·dx² + c·dy²) + b·dx·dy`; skipped if `σ < 0`;
//! - `α = min(MAX_ALPHA, opacity · e^{−σ})`; skipped if `α < 1/255`;
//! - if `T·(1 − α) ≤ 1e-4` the pixel stops *before* this Gaussian;
//! - otherwise `w = α·T`, `C += w·rgb`, `D += w·z`, `T ← T·(1 − α)`.
//!
//! Outputs: `rgb = C + T_final·background`, `alpha = 1 − T_final`, and
//! `depth = D` ("accumulated depth"), or `D / max(alpha, 1e-10)` ("expected
//! depth", gsplat's `ED` mode) when depth normalisation is on. `z` is the
//! camera-space depth of the Gaussian's centre.
//!
//! Backward walks each pixel's list back to front from the last Gaussian that
//! contributed, recovering `T_i = T_{i+1} / (1 − α_i)` from the final `T`, as
//! gsplat does. Gradients are accumulated per tile into buffers indexed by
//! the tile-list position, then summed per Gaussian in tile order on one
//! thread, so results are bitwise deterministic regardless of threading.
//! No gradient flows through the `MAX_ALPHA` clamp (as in gsplat).

use rayon::prelude::*;

use crate::project::{Projected, ScreenGrad, ALPHA_THRESHOLD};
use crate::real::{c, Real};
use crate::tiles::{TileBins, TileGrid};

/// Upper clamp of a Gaussian's alpha at a pixel. The brief for this crate
/// fixes 0.99 (the 3DGS reference value); gsplat 1.x uses 0.999.
pub const MAX_ALPHA: f64 = 0.99;
/// A pixel stops compositing when its transmittance would drop to this.
pub const TRANSMITTANCE_THRESHOLD: f64 = 1e-4;
/// Alpha floor used when normalising depth by alpha.
pub const DEPTH_ALPHA_EPS: f64 = 1e-10;

/// The per-tile copy of a Gaussian's screen-space data.
#[derive(Debug, Clone, Copy)]
struct Splat<F> {
    mean: [F; 2],
    conic: [F; 3],
    opacity: F,
    /// `σ` beyond which `opacity·e^{−σ} < 1/255` (skips the `exp`).
    sigma_cut: F,
    /// rgb, then depth.
    color: [F; 4],
}

impl<F: Real> Splat<F> {
    fn new(p: &Projected<F>) -> Self {
        Splat {
            mean: p.mean2d,
            conic: p.conic,
            opacity: p.opacity,
            sigma_cut: (p.opacity * c(255.0)).ln(),
            color: [p.rgb[0], p.rgb[1], p.rgb[2], p.depth],
        }
    }

    /// `(α, e^{−σ}, dx, dy, clamped)` at pixel centre `(px, py)`, or `None`
    /// when the Gaussian is skipped there. Shared by forward and backward so
    /// both make identical decisions.
    #[inline(always)]
    fn eval(&self, px: F, py: F) -> Option<(F, F, F, F, bool)> {
        let dx = px - self.mean[0];
        let dy = py - self.mean[1];
        let half: F = c(0.5);
        let sigma =
            half * (self.conic[0] * dx * dx + self.conic[2] * dy * dy) + self.conic[1] * dx * dy;
        if sigma < F::ZERO || sigma > self.sigma_cut {
            return None;
        }
        let g = (-sigma).exp();
        let raw = self.opacity * g;
        if raw < c(ALPHA_THRESHOLD) {
            return None;
        }
        let max: F = c(MAX_ALPHA);
        if raw > max {
            Some((max, g, dx, dy, true))
        } else {
            Some((raw, g, dx, dy, false))
        }
    }
}

/// One camera's rendered buffers, row-major, `width × height` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct RasterImage<F> {
    /// `[y][x][channel]`, length `3·W·H`.
    pub rgb: Vec<F>,
    pub alpha: Vec<F>,
    pub depth: Vec<F>,
}

/// What the backward pass needs from the forward pass, per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct RasterState<F> {
    /// Transmittance after the last composited Gaussian.
    pub final_transmittance: Vec<F>,
    /// Number of tile-list entries up to and including the last Gaussian
    /// composited into this pixel (0 if none).
    pub last_contrib: Vec<u32>,
    /// Accumulated depth `Σ w·z` before any normalisation.
    pub raw_depth: Vec<F>,
}

/// Per-pixel loss gradients for one camera (`None` = zero).
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelGrads<'a, F> {
    /// `∂L/∂rgb`, `[y][x][channel]`.
    pub rgb: Option<&'a [F]>,
    pub alpha: Option<&'a [F]>,
    pub depth: Option<&'a [F]>,
}

struct TileForward<F> {
    rgb: Vec<[F; 3]>,
    t_final: Vec<F>,
    depth: Vec<F>,
    last: Vec<u32>,
}

fn tile_splats<F: Real>(projected: &[Projected<F>], ids: &[u32]) -> Vec<Splat<F>> {
    ids.iter()
        .map(|&i| Splat::new(&projected[i as usize]))
        .collect()
}

/// Composites one camera's image (see the module docs).
pub fn rasterize_forward_image<F: Real>(
    projected: &[Projected<F>],
    bins: &TileBins,
    grid: &TileGrid,
    background: [F; 3],
    normalize_depth: bool,
) -> (RasterImage<F>, RasterState<F>) {
    let t_stop: F = c(TRANSMITTANCE_THRESHOLD);
    let half: F = c(0.5);
    let tiles: Vec<TileForward<F>> = (0..grid.num_tiles())
        .into_par_iter()
        .map(|tile| {
            let (x0, y0, x1, y1) = grid.tile_pixels(tile);
            let splats = tile_splats(projected, bins.tile(tile));
            let n = ((x1 - x0) * (y1 - y0)) as usize;
            let mut out = TileForward {
                rgb: Vec::with_capacity(n),
                t_final: Vec::with_capacity(n),
                depth: Vec::with_capacity(n),
                last: Vec::with_capacity(n),
            };
            for y in y0..y1 {
                let py = F::from_f64(y as f64) + half;
                for x in x0..x1 {
                    let px = F::from_f64(x as f64) + half;
                    let mut t = F::ONE;
                    let mut acc = [F::ZERO; 4];
                    let mut last = 0u32;
                    for (k, s) in splats.iter().enumerate() {
                        let Some((alpha, ..)) = s.eval(px, py) else {
                            continue;
                        };
                        let next_t = t * (F::ONE - alpha);
                        if next_t <= t_stop {
                            break;
                        }
                        let w = alpha * t;
                        for ch in 0..4 {
                            acc[ch] += w * s.color[ch];
                        }
                        t = next_t;
                        last = k as u32 + 1;
                    }
                    out.rgb.push([acc[0], acc[1], acc[2]]);
                    out.t_final.push(t);
                    out.depth.push(acc[3]);
                    out.last.push(last);
                }
            }
            out
        })
        .collect();

    let npix = grid.width as usize * grid.height as usize;
    let mut image = RasterImage {
        rgb: vec![F::ZERO; 3 * npix],
        alpha: vec![F::ZERO; npix],
        depth: vec![F::ZERO; npix],
    };
    let mut state = RasterState {
        final_transmittance: vec![F::ONE; npix],
        last_contrib: vec![0; npix],
        raw_depth: vec![F::ZERO; npix],
    };
    let eps: F = c(DEPTH_ALPHA_EPS);
    for (tile, out) in tiles.iter().enumerate() {
        let (x0, y0, x1, y1) = grid.tile_pixels(tile);
        let mut k = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                let p = y as usize * grid.width as usize + x as usize;
                let t = out.t_final[k];
                for ch in 0..3 {
                    image.rgb[3 * p + ch] = out.rgb[k][ch] + t * background[ch];
                }
                let alpha = F::ONE - t;
                image.alpha[p] = alpha;
                image.depth[p] = if normalize_depth {
                    out.depth[k] / alpha.max(eps)
                } else {
                    out.depth[k]
                };
                state.final_transmittance[p] = t;
                state.last_contrib[p] = out.last[k];
                state.raw_depth[p] = out.depth[k];
                k += 1;
            }
        }
    }
    (image, state)
}

/// Backward of [`rasterize_forward_image`]: returns `∂L/∂(projected values)`
/// for every Gaussian (zero for those that touched no pixel).
#[allow(clippy::too_many_arguments)]
pub fn rasterize_backward_image<F: Real>(
    projected: &[Projected<F>],
    bins: &TileBins,
    grid: &TileGrid,
    background: [F; 3],
    normalize_depth: bool,
    state: &RasterState<F>,
    grads: &PixelGrads<'_, F>,
) -> Vec<ScreenGrad<F>> {
    let half: F = c(0.5);
    let eps: F = c(DEPTH_ALPHA_EPS);
    let width = grid.width as usize;
    let per_tile: Vec<Vec<ScreenGrad<F>>> = (0..grid.num_tiles())
        .into_par_iter()
        .map(|tile| {
            let ids = bins.tile(tile);
            let mut acc = vec![ScreenGrad::<F>::default(); ids.len()];
            if ids.is_empty() {
                return acc;
            }
            let splats = tile_splats(projected, ids);
            let (x0, y0, x1, y1) = grid.tile_pixels(tile);
            for y in y0..y1 {
                let py = F::from_f64(y as f64) + half;
                for x in x0..x1 {
                    let p = y * width as u32 + x;
                    let p = p as usize;
                    let last = state.last_contrib[p] as usize;
                    let g_rgb = grads
                        .rgb
                        .map_or([F::ZERO; 3], |g| [g[3 * p], g[3 * p + 1], g[3 * p + 2]]);
                    let mut g_alpha = grads.alpha.map_or(F::ZERO, |g| g[p]);
                    let mut g_depth = grads.depth.map_or(F::ZERO, |g| g[p]);
                    let t_final = state.final_transmittance[p];
                    if normalize_depth && g_depth != F::ZERO {
                        let alpha = F::ONE - t_final;
                        let a = alpha.max(eps);
                        if alpha > eps {
                            g_alpha -= g_depth * state.raw_depth[p] / (a * a);
                        }
                        g_depth /= a;
                    }
                    if last == 0
                        || (g_rgb.iter().all(|v| *v == F::ZERO)
                            && g_alpha == F::ZERO
                            && g_depth == F::ZERO)
                    {
                        continue;
                    }
                    let g = [g_rgb[0], g_rgb[1], g_rgb[2], g_depth];
                    // ∂L/∂α_i from the background and alpha outputs share T_final/(1−α_i).
                    let g_final = g_alpha
                        - (g_rgb[0] * background[0]
                            + g_rgb[1] * background[1]
                            + g_rgb[2] * background[2]);
                    let px = F::from_f64(x as f64) + half;
                    let mut t = t_final;
                    let mut behind = [F::ZERO; 4];
                    for k in (0..last).rev() {
                        let s = &splats[k];
                        let Some((alpha, gauss, dx, dy, clamped)) = s.eval(px, py) else {
                            continue;
                        };
                        let ra = F::ONE / (F::ONE - alpha);
                        t *= ra;
                        let w = alpha * t;
                        let a = &mut acc[k];
                        for ch in 0..3 {
                            a.rgb[ch] += w * g[ch];
                        }
                        a.depth += w * g[3];
                        let mut v_alpha = t_final * ra * g_final;
                        for ch in 0..4 {
                            v_alpha += g[ch] * (s.color[ch] * t - behind[ch] * ra);
                        }
                        if !clamped {
                            let v_sigma = -alpha * v_alpha;
                            a.opacity += gauss * v_alpha;
                            a.conic[0] += v_sigma * half * dx * dx;
                            a.conic[1] += v_sigma * dx * dy;
                            a.conic[2] += v_sigma * half * dy * dy;
                            // d = p − mean ⇒ ∂σ/∂mean = −(C d).
                            let gx = -v_sigma * (s.conic[0] * dx + s.conic[1] * dy);
                            let gy = -v_sigma * (s.conic[1] * dx + s.conic[2] * dy);
                            a.mean2d[0] += gx;
                            a.mean2d[1] += gy;
                            a.mean2d_abs[0] += gx.abs();
                            a.mean2d_abs[1] += gy.abs();
                        }
                        for ch in 0..4 {
                            behind[ch] += s.color[ch] * w;
                        }
                    }
                }
            }
            acc
        })
        .collect();

    let mut out = vec![ScreenGrad::<F>::default(); projected.len()];
    for (tile, acc) in per_tile.iter().enumerate() {
        for (id, g) in bins.tile(tile).iter().zip(acc) {
            out[*id as usize].add(g);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::seeded_rng;
    use crate::tiles::bin_gaussians;
    use splatforge_splat::rng::SplitMix64;

    fn random_splats(
        rng: &mut SplitMix64,
        n: usize,
        size: f64,
        std: (f64, f64),
        opacity: (f64, f64),
    ) -> Vec<Projected<f64>> {
        (0..n)
            .map(|_| {
                // Random SPD covariance with the given std-devs (px), inverted.
                let (sx, sy, th) = (
                    rng.uniform(std.0, std.1),
                    rng.uniform(std.0, std.1),
                    rng.uniform(0.0, 3.0),
                );
                let (ct, st) = (th.cos(), th.sin());
                let c00 = ct * ct * sx * sx + st * st * sy * sy;
                let c01 = ct * st * (sx * sx - sy * sy);
                let c11 = st * st * sx * sx + ct * ct * sy * sy;
                let det = c00 * c11 - c01 * c01;
                Projected {
                    mean2d: [rng.uniform(-2.0, size + 2.0), rng.uniform(-2.0, size + 2.0)],
                    conic: [c11 / det, -c01 / det, c00 / det],
                    depth: rng.uniform(1.0, 3.0),
                    opacity: rng.uniform(opacity.0, opacity.1),
                    rgb: [
                        rng.uniform(0.0, 1.0),
                        rng.uniform(0.0, 1.0),
                        rng.uniform(0.0, 1.0),
                    ],
                    radius: (3.0 * sx.max(sy)).ceil(),
                    compensation: 1.0,
                }
            })
            .collect()
    }

    /// The discrete structure of a render, per pixel: `(last contributor,
    /// Gaussians composited, of which alpha-clamped, stopped early)`. A
    /// finite-difference step that changes it crosses a threshold (alpha
    /// cut-off, clamp, early stop) where the loss jumps or kinks, so the
    /// difference quotient measures the jump rather than the derivative.
    fn structure(splats: &[Projected<f64>], grid: &TileGrid) -> Vec<(u32, u32, u32, bool)> {
        let bins = bin_gaussians(splats, grid, usize::MAX, 0).unwrap();
        let (_, state) = rasterize_forward_image(splats, &bins, grid, [0.0; 3], false);
        let mut out = vec![(0, 0, 0, false); (grid.width * grid.height) as usize];
        for tile in 0..grid.num_tiles() {
            let list = tile_splats(splats, bins.tile(tile));
            let (x0, y0, x1, y1) = grid.tile_pixels(tile);
            for y in y0..y1 {
                for x in x0..x1 {
                    let p = (y * grid.width + x) as usize;
                    let last = state.last_contrib[p] as usize;
                    let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                    let evals: Vec<_> =
                        list[..last].iter().filter_map(|s| s.eval(px, py)).collect();
                    let stopped = list[last..].iter().any(|s| s.eval(px, py).is_some());
                    out[p] = (
                        last as u32,
                        evals.len() as u32,
                        evals.iter().filter(|e| e.4).count() as u32,
                        stopped,
                    );
                }
            }
        }
        out
    }

    /// `(alpha-clamped evaluations, pixels stopped early)` of a scene.
    fn count_branches(splats: &[Projected<f64>], grid: &TileGrid) -> (usize, usize) {
        let s = structure(splats, grid);
        (
            s.iter().map(|p| p.2 as usize).sum(),
            s.iter().filter(|p| p.3).count(),
        )
    }

    /// FD (f64, central, h = 1e-6) of a weighted sum of rgb, alpha and depth
    /// w.r.t. every screen-space input of every Gaussian; once with
    /// translucent splats, once with near-opaque ones so that the alpha
    /// clamp and the early stop are exercised.
    #[test]
    fn compositing_backward_matches_finite_differences() {
        let size = 32u32;
        let grid = TileGrid::new(size, size);
        let mut rng = seeded_rng(11);
        let translucent = random_splats(&mut rng, 25, size as f64, (1.5, 5.0), (0.05, 0.95));
        check_compositing(&translucent, &grid, &mut rng);
        let opaque = random_splats(&mut rng, 40, size as f64, (4.0, 8.0), (0.995, 1.0));
        let (clamped, stopped) = count_branches(&opaque, &grid);
        assert!(
            clamped >= 10 && stopped >= 100,
            "clamped {clamped}, stopped {stopped}"
        );

        check_compositing(&opaque, &grid, &mut rng);
    }

    fn check_compositing(splats: &[Projected<f64>], grid: &TileGrid, rng: &mut SplitMix64) {
        let grid = *grid;
        let size = grid.width;
        let npix = (size * grid.height) as usize;
        let bg = [0.2, 0.5, 0.9];
        let w_rgb: Vec<f64> = (0..3 * npix).map(|_| rng.normal()).collect();
        let w_alpha: Vec<f64> = (0..npix).map(|_| rng.normal()).collect();
        let w_depth: Vec<f64> = (0..npix).map(|_| rng.normal()).collect();
        for normalize in [false, true] {
            let loss = |ps: &[Projected<f64>]| {
                let bins = bin_gaussians(ps, &grid, usize::MAX, 0).unwrap();
                let (img, _) = rasterize_forward_image(ps, &bins, &grid, bg, normalize);
                let mut l = 0.0;
                for i in 0..3 * npix {
                    l += w_rgb[i] * img.rgb[i];
                }
                for i in 0..npix {
                    l += w_alpha[i] * img.alpha[i] + w_depth[i] * img.depth[i];
                }
                l
            };
            let bins = bin_gaussians(splats, &grid, usize::MAX, 0).unwrap();
            let (_, state) = rasterize_forward_image(splats, &bins, &grid, bg, normalize);
            let pg = PixelGrads {
                rgb: Some(&w_rgb),
                alpha: Some(&w_alpha),
                depth: Some(&w_depth),
            };
            let an = rasterize_backward_image(splats, &bins, &grid, bg, normalize, &state, &pg);
            let h = 1e-6;
            type Field = fn(&mut Projected<f64>) -> &mut f64;
            let fields: [(&str, Field); 10] = [
                ("mx", |p| &mut p.mean2d[0]),
                ("my", |p| &mut p.mean2d[1]),
                ("a", |p| &mut p.conic[0]),
                ("b", |p| &mut p.conic[1]),
                ("c", |p| &mut p.conic[2]),
                ("opacity", |p| &mut p.opacity),
                ("r", |p| &mut p.rgb[0]),
                ("g", |p| &mut p.rgb[1]),
                ("b", |p| &mut p.rgb[2]),
                ("depth", |p| &mut p.depth),
            ];
            let grads_of = |g: &ScreenGrad<f64>| {
                [
                    g.mean2d[0],
                    g.mean2d[1],
                    g.conic[0],
                    g.conic[1],
                    g.conic[2],
                    g.opacity,
                    g.rgb[0],
                    g.rgb[1],
                    g.rgb[2],
                    g.depth,
                ]
            };
            // A step that changes the render's discrete structure (see
            // `structure`) measures a jump, not the derivative: a mismatch
            // there is skipped (and counted); any other mismatch fails.
            let mut skipped = 0;
            for (f, (name, field)) in fields.iter().enumerate() {
                let stepped = |i: usize, e: f64| {
                    let mut p = splats.to_vec();
                    *field(&mut p[i]) += e;
                    p
                };
                let num: Vec<f64> = (0..splats.len())
                    .map(|i| (loss(&stepped(i, h)) - loss(&stepped(i, -h))) / (2.0 * h))
                    .collect();
                // Relative to the analytic gradients, which have no jumps.
                let scale = (0..splats.len()).fold(0.0f64, |m, i| m.max(grads_of(&an[i])[f].abs()));
                assert!(scale > 0.0, "{name}: no gradient at all");
                for (i, &n) in num.iter().enumerate() {
                    let a = grads_of(&an[i])[f];
                    if (a - n).abs() > 1e-6 * scale
                        && structure(&stepped(i, h), &grid) != structure(&stepped(i, -h), &grid)
                    {
                        skipped += 1;
                        continue;
                    }
                    assert!(
                        (a - n).abs() <= 1e-6 * scale,
                        "normalize={normalize} {name} of splat {i}: analytic {a} vs fd {n} (scale {scale})"
                    );
                }
            }
            let total = fields.len() * splats.len();
            assert!(
                skipped * 20 <= total,
                "{skipped} of {total} steps changed the structure"
            );
        }
    }

    #[test]
    fn empty_scene_is_background() {
        let grid = TileGrid::new(20, 10);
        let bins = bin_gaussians::<f32>(&[], &grid, 10, 0).unwrap();
        let (img, state) = rasterize_forward_image::<f32>(&[], &bins, &grid, [0.1, 0.2, 0.3], true);
        assert!(img.rgb.chunks(3).all(|p| p == [0.1, 0.2, 0.3]));
        assert!(img.alpha.iter().all(|&a| a == 0.0) && img.depth.iter().all(|&d| d == 0.0));
        assert!(state.last_contrib.iter().all(|&l| l == 0));
    }

    /// An opaque stack saturates: compositing stops at T ≤ 1e-4 and the
    /// alpha clamp keeps every weight finite.
    #[test]
    fn opaque_stack_terminates_early() {
        let grid = TileGrid::new(16, 16);
        let ps: Vec<Projected<f32>> = (0..50)
            .map(|i| Projected {
                mean2d: [8.0, 8.0],
                conic: [0.01, 0.0, 0.01],
                depth: 1.0 + i as f32,
                opacity: 1.0,
                rgb: [1.0, 0.0, 0.0],
                radius: 30.0,
                compensation: 1.0,
            })
            .collect();
        let bins = bin_gaussians(&ps, &grid, usize::MAX, 0).unwrap();
        let (img, state) = rasterize_forward_image(&ps, &bins, &grid, [0.0, 0.0, 1.0], false);
        let p = 8 * 16 + 8;
        // α is clamped to 0.99 per layer: T = 0.01 after one layer and
        // (up to f32 rounding of 0.01²) reaches the 1e-4 stop at the second.
        assert!(
            state.last_contrib[p] >= 1 && state.last_contrib[p] <= 2,
            "{}",
            state.last_contrib[p]
        );
        assert!(img.alpha[p] >= 0.99 - 1e-6 && img.alpha[p] < 1.0);
        assert!(img.rgb[3 * p] >= 0.99 - 1e-6 && img.rgb[3 * p + 2] <= 0.01 + 1e-6);
    }
}
