//! Initial Gaussians: DreamGaussian's random ball, or an existing splat.
//!
//! Random init (DreamGaussian's `Renderer.initialize` + `create_from_pcd`):
//! `num_pts` points uniform in a ball of radius `init_radius` (0.5);
//! colours `SH2RGB(U[0,1)/255)`, i.e. SH DC coefficients uniform in
//! `[0, 1/255)` (near-grey: the colours are random but tiny, as there);
//! higher SH bands zero; opacity 0.1 (stored as its logit); identity
//! rotation; isotropic scale `ln(sqrt(max(d², 1e-7)))` where `d²` is the mean
//! squared distance to the 3 nearest neighbours (simple-knn's `distCUDA2`,
//! here on a uniform grid, O(n) for uniform points).

use rayon::prelude::*;
use splatforge_splat::{logit, sh_coeffs_per_channel, Gaussians};

use crate::config::FitConfig;
use crate::rng::Rng;

/// Where the optimisation starts.
#[derive(Debug, Clone)]
pub enum Init {
    /// DreamGaussian's random ball (`num_pts`, `init_radius` from the config).
    Random,
    /// These Gaussians (e.g. read from a PLY/SPZ). Their SH degree is padded
    /// with zeros or truncated to the config's `sh_degree`.
    Gaussians(Gaussians),
}

/// Builds the initial Gaussians of `init` (deterministic in `config.seed`).
pub fn initial_gaussians(init: &Init, config: &FitConfig) -> Gaussians {
    match init {
        Init::Random => {
            let mut rng = Rng::fork(config.seed, 1);
            random_ball(
                config.num_pts,
                config.init_radius,
                config.sh_degree,
                &mut rng,
            )
        }
        Init::Gaussians(g) => with_sh_degree(g, config.sh_degree),
    }
}

/// DreamGaussian's random initialisation (see the module docs).
pub fn random_ball(num_pts: usize, radius: f32, sh_degree: u8, rng: &mut Rng) -> Gaussians {
    let mut g = Gaussians::with_capacity(num_pts, sh_degree);
    for _ in 0..num_pts {
        let phi = rng.unit() * 2.0 * std::f64::consts::PI;
        let cos_theta = rng.unit() * 2.0 - 1.0;
        let sin_theta = (1.0 - cos_theta * cos_theta).max(0.0).sqrt();
        let r = radius as f64 * rng.unit().cbrt();
        g.means.push([
            (r * sin_theta * phi.cos()) as f32,
            (r * sin_theta * phi.sin()) as f32,
            (r * cos_theta) as f32,
        ]);
        let dc = [0; 3].map(|_| (rng.unit() / 255.0) as f32);
        g.sh_dc.push(dc);
    }
    let rest = (sh_coeffs_per_channel(sh_degree) - 1) * 3;
    g.sh_rest = vec![0.0; num_pts * rest];
    let d2 = mean_sq_dist_to_nearest(&g.means, 3);
    g.log_scales = d2
        .iter()
        .map(|&d| {
            let s = (d.max(1e-7) as f64).sqrt().ln() as f32;
            [s, s, s]
        })
        .collect();
    g.rotations = vec![[1.0, 0.0, 0.0, 0.0]; num_pts];
    g.opacity_logits = vec![logit(0.1); num_pts];
    g
}

/// A copy of `g` with SH degree `degree` (extra bands zero, or dropped).
pub fn with_sh_degree(g: &Gaussians, degree: u8) -> Gaussians {
    if g.sh_degree == degree {
        return g.clone();
    }
    let old = g.rest_coeffs() * 3;
    let new = (sh_coeffs_per_channel(degree) - 1) * 3;
    let mut out = g.clone();
    out.sh_degree = degree;
    out.sh_rest = Vec::with_capacity(g.len() * new);
    for i in 0..g.len() {
        let src = &g.sh_rest[i * old..(i + 1) * old];
        let keep = old.min(new);
        out.sh_rest.extend_from_slice(&src[..keep]);
        out.sh_rest.extend(std::iter::repeat_n(0.0, new - keep));
    }
    out
}

/// For each point, the mean squared distance to its `k` nearest other
/// points (fewer when there are fewer points; 0 for a lone point).
/// Uses a uniform grid sized for about two points per cell and searches
/// growing shells of cells until no closer point can exist.
pub fn mean_sq_dist_to_nearest(points: &[[f32; 3]], k: usize) -> Vec<f32> {
    let n = points.len();
    if n <= 1 || k == 0 {
        return vec![0.0; n];
    }
    let k = k.min(n - 1);
    let finite: Vec<bool> = points
        .iter()
        .map(|p| p.iter().all(|v| v.is_finite()))
        .collect();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for (p, _) in points.iter().zip(&finite).filter(|(_, &f)| f) {
        for a in 0..3 {
            lo[a] = lo[a].min(p[a] as f64);
            hi[a] = hi[a].max(p[a] as f64);
        }
    }
    if !lo[0].is_finite() {
        return vec![0.0; n];
    }
    let ext: [f64; 3] = std::array::from_fn(|a| (hi[a] - lo[a]).max(1e-9));
    let max_ext = ext.iter().cloned().fold(0.0, f64::max);
    // Cell size for ~2 points per cell over the bounding box, with at most
    // 2^21 cells in total (and at least 1 per axis).
    let volume: f64 = ext.iter().map(|e| e.max(max_ext * 1e-3)).product();
    let mut h = (volume * 2.0 / n as f64).cbrt().max(max_ext / 128.0);
    let dims = |h: f64| -> [usize; 3] {
        std::array::from_fn(|a| ((ext[a] / h).floor() as usize + 1).max(1))
    };
    let mut d = dims(h);
    while d[0] * d[1] * d[2] > (1 << 21) {
        h *= 1.25;
        d = dims(h);
    }
    let cell_of = |p: &[f32; 3]| -> [usize; 3] {
        std::array::from_fn(|a| (((p[a] as f64 - lo[a]) / h).floor() as usize).min(d[a] - 1))
    };
    let flat = |c: [usize; 3]| (c[2] * d[1] + c[1]) * d[0] + c[0];
    // Counting sort of the point indices by cell.
    let num_cells = d[0] * d[1] * d[2];
    let mut start = vec![0u32; num_cells + 1];
    for (p, _) in points.iter().zip(&finite).filter(|(_, &f)| f) {
        start[flat(cell_of(p)) + 1] += 1;
    }
    for c in 0..num_cells {
        start[c + 1] += start[c];
    }
    let mut fill = start.clone();
    let mut order = vec![0u32; start[num_cells] as usize];
    for (i, p) in points.iter().enumerate() {
        if finite[i] {
            let c = flat(cell_of(p));
            order[fill[c] as usize] = i as u32;
            fill[c] += 1;
        }
    }
    let max_ring = d.iter().cloned().max().unwrap();
    (0..n)
        .into_par_iter()
        .map(|i| {
            if !finite[i] {
                return 0.0;
            }
            let p = points[i];
            let c = cell_of(&p);
            let mut best: Vec<f64> = Vec::with_capacity(k + 1);
            let consider = |j: u32, best: &mut Vec<f64>| {
                if j as usize == i {
                    return;
                }
                let q = points[j as usize];
                let d2: f64 = (0..3).map(|a| (p[a] as f64 - q[a] as f64).powi(2)).sum();
                if best.len() < k || d2 < best[k - 1] {
                    let pos = best.partition_point(|&b| b <= d2);
                    best.insert(pos, d2);
                    best.truncate(k);
                }
            };
            for r in 0..=max_ring {
                let r = r as isize;
                // Visit the cells at Chebyshev distance exactly r.
                for dz in -r..=r {
                    for dy in -r..=r {
                        for dx in -r..=r {
                            if dx.abs().max(dy.abs()).max(dz.abs()) != r {
                                continue;
                            }
                            let cc = [c[0] as isize + dx, c[1] as isize + dy, c[2] as isize + dz];
                            if (0..3).any(|a| cc[a] < 0 || cc[a] >= d[a] as isize) {
                                continue;
                            }
                            let cell = flat([cc[0] as usize, cc[1] as usize, cc[2] as usize]);
                            for &j in &order[start[cell] as usize..start[cell + 1] as usize] {
                                consider(j, &mut best);
                            }
                        }
                    }
                }
                // Every point outside the visited block is at least r·h away.
                if best.len() == k && best[k - 1] <= (r as f64 * h).powi(2) {
                    break;
                }
            }
            if best.is_empty() {
                0.0
            } else {
                (best.iter().sum::<f64>() / best.len() as f64) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(points: &[[f32; 3]], k: usize) -> Vec<f32> {
        points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut d: Vec<f64> = points
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, q)| (0..3).map(|a| (p[a] as f64 - q[a] as f64).powi(2)).sum())
                    .collect();
                d.sort_by(|a, b| a.partial_cmp(b).unwrap());
                let k = k.min(d.len());
                (d[..k].iter().sum::<f64>() / k as f64) as f32
            })
            .collect()
    }

    #[test]
    fn grid_knn_matches_brute_force() {
        let mut rng = Rng::new(3);
        // Uniform ball, a flat sheet (degenerate axis) and a clustered set.
        let ball = random_ball(1500, 0.5, 0, &mut rng).means;
        let sheet: Vec<[f32; 3]> = (0..800)
            .map(|_| [rng.unit() as f32, 0.25, rng.unit() as f32 * 3.0])
            .collect();
        let mut clusters: Vec<[f32; 3]> = (0..600)
            .map(|i| {
                let c = (i % 3) as f32 * 10.0;
                [
                    c + rng.normal() as f32 * 0.01,
                    rng.normal() as f32 * 0.01,
                    0.0,
                ]
            })
            .collect();
        clusters.push(clusters[5]); // a duplicate point
        for pts in [ball, sheet, clusters] {
            let fast = mean_sq_dist_to_nearest(&pts, 3);
            let slow = brute(&pts, 3);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-6 * b.max(1e-6), "{a} vs {b}");
            }
        }
        assert_eq!(mean_sq_dist_to_nearest(&[[0.0; 3]], 3), vec![0.0]);
        let two = mean_sq_dist_to_nearest(&[[0.0; 3], [0.0, 2.0, 0.0]], 3);
        assert_eq!(two, vec![4.0, 4.0]);
    }

    #[test]
    fn random_ball_as_dreamgaussian() {
        let config = FitConfig {
            num_pts: 5000,
            sh_degree: 1,
            ..Default::default()
        };
        let g = initial_gaussians(&Init::Random, &config);
        g.check_consistent().unwrap();
        assert_eq!(g.len(), 5000);
        assert!(g
            .means
            .iter()
            .all(|m| (m[0] * m[0] + m[1] * m[1] + m[2] * m[2]).sqrt() <= 0.5 + 1e-6));
        // Uniform in the ball: a fraction 1/8 within half the radius.
        let inner = g
            .means
            .iter()
            .filter(|m| (m[0] * m[0] + m[1] * m[1] + m[2] * m[2]).sqrt() < 0.25)
            .count();
        assert!((inner as f32 / 5000.0 - 0.125).abs() < 0.02, "{inner}");
        assert!(g
            .opacity_logits
            .iter()
            .all(|&o| (splatforge_splat::sigmoid(o) - 0.1).abs() < 1e-6));
        assert!(g
            .sh_dc
            .iter()
            .flatten()
            .all(|&c| (0.0..1.0 / 255.0).contains(&c)));
        assert!(g.sh_rest.iter().all(|&c| c == 0.0));
        // Mean spacing of 5000 points in a 0.5 ball is ~0.03.
        let s = g.log_scales.iter().map(|s| s[0].exp()).sum::<f32>() / 5000.0;
        assert!(s > 0.01 && s < 0.06, "{s}");
        // Deterministic in the seed.
        assert_eq!(initial_gaussians(&Init::Random, &config), g);
        let other = initial_gaussians(
            &Init::Random,
            &FitConfig {
                seed: 1,
                ..config.clone()
            },
        );
        assert_ne!(other.means, g.means);
    }

    #[test]
    fn sh_degree_padding_and_truncation() {
        let mut rng = Rng::new(1);
        let g0 = random_ball(10, 0.5, 0, &mut rng);
        let g2 = with_sh_degree(&g0, 2);
        g2.check_consistent().unwrap();
        assert_eq!(g2.sh_rest.len(), 10 * 24);
        let mut g2b = g2.clone();
        g2b.sh_rest
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32);
        let g1 = with_sh_degree(&g2b, 1);
        g1.check_consistent().unwrap();
        assert_eq!(&g1.sh_rest[9..18], &g2b.sh_rest[24..33]);
    }
}
