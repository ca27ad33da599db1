//! The training loop: DreamGaussian's `train_step` schedule around a
//! [`FitBackend`].
//!
//! Step `i` (1-based) of `iters`:
//! 1. learning rates at `i` ([`LearningRates::at`]), active SH degree,
//!    render size ([`crate::schedule::render_size`]);
//! 2. `batch_size` views from a shuffled stack (3DGS's `viewpoint_stack`:
//!    every view once per pass, in random order), downscaled to the render
//!    size, composited over this step's background (white / black, or one
//!    of them at random per step with `random_background`);
//! 3. one backend step (render, loss, backward, Adam);
//! 4. when `density_start_iter ≤ i ≤ density_end_iter`: the step's
//!    gradients count towards densification; at multiples of
//!    `densification_interval` densify and prune; at multiples of
//!    `opacity_reset_interval` reset opacities;
//! 5. the progress callback, with the step's schedule ([`Progress::params`],
//!    [`Progress::view_ids`]); its `ControlFlow::Break` stops the fit after
//!    this step with [`FitError::Cancelled`].
//!
//! Everything random draws from generators seeded by `config.seed`, so a fit
//! is deterministic given the seed (and the build and machine).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use splatforge_render::RenderMode;
use splatforge_splat::Gaussians;

use crate::adam::AdamConfig;
use crate::backend::{BackendSettings, BatchView, FitBackend, StageTimings, StepParams};
use crate::config::FitConfig;
use crate::dataset::{View, Views};
use crate::densify::{DensifyParams, DensifyReport};
use crate::error::{FitError, Result};
use crate::init::Init;
use crate::loss::LossWeights;
use crate::rng::Rng;
use crate::schedule::{active_sh_degree, render_size, ExponLr, LearningRates};

/// Reported after every step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 1-based step just done.
    pub iteration: u32,
    pub iters: u32,
    /// The step's loss (mean over its views).
    pub loss: f64,
    /// The step's training PSNR (mean over its views), dB.
    pub psnr: f64,
    pub num_gaussians: usize,
    /// Size the step rendered at.
    pub render_size: (u32, u32),
    /// Densification done after this step, if any.
    pub densified: Option<DensifyReport>,
    /// Whether the opacities were reset after this step.
    pub opacity_reset: bool,
    /// The step's schedule: background, learning rates, SH degree, whether
    /// it counted towards densification.
    pub params: StepParams,
    /// The [`BatchView::id`]s of the step's views, in order.
    pub view_ids: Vec<usize>,
    pub elapsed: Duration,
}

/// Wall time of a fit, by stage.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    /// Everything, from initialisation to the returned Gaussians.
    pub total: Duration,
    /// Initial Gaussians and view preparation.
    pub setup: Duration,
    pub stages: StageTimings,
}

/// What [`fit`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    pub gaussians: Gaussians,
    pub iterations: u32,
    pub timings: Timings,
    /// The last step's loss and training PSNR.
    pub final_loss: f64,
    pub final_train_psnr: f64,
    /// Scene extent used for densification.
    pub extent: f32,
    /// `(step, report)` of every densification.
    pub densifications: Vec<(u32, DensifyReport)>,
}

/// The background colour of `config` for evaluation (and for training
/// without `random_background`).
pub fn background(config: &FitConfig) -> [f32; 3] {
    if config.white_background {
        [1.0; 3]
    } else {
        [0.0; 3]
    }
}

/// Render mode of `config`.
pub fn render_mode(config: &FitConfig) -> RenderMode {
    if config.antialiased {
        RenderMode::Antialiased
    } else {
        RenderMode::Classic
    }
}

/// Backend settings of `config`.
pub fn backend_settings(config: &FitConfig) -> BackendSettings {
    BackendSettings {
        weights: LossWeights {
            lambda_ssim: config.lambda_ssim,
            lambda_alpha: config.lambda_alpha,
        },
        mode: render_mode(config),
        adam: AdamConfig::default(),
        seed: config.seed,
    }
}

/// Fits Gaussians to `views` on the CPU ([`crate::fit_on`] the CPU).
/// `progress` is called after every step; `ControlFlow::Break` stops the
/// fit with [`FitError::Cancelled`].
pub fn fit(
    views: &Views,
    config: &FitConfig,
    init: Init,
    progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FitResult> {
    crate::device::fit_on(&candle_core::Device::Cpu, views, config, init, progress)
}

/// The loop over any backend (see the module docs).
pub fn fit_with<B: FitBackend + ?Sized>(
    backend: &mut B,
    views: &Views,
    config: &FitConfig,
    progress: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FitResult> {
    let start = Instant::now();
    config.validate()?;
    if views.is_empty() {
        return Err(FitError::Input("no training views".into()));
    }
    for (i, v) in views.views.iter().enumerate() {
        v.camera.validate(i)?;
        let n = v.camera.num_pixels();
        if v.rgb.len() != 3 * n || v.alpha.as_ref().is_some_and(|a| a.len() != n) {
            return Err(FitError::Input(format!(
                "view {i} ({}): image size does not match its camera",
                v.name
            )));
        }
    }
    let extent = config.extent.unwrap_or_else(|| views.camera_extent());
    let densify = DensifyParams {
        grad_threshold: config.densify_grad_threshold,
        percent_dense: config.percent_dense,
        extent,
        min_opacity: config.min_opacity,
        max_screen_size: config.max_screen_size,
    };
    let position_lr = ExponLr::position(config);
    let fixed_background = background(config);
    let mut order_rng = Rng::fork(config.seed, 2);
    let mut bg_rng = Rng::fork(config.seed, 3);
    let mut stack: Vec<usize> = Vec::new();
    let batch = config.batch_size.min(views.len());
    // Views per render size, made on first use.
    let mut levels: HashMap<Option<u32>, Vec<View>> = HashMap::new();
    let level_ids: HashMap<Option<u32>, usize> = std::iter::once(None)
        .chain(config.render_sizes.iter().map(|&s| Some(s)))
        .enumerate()
        .map(|(k, s)| (s, k))
        .collect();
    let setup = start.elapsed();

    let mut densifications = Vec::new();
    let mut last = Default::default();
    for i in 1..=config.iters {
        let lrs = LearningRates::at(config, &position_lr, i);
        let sh_degree = active_sh_degree(i, config.sh_degree, config.sh_degree_interval);
        let size = render_size(config, i);
        let level = levels.entry(size).or_insert_with(|| match size {
            None => views.views.clone(),
            Some(s) => views.views.iter().map(|v| v.downscaled(s)).collect(),
        });
        let bg = if config.random_background {
            if bg_rng.unit() < 0.5 {
                [1.0; 3]
            } else {
                [0.0; 3]
            }
        } else {
            fixed_background
        };
        let mut picked = Vec::with_capacity(batch);
        for _ in 0..batch {
            if stack.is_empty() {
                stack = (0..views.len()).collect();
                order_rng.shuffle(&mut stack);
            }
            picked.push(stack.pop().unwrap());
        }
        let targets: Vec<Vec<f32>> = picked.iter().map(|&k| level[k].composite(bg)).collect();
        let level_id = level_ids[&size];
        let batch_views: Vec<BatchView<'_>> = picked
            .iter()
            .zip(&targets)
            .map(|(&k, t)| BatchView {
                id: level_id * views.len() + k,
                camera: &level[k].camera,
                target_rgb: t,
                target_alpha: level[k].alpha.as_deref(),
            })
            .collect();
        let size_used = (
            level[picked[0]].camera.width,
            level[picked[0]].camera.height,
        );
        let in_window = i >= config.density_start_iter && i <= config.density_end_iter;
        let params = StepParams {
            background: bg,
            lrs,
            sh_degree,
            accumulate_stats: in_window,
        };
        last = backend.step(&batch_views, &params)?;
        let mut densified = None;
        let mut opacity_reset = false;
        if in_window {
            if i % config.densification_interval == 0 {
                let r = backend.densify_and_prune(&densify);
                densifications.push((i, r));
                densified = Some(r);
            }
            if config.opacity_reset_interval > 0 && i % config.opacity_reset_interval == 0 {
                backend.reset_opacity();
                opacity_reset = true;
            }
        }
        let report = Progress {
            iteration: i,
            iters: config.iters,
            loss: last.loss,
            psnr: last.psnr,
            num_gaussians: backend.num_gaussians(),
            render_size: size_used,
            densified,
            opacity_reset,
            params,
            view_ids: batch_views.iter().map(|v| v.id).collect(),
            elapsed: start.elapsed(),
        };
        if progress(&report).is_break() {
            return Err(FitError::Cancelled);
        }
    }
    if let Some(s) = backend.latest_stats() {
        last = s;
    }
    Ok(FitResult {
        gaussians: backend.gaussians(),
        iterations: config.iters,
        timings: Timings {
            total: start.elapsed(),
            setup,
            stages: backend.timings(),
        },
        final_loss: last.loss,
        final_train_psnr: last.psnr,
        extent,
        densifications,
    })
}
