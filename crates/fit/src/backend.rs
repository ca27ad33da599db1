//! The seam between the training loop and the per-iteration maths.
//!
//! [`crate::trainer`] owns the schedule (learning rates, SH degree, render
//! size, view order, backgrounds, when to densify) and talks to a
//! [`FitBackend`], which owns the Gaussians and the optimiser state and does
//! one step: render, loss and its image gradient, backward, statistics,
//! Adam. [`CpuBackend`] composes the CPU reference functions of this crate
//! and of `splatforge-render`; a GPU backend keeps everything on the device
//! and implements the same trait (its `step` need not synchronise: it may
//! return an earlier step's statistics, see [`FitBackend::latest_stats`];
//! `crate::cuda::CudaBackend` under the `cuda` feature).

use std::time::{Duration, Instant};

use rayon::prelude::*;
use splatforge_render::{
    pack_sh, rasterize_backward, rasterize_forward, Camera, GaussianParams, ImageGradients, RenderMode,
    RenderOptions,
};
use splatforge_splat::Gaussians;

use crate::adam::{Adam, AdamConfig, GaussianGrads};
use crate::densify::{densify_and_prune, reset_opacity, DensifyParams, DensifyReport, DensifyState};
use crate::error::{FitError, Result};
use crate::loss::{psnr, view_loss, LossWeights};
use crate::rng::Rng;
use crate::schedule::LearningRates;

/// One training view of a step, at the size to render.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// Stable identifier of this (view, render size) pair, so that a backend
    /// can cache uploads.
    pub id: usize,
    pub camera: &'a Camera,
    /// Target RGB over this step's background, `[y][x][rgb]`.
    pub target_rgb: &'a [f32],
    /// Target alpha, when the view has alpha.
    pub target_alpha: Option<&'a [f32]>,
}

/// What one step needs besides the views.
#[derive(Debug, Clone, Copy)]
pub struct StepParams {
    pub background: [f32; 3],
    pub lrs: LearningRates,
    /// Active SH degree for rendering.
    pub sh_degree: u8,
    /// Accumulate densification statistics from this step.
    pub accumulate_stats: bool,
}

/// Loss terms of a step, averaged over its views.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    pub loss: f64,
    pub l1: f64,
    pub ssim: f64,
    /// Mean over the views of each view's PSNR of the clamped render.
    pub psnr: f64,
}

/// Time spent in each stage, summed over the fit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTimings {
    pub forward: Duration,
    pub loss: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
    pub densify: Duration,
}

/// A fitting backend (see the module docs).
pub trait FitBackend {
    fn num_gaussians(&self) -> usize;
    /// One optimisation step over `views` (all rendered in one call).
    fn step(&mut self, views: &[BatchView<'_>], params: &StepParams) -> Result<StepStats>;
    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport;
    fn reset_opacity(&mut self);
    /// The current Gaussians (a download, for a GPU backend).
    fn gaussians(&self) -> Gaussians;
    fn timings(&self) -> StageTimings;
    /// The latest step's statistics when [`step`](Self::step) returned
    /// stale ones (a GPU backend reading them back at a throttled rate);
    /// the trainer calls it once, after the last step. `None`: `step`'s were
    /// current.
    fn latest_stats(&mut self) -> Option<StepStats> {
        None
    }
}

/// Settings a backend needs from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendSettings {
    pub weights: LossWeights,
    pub mode: RenderMode,
    pub adam: AdamConfig,
    pub seed: u64,
}

/// The CPU reference backend.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    g: Gaussians,
    adam: Adam,
    stats: DensifyState,
    rng: Rng,
    settings: BackendSettings,
    timings: StageTimings,
}

impl CpuBackend {
    pub fn new(g: Gaussians, settings: BackendSettings) -> Result<Self> {
        g.check_consistent()
            .map_err(|e| FitError::Input(format!("initial Gaussians: {e}")))?;
        Ok(CpuBackend {
            adam: Adam::for_gaussians(&g, settings.adam),
            stats: DensifyState::new(g.len()),
            rng: Rng::fork(settings.seed, 4),
            g,
            settings,
            timings: StageTimings::default(),
        })
    }

    /// The Gaussians being optimised.
    pub fn gaussians_ref(&self) -> &Gaussians {
        &self.g
    }

    pub fn adam(&self) -> &Adam {
        &self.adam
    }
}

impl FitBackend for CpuBackend {
    fn num_gaussians(&self) -> usize {
        self.g.len()
    }

    fn step(&mut self, views: &[BatchView<'_>], p: &StepParams) -> Result<StepStats> {
        if views.is_empty() {
            return Err(FitError::Input("a step needs at least one view".into()));
        }
        let t0 = Instant::now();
        let sh = pack_sh(&self.g);
        let params = GaussianParams::from_gaussians(&self.g, &sh);
        let cameras: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
        let opts = RenderOptions {
            background: p.background,
            mode: self.settings.mode,
            sh_degree: Some(p.sh_degree.min(self.g.sh_degree)),
            ..Default::default()
        };
        let (images, state) = rasterize_forward(&params, &cameras, &opts)?;
        let t1 = Instant::now();

        let scale = 1.0 / views.len() as f32;
        let weights = self.settings.weights;
        let losses: Vec<_> = images
            .par_iter()
            .zip(views)
            .map(|(img, v)| {
                view_loss(
                    &img.rgb,
                    &img.alpha,
                    v.target_rgb,
                    v.target_alpha,
                    img.width as usize,
                    img.height as usize,
                    &weights,
                    scale,
                )
            })
            .collect();
        let image_grads: Vec<ImageGradients<'_, f32>> = losses
            .iter()
            .map(|(_, g)| ImageGradients {
                rgb: Some(&g.rgb),
                alpha: g.alpha.as_deref(),
                depth: None,
            })
            .collect();
        let t2 = Instant::now();

        let grads = rasterize_backward(&params, &cameras, &opts, &state, &image_grads)?;
        drop(state);
        let t3 = Instant::now();

        if p.accumulate_stats {
            let (w, h) = if views.iter().all(|v| v.camera.width == cameras[0].width && v.camera.height == cameras[0].height) {
                (cameras[0].width, cameras[0].height)
            } else {
                // Mixed sizes: use the mean side (an approximation).
                let n = cameras.len() as f64;
                let w = cameras.iter().map(|c| c.width as f64).sum::<f64>() / n;
                let h = cameras.iter().map(|c| c.height as f64).sum::<f64>() / n;
                (w.round() as u32, h.round() as u32)
            };
            self.stats.accumulate(&grads.stats, w, h, views.len());
        }
        let gg = GaussianGrads::from_render(&grads, self.g.sh_degree);
        drop(grads);
        self.adam.step(&mut self.g, &gg, &p.lrs);
        let t4 = Instant::now();

        self.timings.forward += t1 - t0;
        self.timings.loss += t2 - t1;
        self.timings.backward += t3 - t2;
        self.timings.optimizer += t4 - t3;

        let n = losses.len() as f64;
        let mut out = StepStats::default();
        for (l, _) in &losses {
            out.loss += l.loss / n;
            out.l1 += l.l1 / n;
            out.ssim += l.ssim / n;
            out.psnr += psnr(l.mse) / n;
        }
        Ok(out)
    }

    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport {
        let t0 = Instant::now();
        let r = densify_and_prune(&mut self.g, &mut self.adam, &mut self.stats, params, &mut self.rng);
        self.timings.densify += t0.elapsed();
        r
    }

    fn reset_opacity(&mut self) {
        reset_opacity(&mut self.g, &mut self.adam);
    }

    fn gaussians(&self) -> Gaussians {
        self.g.clone()
    }

    fn timings(&self) -> StageTimings {
        self.timings
    }
}
