//! Adaptive density control as 3DGS / DreamGaussian's `GaussianModel`:
//! statistics accumulation, `densify_and_clone`, `densify_and_split`,
//! pruning, and `reset_opacity`, with the Adam state following every row.
//!
//! # Gradient units
//! 3DGS's threshold compares `‖∂L/∂mean2d‖` where the 2D mean is in the
//! rasterizer's NDC-like units: `∂L/∂ndc = ∂L/∂pixel · (W/2, H/2)`. Our
//! rasterizer reports the norm in **pixel** units, summed over the cameras
//! of one call. [`DensifyState::accumulate`] multiplies it by `W/2` (exact
//! for square images; `√(W·H)/2` otherwise, an approximation since only the
//! norm is known) and by the batch size, because the optimised loss is the
//! mean over the batch while 3DGS takes one view per step (gsplat does the
//! same). Then `grad_accum / denom` is 3DGS's average view-space gradient,
//! and `densify_grad_threshold` keeps its meaning: 0.0002 for 3DGS's
//! L1 + SSIM loss. (DreamGaussian's 0.01 is for its SDS / 10⁴·MSE losses,
//! whose gradients are much larger.)
//!
//! # Order of operations (as the reference)
//! 1. `grads = grad_accum / denom` (0 where never visible).
//! 2. Clone: `grads ≥ threshold` and `max scale ≤ percent_dense · extent`:
//!    exact copies appended (zero Adam moments).
//! 3. Split (over the rows after cloning; clones have gradient 0):
//!    `grads ≥ threshold` and `max scale > percent_dense · extent`: two new
//!    Gaussians each, centred at `mean + R(q)·(s ⊙ ε)`, `ε ~ N(0, I)`, scale
//!    `s / 1.6`, other parameters copied; the originals are removed.
//! 4. Prune: opacity `< min_opacity`; with `max_screen_size`, also those
//!    whose screen radius exceeded it since the last densification and
//!    those with `max scale > 0.1 · extent`.
//! 5. The statistics restart from zero.
//!
//! (In the reference, step 2's bookkeeping zeroes the screen radii before
//! step 4, so its screen-size test never fires; here it uses the radii seen
//! since the last densification, which is what it was meant to do.)

use splatforge_render::project::quat_to_rotmat;
use splatforge_render::DensifyStats;
use splatforge_splat::{sigmoid, Gaussians};

use crate::adam::{retain_rows, Adam, Group};
use crate::rng::Rng;

/// Per-Gaussian statistics between densifications.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DensifyState {
    /// Σ over views of the view-space gradient norm (NDC units).
    pub grad_accum: Vec<f32>,
    /// Number of views in which the Gaussian was visible.
    pub denom: Vec<f32>,
    /// Largest screen radius (pixels) since the last densification.
    pub max_radii: Vec<f32>,
}

impl DensifyState {
    pub fn new(n: usize) -> Self {
        DensifyState {
            grad_accum: vec![0.0; n],
            denom: vec![0.0; n],
            max_radii: vec![0.0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.grad_accum.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grad_accum.is_empty()
    }

    /// Adds one backward call's statistics (see the module docs for units):
    /// `width × height` is the render size, `batch` the number of views the
    /// loss was averaged over.
    pub fn accumulate(&mut self, stats: &DensifyStats<f32>, width: u32, height: u32, batch: usize) {
        let scale = ndc_scale(width, height) * batch as f32;
        for i in 0..self.len() {
            let count = stats.visible_count[i];
            if count > 0 {
                self.grad_accum[i] += stats.mean2d_grad_norm[i] * scale;
                self.denom[i] += count as f32;
                self.max_radii[i] = self.max_radii[i].max(stats.max_radius_px[i]);
            }
        }
    }

    /// Average view-space gradient per Gaussian (0 if never visible).
    pub fn average_grads(&self) -> Vec<f32> {
        self.grad_accum
            .iter()
            .zip(&self.denom)
            .map(|(&a, &d)| if d > 0.0 { a / d } else { 0.0 })
            .collect()
    }

    fn reset(&mut self, n: usize) {
        *self = DensifyState::new(n);
    }
}

/// Pixel → NDC factor for gradient norms: `W/2` (square), `√(W·H)/2`.
pub fn ndc_scale(width: u32, height: u32) -> f32 {
    if width == height {
        width as f32 * 0.5
    } else {
        ((width as f64 * height as f64).sqrt() * 0.5) as f32
    }
}

/// Parameters of [`densify_and_prune`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DensifyParams {
    pub grad_threshold: f32,
    pub percent_dense: f32,
    pub extent: f32,
    pub min_opacity: f32,
    pub max_screen_size: Option<f32>,
}

/// What one densification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DensifyReport {
    pub before: usize,
    pub cloned: usize,
    pub split: usize,
    pub pruned: usize,
    pub after: usize,
}

fn max_scale(ls: &[f32; 3]) -> f32 {
    ls[0].max(ls[1]).max(ls[2]).exp()
}

/// Appends copies of the rows `idx` of `g` (all fields).
fn append_copies(g: &mut Gaussians, idx: &[usize]) {
    let k = g.rest_coeffs() * 3;
    for &i in idx {
        g.means.push(g.means[i]);
        g.log_scales.push(g.log_scales[i]);
        g.rotations.push(g.rotations[i]);
        g.opacity_logits.push(g.opacity_logits[i]);
        g.sh_dc.push(g.sh_dc[i]);
        g.sh_rest.extend_from_within(i * k..(i + 1) * k);
    }
}

/// Keeps the rows of `g` whose `keep` entry is true.
pub(crate) fn retain_gaussians(g: &mut Gaussians, keep: &[bool]) {
    let mut w = 0;
    for (r, &k) in keep.iter().enumerate() {
        if k {
            g.means[w] = g.means[r];
            g.log_scales[w] = g.log_scales[r];
            g.rotations[w] = g.rotations[r];
            g.opacity_logits[w] = g.opacity_logits[r];
            g.sh_dc[w] = g.sh_dc[r];
            w += 1;
        }
    }
    g.means.truncate(w);
    g.log_scales.truncate(w);
    g.rotations.truncate(w);
    g.opacity_logits.truncate(w);
    g.sh_dc.truncate(w);
    let k = g.rest_coeffs() * 3;
    if k > 0 {
        retain_rows(&mut g.sh_rest, k, keep);
    }
}

/// 3DGS's `densify_and_prune` (see the module docs). `g`, `adam` and
/// `state` must have the same number of rows; they still agree afterwards,
/// and `state` is zeroed.
pub fn densify_and_prune(
    g: &mut Gaussians,
    adam: &mut Adam,
    state: &mut DensifyState,
    p: &DensifyParams,
    rng: &mut Rng,
) -> DensifyReport {
    let n0 = g.len();
    assert_eq!(adam.rows(), n0);
    assert_eq!(state.len(), n0);
    let grads = state.average_grads();
    let size_limit = p.percent_dense * p.extent;

    // Clone.
    let clone_idx: Vec<usize> = (0..n0)
        .filter(|&i| grads[i] >= p.grad_threshold && max_scale(&g.log_scales[i]) <= size_limit)
        .collect();
    append_copies(g, &clone_idx);
    adam.extend_zeros(clone_idx.len());

    // Split (clones have zero gradient, so only original rows qualify).
    let n1 = g.len();
    let split_idx: Vec<usize> = (0..n0)
        .filter(|&i| grads[i] >= p.grad_threshold && max_scale(&g.log_scales[i]) > size_limit)
        .collect();
    const N: usize = 2;
    let shrink = (0.8 * N as f32).ln();
    for _ in 0..N {
        for &i in &split_idx {
            let s = g.log_scales[i].map(f32::exp);
            let q = g.rotations[i];
            let n = (q.iter().map(|v| (*v as f64).powi(2)).sum::<f64>())
                .sqrt()
                .max(1e-30);
            let r = quat_to_rotmat(q.map(|v| v as f64 / n)).map(|row| row.map(|v| v as f32));
            let e = [0; 3].map(|_| rng.normal() as f32);
            let local = [s[0] * e[0], s[1] * e[1], s[2] * e[2]];
            let m = g.means[i];
            let offset: [f32; 3] =
                std::array::from_fn(|a| (0..3).map(|b| r[a][b] * local[b]).sum());
            let new_mean = [m[0] + offset[0], m[1] + offset[1], m[2] + offset[2]];
            let new_scale = g.log_scales[i].map(|v| v - shrink);
            append_copies(g, &[i]);
            let last = g.len() - 1;
            g.means[last] = new_mean;
            g.log_scales[last] = new_scale;
        }
    }
    adam.extend_zeros(g.len() - n1);
    let mut keep = vec![true; g.len()];
    for &i in &split_idx {
        keep[i] = false;
    }

    // Prune (old rows keep their radii; new rows have none yet).
    let max_world = 0.1 * p.extent;
    for (i, k) in keep.iter_mut().enumerate().filter(|(_, k)| **k) {
        let mut prune = sigmoid(g.opacity_logits[i]) < p.min_opacity;
        if let Some(max_px) = p.max_screen_size {
            let radius = if i < n0 { state.max_radii[i] } else { 0.0 };
            prune |= radius > max_px || max_scale(&g.log_scales[i]) > max_world;
        }
        if prune {
            *k = false;
        }
    }
    let removed_by_prune = keep.iter().filter(|k| !**k).count() - split_idx.len();
    retain_gaussians(g, &keep);
    adam.retain(&keep);
    state.reset(g.len());
    DensifyReport {
        before: n0,
        cloned: clone_idx.len(),
        split: split_idx.len(),
        pruned: removed_by_prune,
        after: g.len(),
    }
}

/// 3DGS's `reset_opacity`: opacities clamped to at most 0.01, and the
/// opacity group's Adam moments zeroed.
pub fn reset_opacity(g: &mut Gaussians, adam: &mut Adam) {
    let cap = splatforge_splat::logit(0.01);
    for o in &mut g.opacity_logits {
        *o = o.min(cap);
    }
    adam.reset_group(Group::Opacity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adam::AdamConfig;
    use splatforge_splat::logit;

    /// Six Gaussians: 0 small+hot (clone), 1 large+hot (split), 2 small+cold,
    /// 3 transparent (prune), 4 large+hot+transparent (split: the children
    /// inherit the opacity and are pruned), 5 never visible.
    fn scene() -> (Gaussians, Adam, DensifyState) {
        let mut g = Gaussians::with_capacity(6, 1);
        let small = (0.001f32).ln();
        let large = (0.2f32).ln();
        for (i, (ls, op)) in [
            (small, 0.5),
            (large, 0.5),
            (small, 0.5),
            (small, 0.001),
            (large, 0.005),
            (small, 0.5),
        ]
        .iter()
        .enumerate()
        {
            g.means.push([i as f32, 0.0, 0.0]);
            g.log_scales.push([*ls, *ls - 1.0, *ls - 2.0]);
            g.rotations.push([1.0, 0.0, 0.0, 0.0]);
            g.opacity_logits.push(logit(*op));
            g.sh_dc.push([i as f32; 3]);
            g.sh_rest.extend((0..9).map(|k| (i * 10 + k) as f32));
        }
        let mut adam = Adam::for_gaussians(&g, AdamConfig::default());
        for grp in Group::ALL {
            let m = adam.group_mut(grp);
            let w = m.width;
            for i in 0..6 {
                for k in 0..w {
                    m.m[i * w + k] = (i + 1) as f32;
                    m.v[i * w + k] = 10.0 * (i + 1) as f32;
                }
            }
            m.step = 42;
        }
        let mut st = DensifyState::new(6);
        let stats = DensifyStats {
            // pixel units; 64×64 render, batch 1 → ×32.
            mean2d_grad_norm: vec![1e-4, 1e-4, 1e-6, 1e-4, 1e-4, 0.0],
            mean2d_absgrad_norm: vec![0.0; 6],
            visible_count: vec![1, 1, 1, 1, 1, 0],
            max_radius_px: vec![3.0, 30.0, 2.0, 1.0, 30.0, 0.0],
        };
        st.accumulate(&stats, 64, 64, 1);
        (g, adam, st)
    }

    fn params() -> DensifyParams {
        DensifyParams {
            grad_threshold: 0.002, // 1e-4 px · 32 = 0.0032 ≥; 1e-6 · 32 below
            percent_dense: 0.01,
            extent: 1.0,
            min_opacity: 0.01,
            max_screen_size: None,
        }
    }

    #[test]
    fn accumulate_converts_pixel_norms_to_ndc() {
        let (_, _, st) = scene();
        let avg = st.average_grads();
        assert!((avg[0] - 0.0032).abs() < 1e-9);
        assert_eq!(avg[5], 0.0);
        let mut st2 = DensifyState::new(1);
        let stats = DensifyStats {
            mean2d_grad_norm: vec![1.0],
            mean2d_absgrad_norm: vec![0.0],
            visible_count: vec![4],
            max_radius_px: vec![1.0],
        };
        // Batch of 4 views, 128²: Σ norms · 64 · 4, four visible views.
        st2.accumulate(&stats, 128, 128, 4);
        assert_eq!(st2.average_grads()[0], 64.0);
    }

    #[test]
    fn clone_split_prune_counts_and_state_follows() {
        let (mut g, mut adam, mut st) = scene();
        let before = g.clone();
        let mut rng = Rng::new(9);
        let r = densify_and_prune(&mut g, &mut adam, &mut st, &params(), &mut rng);
        g.check_consistent().unwrap();
        // Clone: 0 and 3 (small+hot); split: 1 and 4 → 4 children;
        // prune: 3 and its clone (opacity), 4's two children (opacity).
        assert_eq!(r.cloned, 2);
        assert_eq!(r.split, 2);
        assert_eq!(r.pruned, 4);
        assert_eq!(r.before, 6);
        assert_eq!(r.after, 6 + 2 + 4 - 2 - 4);
        assert_eq!(g.len(), r.after);
        assert_eq!(adam.rows(), g.len());
        assert_eq!(st.len(), g.len());
        assert!(st.grad_accum.iter().all(|&v| v == 0.0));
        // Survivors in order: 0, 2, 5 (originals), clone of 0, 1's two children.
        assert_eq!(g.means[0], before.means[0]);
        assert_eq!(g.means[1], before.means[2]);
        assert_eq!(g.means[2], before.means[5]);
        assert_eq!(g.means[3], before.means[0]);
        assert_eq!(g.sh_rest_of(1), before.sh_rest_of(2));
        assert_eq!(g.sh_rest_of(3), before.sh_rest_of(0));
        for child in [4, 5] {
            assert_eq!(g.sh_dc[child], [1.0; 3]);
            assert_eq!(g.sh_rest_of(child), before.sh_rest_of(1));
            for a in 0..3 {
                assert!(
                    (g.log_scales[child][a] - (before.log_scales[1][a] - 1.6f32.ln())).abs() < 1e-6
                );
            }
            // Sampled within a few standard deviations of the parent.
            let d = (0..3)
                .map(|a| (g.means[child][a] - before.means[1][a]).abs())
                .fold(0.0, f32::max);
            assert!(d < 5.0 * 0.2, "{d}");
        }
        assert_ne!(g.means[4], g.means[5]);
        // Adam: kept rows keep their moments, new rows start at zero,
        // and the step count is the group's.
        for grp in Group::ALL {
            let m = adam.group(grp);
            let w = m.width;
            assert_eq!(m.step, 42);
            for (row, orig) in [(0usize, 0usize), (1, 2), (2, 5)] {
                assert!(
                    m.m[row * w..(row + 1) * w]
                        .iter()
                        .all(|&x| x == (orig + 1) as f32),
                    "{}",
                    grp.name()
                );
                assert!(m.v[row * w..(row + 1) * w]
                    .iter()
                    .all(|&x| x == 10.0 * (orig + 1) as f32));
            }
            for row in 3..6 {
                assert!(m.m[row * w..(row + 1) * w].iter().all(|&x| x == 0.0));
                assert!(m.v[row * w..(row + 1) * w].iter().all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn screen_and_world_size_prune() {
        let (mut g, mut adam, mut st) = scene();
        let p = DensifyParams {
            grad_threshold: 1.0, // no densification
            max_screen_size: Some(20.0),
            extent: 1.5, // world limit 0.15: the large (0.2) ones go
            ..params()
        };
        let r = densify_and_prune(&mut g, &mut adam, &mut st, &p, &mut Rng::new(1));
        assert_eq!((r.cloned, r.split), (0, 0));
        // Pruned: 1 (30 px, 0.2), 3 (opacity), 4 (all three).
        assert_eq!(r.pruned, 3);
        assert_eq!(
            g.means.iter().map(|m| m[0] as usize).collect::<Vec<_>>(),
            vec![0, 2, 5]
        );
        assert_eq!(adam.rows(), 3);
    }

    #[test]
    fn reset_opacity_caps_and_zeroes_moments() {
        let (mut g, mut adam, _) = scene();
        reset_opacity(&mut g, &mut adam);
        for o in &g.opacity_logits {
            assert!(sigmoid(*o) <= 0.01 + 1e-6);
        }
        assert!((sigmoid(g.opacity_logits[3]) - 0.001).abs() < 1e-6);
        assert!(adam.group(Group::Opacity).m.iter().all(|&x| x == 0.0));
        assert!(adam.group(Group::Xyz).m.iter().any(|&x| x != 0.0));
    }
}
