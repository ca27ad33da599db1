//! Score-distillation (SDS) refinement with MVDream guidance, DreamGaussian
//! semantics (`guidance/mvdream_utils.py`, `main.py` of the text-to-3D
//! path), after the fit to the generated views. The guidance itself is the
//! diffusion crate's ([`splatforge_diffusion::sds`]: differentiable VAE
//! encoder, CFG, `grad = ε̂ − ε`, NaNs → 0); this module drives it.
//!
//! One step:
//! 1. `batch_size` random orbits: elevation uniform in `elevation_range`,
//!    azimuth uniform in [−180°, 180°); `n_views` cameras `360°/n_views`
//!    apart per orbit at the views' radius and field of view, rendered at
//!    `resolution`² over white or black (at random with
//!    `random_background`, one background for the step);
//! 2. `latents = 0.18215 · E(2·img − 1)` (the posterior mean) through the
//!    VAE encoder, candle's autograd tracking the rendered images;
//! 3. `t` ([`sds_timestep`]): with `timestep_annealing`, DreamGaussian's
//!    `round(T·(1 − step/iters)^annealing_eta)` clipped to
//!    `[min_step·T, max_step·T]` (η = 1 is DreamGaussian's linear schedule);
//!    otherwise uniform in that range. Seeded noise `ε`,
//!    `x_t = √ᾱ_t·latents + √(1−ᾱ_t)·ε`;
//! 4. `ε̂` from MVDream's UNet with the orbit's camera embedding and
//!    classifier-free guidance against the negative prompt (no gradient);
//! 5. the loss `0.5·‖latents − (latents − grad).detach()‖² / B` with
//!    `grad = ε̂ − ε`, times `lambda_sds`, backpropagated through the
//!    encoder to the images;
//! 6. with `lambda_views > 0`, the fit's loss to the generated views
//!    (L1 + SSIM + alpha, the fit's weights) is added, rendered in the same
//!    call, so the refinement stays anchored to them;
//! 7. the rasterizer's backward pass and one Adam step at the fit's final
//!    learning rates times `lr_scale` (fresh Adam moments; no densification);
//!    with `from_scratch` (no fit before), at the fit's schedule for this
//!    step instead, as DreamGaussian's `update_learning_rate(step)`.
//!
//! Differences from DreamGaussian: the encoder's posterior *mean* is used
//! instead of a sample (deterministic), renders are made at the SDS
//! resolution directly instead of at 128/256/512 by progress and resized to
//! 256², no densification, one background per step instead of per orbit,
//! and by default SDS refines a fit instead of training from the random
//! ball (`from_scratch` trains from the ball).
//!
//! Where it runs: on the fit's backend, one
//! [`FitBackend::guided_step`] per step (steps 1, 6 and 7 above), with
//! steps 2–5 as its guide. With the fitting engine's CUDA backend the
//! Gaussians stay on the GPU from the fit on, and the renders and their
//! gradient pass between the rasterizer and the diffusion model as device
//! tensors; the CPU backend is the reference and gives the same result as
//! rendering, backpropagating and stepping Adam by hand.

use std::ops::ControlFlow;

use candle_core::{DType, Tensor, Var};
use splatforge_diffusion::mvdream::camera;
use splatforge_diffusion::{
    sds_gradient, DiffusionError, MvDreamPipeline, MvDreamRequest, SdsConditioning, SdsOptions,
    SdsTimestep, SdsWeighting,
};
use splatforge_fit::backend::BatchView;
use splatforge_fit::schedule::{ExponLr, LearningRates};
use splatforge_fit::{FitBackend, FitConfig, FitError, GuidedParams, Views};
use splatforge_render::Camera;
use splatforge_splat::rng::SplitMix64;

use crate::config::{DiffusionConfig, SdsConfig};

/// The SDS timestep of 1-based `step` of `iters` (see the module docs);
/// `u` is a uniform draw in [0, 1) for the non-annealed case.
pub fn sds_timestep(
    cfg: &SdsConfig,
    step: u32,
    iters: u32,
    num_train_timesteps: usize,
    u: f64,
) -> usize {
    let t_max = num_train_timesteps as f64;
    let lo = (cfg.min_step * t_max).round() as usize;
    let hi = ((cfg.max_step * t_max).round() as usize)
        .max(lo)
        .min(num_train_timesteps - 1);
    if cfg.timestep_annealing {
        let r = (step as f64 / iters.max(1) as f64).min(1.0);
        let t = (t_max * (1.0 - r).powf(cfg.annealing_eta)).round() as usize;
        t.clamp(lo, hi)
    } else {
        (lo + (u * (hi - lo + 1) as f64) as usize).min(hi)
    }
}

/// What the SDS stage reports per step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdsStep {
    pub step: u32,
    pub iters: u32,
    pub timestep: usize,
    /// DreamGaussian's SDS loss value, `0.5·‖grad‖²/B`.
    pub sds_loss: f64,
    /// PSNR against the generated views (when `lambda_views > 0`), else NaN.
    /// On a GPU backend, the latest the backend has read back (it reads its
    /// loss statistics back every few steps, as during the fit).
    pub views_psnr: f64,
}

/// Why SDS stopped.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// The fitting backend failed (render, backward, device).
    #[error(transparent)]
    Fit(FitError),
    #[error("{0}")]
    Other(String),
}

impl From<FitError> for SdsError {
    /// A failure of the guide (this module's SDS gradient) comes back from
    /// the backend boxed: unbox it to the error it was.
    fn from(e: FitError) -> Self {
        match e {
            FitError::Guide(inner) => match inner.downcast::<SdsError>() {
                Ok(sds) => *sds,
                Err(other) => SdsError::Other(other.to_string()),
            },
            e => SdsError::Fit(e),
        }
    }
}

/// Everything SDS needs besides the Gaussians.
pub struct SdsInputs<'a> {
    pub pipe: &'a MvDreamPipeline,
    pub sds: &'a SdsConfig,
    pub diffusion: &'a DiffusionConfig,
    pub fit: &'a FitConfig,
    /// The generated views (for `lambda_views`).
    pub views: &'a Views,
    pub prompt: &'a str,
    pub seed: u64,
}

/// Steps 2–5 of the module docs: the gradient of `lambda_sds` times the SDS
/// loss with respect to `renders` (`[n, 3, H, W]` in [0, 1], any device),
/// on the diffusion model's device, and the SDS loss (a scalar tensor
/// without graph: reading it waits for the device, which the caller does
/// once the whole step is enqueued).
fn sds_image_gradient(
    pipe: &MvDreamPipeline,
    cond: &SdsConditioning,
    renders: &Tensor,
    t: usize,
    noise_seed: u64,
    opts: &SdsOptions,
    lambda_sds: f32,
) -> Result<(Tensor, Tensor), SdsError> {
    let x = Var::from_tensor(&renders.to_device(&pipe.device)?)?;
    let latents = pipe.encode_images(x.as_tensor())?;
    let out = sds_gradient(
        pipe,
        &latents,
        cond,
        SdsTimestep::Fixed(t),
        noise_seed,
        opts,
    )?;
    let grads = (&out.loss * lambda_sds as f64)?.backward()?;
    let dx = grads
        .get(x.as_tensor())
        .ok_or_else(|| SdsError::Other("no gradient reached the rendered images".into()))?;
    Ok((dx.clone(), out.loss.detach()))
}

/// Runs `sds.sds_iters` refinement steps on the Gaussians of `backend` (the
/// one that ran the fit; see the module docs), with fresh Adam moments.
/// `progress` is called after every step; its `ControlFlow::Break` stops
/// the refinement there with [`SdsError::Cancelled`].
/// One orbit's `(elevation, azimuth)` in degrees: elevation uniform in
/// `elevation_range`, azimuth uniform in [−180°, 180°), drawn in that order.
fn random_orbit(cfg: &SdsConfig, rng: &mut SplitMix64) -> (f64, f64) {
    let elevation =
        cfg.elevation_range[0] + (cfg.elevation_range[1] - cfg.elevation_range[0]) * rng.unit();
    (elevation, -180.0 + 360.0 * rng.unit())
}

pub fn refine(
    backend: &mut dyn FitBackend,
    inp: &SdsInputs<'_>,
    progress: &mut dyn FnMut(&SdsStep) -> ControlFlow<()>,
) -> Result<(), SdsError> {
    let cfg = inp.sds;
    let iters = cfg.sds_iters;
    if iters == 0 {
        return Ok(());
    }
    let pipe = inp.pipe;
    let device = &pipe.device;
    let nf = inp.diffusion.n_views;
    let size = cfg.resolution;
    pipe.latent_size(size)?;
    let num_train = pipe.scheduler.num_train_timesteps;
    let t_lo = (cfg.min_step * num_train as f64).round() as usize;
    let sds_opts = SdsOptions {
        guidance_scale: cfg.guidance_scale,
        min_step: t_lo,
        max_step: ((cfg.max_step * num_train as f64).round() as usize).max(t_lo),
        weighting: SdsWeighting::Unit,
        num_frames: nf,
    };
    // Text conditioning once; the cameras change every step.
    let mut cond = pipe.sds_conditioning(&MvDreamRequest {
        prompt: inp.prompt.to_string(),
        prompt_suffix: inp.diffusion.prompt_suffix.clone(),
        negative_prompt: inp.diffusion.negative_prompt.clone(),
        num_frames: nf,
        ..Default::default()
    })?;
    let uses_camera = cond.camera.is_some();

    let views = &inp.views.views;
    let use_views = cfg.lambda_views > 0.0 && !views.is_empty();
    let view_grad_scale = if use_views {
        cfg.lambda_views / views.len() as f32
    } else {
        0.0
    };
    let position = ExponLr::position(inp.fit);
    let k = cfg.lr_scale;
    // After a fit: its final rates; from scratch: its schedule at the SDS step.
    let lrs_at = |step: u32| {
        let base = LearningRates::at(inp.fit, &position, step);
        LearningRates {
            xyz: base.xyz * k,
            f_dc: base.f_dc * k,
            f_rest: base.f_rest * k,
            opacity: base.opacity * k,
            scaling: base.scaling * k,
            rotation: base.rotation * k,
        }
    };
    let fitted_lrs = lrs_at(inp.fit.iters);
    let orbits = cfg.batch_size.max(1);
    backend.reset_optimizer();
    let mut rng = SplitMix64::new(inp.seed ^ 0x5344_5320_7265_666e); // "SDS refn"
                                                                     // The views over each background, made on first use.
    let mut composites: Vec<([f32; 3], Vec<Vec<f32>>)> = Vec::new();

    for step in 1..=iters {
        let first_orbit = random_orbit(cfg, &mut rng);
        let bg = if cfg.random_background && rng.unit() < 0.5 {
            [0.0; 3]
        } else {
            [1.0; 3]
        };
        let t = sds_timestep(cfg, step, iters, num_train, rng.unit());
        let noise_seed = rng.next_u64();
        // The first orbit's draws come first, so that one orbit a step
        // draws as before `batch_size` existed.
        let mut orbit_angles = vec![first_orbit];
        for _ in 1..orbits {
            orbit_angles.push(random_orbit(cfg, &mut rng));
        }

        let mut cameras: Vec<Camera> = Vec::with_capacity(orbits * nf);
        let mut embeddings: Vec<f32> = Vec::new();
        for &(e, a) in &orbit_angles {
            cameras.extend(crate::cameras::render_cameras(
                nf,
                e,
                a,
                360.0,
                inp.diffusion.camera_radius,
                inp.diffusion.fovy,
                size as u32,
            ));
            if uses_camera {
                let emb = camera::camera_embeddings(nf, e, a, 360.0);
                embeddings.extend(emb.iter().flatten().copied());
            }
        }
        if uses_camera {
            cond.camera = Some(Tensor::from_vec(embeddings, (orbits * nf, 16), device)?);
        }
        // The fit's loss to the generated views, in the same backward pass.
        let batch: Vec<BatchView<'_>> = if use_views {
            let at = match composites.iter().position(|(b, _)| *b == bg) {
                Some(i) => i,
                None => {
                    composites.push((bg, views.iter().map(|v| v.composite(bg)).collect()));
                    composites.len() - 1
                }
            };
            // Ids as the fit's trainer gives the full-size views (same
            // images), so that a backend reuses the uploads of the fit.
            views
                .iter()
                .zip(&composites[at].1)
                .enumerate()
                .map(|(id, (v, target))| BatchView {
                    id,
                    camera: &v.camera,
                    target_rgb: target,
                    target_alpha: v.alpha.as_deref(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let params = GuidedParams {
            background: bg,
            lrs: if cfg.from_scratch {
                lrs_at(step - 1)
            } else {
                fitted_lrs
            },
            // Every stored SH degree: the Gaussians were made with the
            // fit's, and SDS renders them as the fit left them.
            sh_degree: inp.fit.sh_degree,
            view_grad_scale,
        };
        let mut loss = None;
        let stats = backend.guided_step(&cameras, &batch, &params, &mut |renders: &Tensor| {
            let (grad, l) = sds_image_gradient(
                pipe,
                &cond,
                renders,
                t,
                noise_seed,
                &sds_opts,
                cfg.lambda_sds,
            )?;
            loss = Some(l);
            Ok(grad)
        })?;
        let sds_loss = loss
            .ok_or_else(|| {
                SdsError::Other("the fitting backend did not call the SDS guidance".into())
            })?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let views_psnr = match stats {
            Some(s) if use_views => s.psnr,
            _ => f64::NAN,
        };
        if progress(&SdsStep {
            step,
            iters,
            timestep: t,
            sds_loss,
            views_psnr,
        })
        .is_break()
        {
            return Err(SdsError::Cancelled);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annealed_timesteps_follow_dreamgaussian() {
        let cfg = SdsConfig::default();
        // t = round(1000·(1 − step/iters)) clipped to [20, 980].
        assert_eq!(sds_timestep(&cfg, 1, 1000, 1000, 0.0), 980);
        assert_eq!(sds_timestep(&cfg, 500, 1000, 1000, 0.0), 500);
        assert_eq!(sds_timestep(&cfg, 990, 1000, 1000, 0.0), 20);
        assert_eq!(sds_timestep(&cfg, 1000, 1000, 1000, 0.0), 20);
        // η > 1 reaches small t sooner.
        let steep = SdsConfig {
            annealing_eta: 2.0,
            ..SdsConfig::default()
        };
        assert_eq!(sds_timestep(&steep, 500, 1000, 1000, 0.0), 250);
        let capped = SdsConfig {
            max_step: 0.5,
            ..SdsConfig::default()
        };
        assert_eq!(sds_timestep(&capped, 1, 100, 1000, 0.0), 500);
        // Without annealing: uniform over the range.
        let flat = SdsConfig {
            timestep_annealing: false,
            ..SdsConfig::default()
        };
        assert_eq!(sds_timestep(&flat, 1, 10, 1000, 0.0), 20);
        assert_eq!(sds_timestep(&flat, 1, 10, 1000, 0.999_999), 980);
    }
}
