//! Adam, one state per parameter group (PyTorch's `torch.optim.Adam` with
//! one tensor per group, as DreamGaussian's `training_setup` builds it), with
//! state that follows the Gaussians through clone, split and prune exactly as
//! 3DGS's `cat_tensors_to_optimizer` / `_prune_optimizer` /
//! `replace_tensor_to_optimizer` do: new rows start with zero moments, the
//! step count is the group's, pruned rows drop their moments, and an opacity
//! reset zeroes the opacity group's moments.
//!
//! The update is [`adam_update`], a pure function over flat slices: the
//! "kernel" a GPU backend replaces with its fused Adam.

use rayon::prelude::*;
use splatforge_render::{split_sh, Gradients};
use splatforge_splat::Gaussians;

use crate::schedule::LearningRates;

/// Adam's hyper-parameters (DreamGaussian: betas 0.9/0.999, eps 1e-15).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-15,
        }
    }
}

/// The per-step constants of [`adam_update`]: `(lr / (1−β₁ᵗ), √(1−β₂ᵗ))`,
/// computed in f64 and rounded to f32 (the GPU backend passes the same
/// values to its fused kernel).
pub fn adam_step_constants(lr: f32, step: u32, config: &AdamConfig) -> (f32, f32) {
    let t = step.max(1) as i32;
    let bc1 = 1.0 - (config.beta1 as f64).powi(t);
    let bc2_sqrt = (1.0 - (config.beta2 as f64).powi(t)).sqrt();
    ((lr as f64 / bc1) as f32, bc2_sqrt as f32)
}

/// One Adam step over flat slices, PyTorch's arithmetic (`step` ≥ 1 is the
/// step count *after* incrementing):
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + eps)`.
pub fn adam_update(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f32,
    step: u32,
    config: &AdamConfig,
) {
    assert!(params.len() == grads.len() && m.len() == params.len() && v.len() == params.len());
    let (step_size, bc2_sqrt) = adam_step_constants(lr, step, config);
    let (b1, b2, eps) = (config.beta1, config.beta2, config.eps);
    let kernel = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for i in 0..p.len() {
            let gi = g[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = v[i].sqrt() / bc2_sqrt + eps;
            p[i] -= step_size * m[i] / denom;
        }
    };
    const CHUNK: usize = 1 << 15;
    if params.len() <= CHUNK {
        kernel(params, grads, m, v);
    } else {
        params
            .par_chunks_mut(CHUNK)
            .zip(grads.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| kernel(p, g, m, v));
    }
}

/// The parameter groups, named as in DreamGaussian's `training_setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Xyz,
    FDc,
    FRest,
    Opacity,
    Scaling,
    Rotation,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::Xyz,
        Group::FDc,
        Group::FRest,
        Group::Opacity,
        Group::Scaling,
        Group::Rotation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Group::Xyz => "xyz",
            Group::FDc => "f_dc",
            Group::FRest => "f_rest",
            Group::Opacity => "opacity",
            Group::Scaling => "scaling",
            Group::Rotation => "rotation",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Floats per Gaussian in this group (`rest` = SH-rest floats per Gaussian).
    pub fn width(self, rest: usize) -> usize {
        match self {
            Group::Xyz | Group::FDc | Group::Scaling => 3,
            Group::FRest => rest,
            Group::Opacity => 1,
            Group::Rotation => 4,
        }
    }

    /// The learning rate of this group.
    pub fn lr(self, lrs: &LearningRates) -> f32 {
        match self {
            Group::Xyz => lrs.xyz,
            Group::FDc => lrs.f_dc,
            Group::FRest => lrs.f_rest,
            Group::Opacity => lrs.opacity,
            Group::Scaling => lrs.scaling,
            Group::Rotation => lrs.rotation,
        }
    }
}

/// First and second moments of one group, `width` floats per Gaussian.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub width: usize,
    /// Steps taken by this group (PyTorch's per-parameter `step`).
    pub step: u32,
}

impl Moments {
    pub fn new(rows: usize, width: usize) -> Self {
        Moments {
            m: vec![0.0; rows * width],
            v: vec![0.0; rows * width],
            width,
            step: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.m.len().checked_div(self.width).unwrap_or(0)
    }

    /// The moments of Gaussian `i`: `(m, v)`.
    pub fn row(&self, i: usize) -> (&[f32], &[f32]) {
        let w = self.width;
        (&self.m[i * w..(i + 1) * w], &self.v[i * w..(i + 1) * w])
    }

    fn extend_zeros(&mut self, rows: usize) {
        self.m.resize(self.m.len() + rows * self.width, 0.0);
        self.v.resize(self.v.len() + rows * self.width, 0.0);
    }

    fn retain(&mut self, keep: &[bool]) {
        let w = self.width;
        if w == 0 {
            return;
        }
        retain_rows(&mut self.m, w, keep);
        retain_rows(&mut self.v, w, keep);
    }

    fn reset(&mut self) {
        self.m.iter_mut().for_each(|x| *x = 0.0);
        self.v.iter_mut().for_each(|x| *x = 0.0);
    }

    /// Increments the step count and updates `params` (same layout).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32, config: &AdamConfig) {
        self.step += 1;
        adam_update(
            params,
            grads,
            &mut self.m,
            &mut self.v,
            lr,
            self.step,
            config,
        );
    }
}

/// Keeps the rows (`width` floats each) whose `keep` entry is true, in order.
pub(crate) fn retain_rows(data: &mut Vec<f32>, width: usize, keep: &[bool]) {
    debug_assert_eq!(data.len(), keep.len() * width);
    let mut w = 0;
    for (r, &k) in keep.iter().enumerate() {
        if k {
            if w != r {
                data.copy_within(r * width..(r + 1) * width, w * width);
            }
            w += 1;
        }
    }
    data.truncate(w * width);
}

/// Gradients in the layout of [`Gaussians`] (the parameter groups).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GaussianGrads {
    pub means: Vec<[f32; 3]>,
    pub sh_dc: Vec<[f32; 3]>,
    pub sh_rest: Vec<f32>,
    pub opacity_logits: Vec<f32>,
    pub log_scales: Vec<[f32; 3]>,
    pub rotations: Vec<[f32; 4]>,
}

impl GaussianGrads {
    /// Splits the rasterizer's packed SH gradient into DC and rest.
    pub fn from_render(g: &Gradients<f32>, sh_degree: u8) -> Self {
        let (sh_dc, sh_rest) = split_sh(&g.sh, sh_degree);
        GaussianGrads {
            means: g.means.clone(),
            sh_dc,
            sh_rest,
            opacity_logits: g.opacity_logits.clone(),
            log_scales: g.log_scales.clone(),
            rotations: g.quats.clone(),
        }
    }
}

/// Adam over the six groups of a [`Gaussians`].
#[derive(Debug, Clone, PartialEq)]
pub struct Adam {
    pub config: AdamConfig,
    groups: [Moments; 6],
}

impl Adam {
    /// Zero state for `rows` Gaussians with `rest` SH-rest floats each.
    pub fn new(rows: usize, rest: usize, config: AdamConfig) -> Self {
        Adam {
            config,
            groups: Group::ALL.map(|g| Moments::new(rows, g.width(rest))),
        }
    }

    /// Zero state shaped for `g`.
    pub fn for_gaussians(g: &Gaussians, config: AdamConfig) -> Self {
        Adam::new(g.len(), g.rest_coeffs() * 3, config)
    }

    pub fn group(&self, g: Group) -> &Moments {
        &self.groups[g.index()]
    }

    pub fn group_mut(&mut self, g: Group) -> &mut Moments {
        &mut self.groups[g.index()]
    }

    /// Number of Gaussians the state covers.
    pub fn rows(&self) -> usize {
        self.groups[0].rows()
    }

    /// Appends zero moments for `rows` new Gaussians (clone/split).
    pub fn extend_zeros(&mut self, rows: usize) {
        self.groups.iter_mut().for_each(|m| m.extend_zeros(rows));
    }

    /// Keeps the state of the Gaussians whose `keep` entry is true (prune).
    pub fn retain(&mut self, keep: &[bool]) {
        self.groups.iter_mut().for_each(|m| m.retain(keep));
    }

    /// Zeroes one group's moments (3DGS's `replace_tensor_to_optimizer`).
    pub fn reset_group(&mut self, g: Group) {
        self.groups[g.index()].reset();
    }

    /// One Adam step of every group.
    pub fn step(&mut self, g: &mut Gaussians, grads: &GaussianGrads, lrs: &LearningRates) {
        let config = self.config;
        self.groups[Group::Xyz.index()].step(
            g.means.as_flattened_mut(),
            grads.means.as_flattened(),
            lrs.xyz,
            &config,
        );
        self.groups[Group::FDc.index()].step(
            g.sh_dc.as_flattened_mut(),
            grads.sh_dc.as_flattened(),
            lrs.f_dc,
            &config,
        );
        self.groups[Group::FRest.index()].step(&mut g.sh_rest, &grads.sh_rest, lrs.f_rest, &config);
        self.groups[Group::Opacity.index()].step(
            &mut g.opacity_logits,
            &grads.opacity_logits,
            lrs.opacity,
            &config,
        );
        self.groups[Group::Scaling.index()].step(
            g.log_scales.as_flattened_mut(),
            grads.log_scales.as_flattened(),
            lrs.scaling,
            &config,
        );
        self.groups[Group::Rotation.index()].step(
            g.rotations.as_flattened_mut(),
            grads.rotations.as_flattened(),
            lrs.rotation,
            &config,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_hand_computation() {
        // Two steps on p = [1, -2] with g = [0.5, -0.1] then [0.2, 0.3],
        // lr 0.1, betas 0.9/0.999, eps 1e-8; computed by hand in f64.
        let c = AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut p = vec![1.0f32, -2.0];
        let mut m = vec![0.0f32; 2];
        let mut v = vec![0.0f32; 2];
        adam_update(&mut p, &[0.5, -0.1], &mut m, &mut v, 0.1, 1, &c);
        // Step 1: m = 0.1 g, v = 0.001 g², m̂ = g, v̂ = g² → p -= lr · sign(g).
        assert!((p[0] - 0.9).abs() < 1e-6, "{p:?}");
        assert!((p[1] - -1.9).abs() < 1e-6, "{p:?}");
        assert!((m[0] - 0.05).abs() < 1e-7 && (v[0] - 0.00025).abs() < 1e-4 * 0.00025);
        adam_update(&mut p, &[0.2, 0.3], &mut m, &mut v, 0.1, 2, &c);
        // Step 2 by hand.
        let expect = |p0: f64, g1: f64, g2: f64| {
            let m = 0.9 * (0.1 * g1) + 0.1 * g2;
            let v = 0.999 * (0.001 * g1 * g1) + 0.001 * g2 * g2;
            let mhat = m / (1.0 - 0.81);
            let vhat = v / (1.0 - 0.999f64.powi(2));
            p0 - 0.1 * mhat / (vhat.sqrt() + 1e-8)
        };
        assert!((p[0] as f64 - expect(0.9, 0.5, 0.2)).abs() < 1e-6, "{p:?}");
        assert!(
            (p[1] as f64 - expect(-1.9, -0.1, 0.3)).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn zero_gradient_with_tiny_eps_does_not_move_fresh_rows() {
        let c = AdamConfig::default();
        let mut p = vec![3.0f32; 4];
        let mut m = vec![0.0f32; 4];
        let mut v = vec![0.0f32; 4];
        adam_update(&mut p, &[0.0; 4], &mut m, &mut v, 1.0, 5, &c);
        assert_eq!(p, vec![3.0; 4]);
    }

    #[test]
    fn state_follows_rows() {
        let mut a = Adam::new(3, 9, AdamConfig::default());
        for (i, x) in a.group_mut(Group::Xyz).m.iter_mut().enumerate() {
            *x = i as f32;
        }
        a.group_mut(Group::FRest).v[9 * 2] = 7.0;
        a.extend_zeros(2);
        assert_eq!(a.rows(), 5);
        assert_eq!(a.group(Group::FRest).rows(), 5);
        assert_eq!(a.group(Group::Xyz).row(4).0, &[0.0, 0.0, 0.0]);
        a.retain(&[false, true, true, false, true]);
        assert_eq!(a.rows(), 3);
        assert_eq!(a.group(Group::Xyz).row(0).0, &[3.0, 4.0, 5.0]);
        assert_eq!(a.group(Group::FRest).row(1).1[0], 7.0);
        a.reset_group(Group::Xyz);
        assert!(a.group(Group::Xyz).m.iter().all(|&x| x == 0.0));
    }
}
