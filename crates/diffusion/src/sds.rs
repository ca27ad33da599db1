//! Score distillation sampling (SDS) with MVDream, as DreamGaussian does it
//! (`guidance/mvdream_utils.py`, `train_step`):
//!
//! 1. latents `z = E(image)` through the VAE encoder, with gradients
//!    ([`MvDreamPipeline::encode_images`]);
//! 2. a timestep: annealed `t = round((1 − step/iters)·T)` clipped to
//!    `[min_step, max_step]` (DreamGaussian passes `step_ratio`), or a
//!    uniformly random integer in `[min_step, max_step]` shared by the views
//!    of one object; `T = 1000`, `min_step = 20`, `max_step = 980`;
//! 3. noise `ε`, `z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε`, one UNet pass on the doubled
//!    batch (positive prompt, then negative), no gradient through the UNet;
//! 4. `ε̂ = ε̂_neg + s·(ε̂_pos − ε̂_neg)`, `grad = w(t)·(ε̂ − ε)` (NaNs → 0),
//!    with `w(t) = 1` (DreamGaussian's MVDream guidance) or `1 − ᾱ_t`
//!    (its Stable Diffusion guidance);
//! 5. `loss = ½·Σ(z − sg(z − grad))² / B`, whose gradient with respect to `z`
//!    is `grad / B`: `loss.backward()` carries it through the encoder to the
//!    image.

use candle_core::{DType, Tensor};

use crate::error::{DiffusionError, Result};
use crate::mvdream::{MvDreamPipeline, MvDreamRequest};
use splatforge_nn::rng::{self, SplitMix64};

/// How the SDS timestep is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdsTimestep {
    /// DreamGaussian's annealing: `t = round((1 − step/iters)·T)`, clipped to `[min_step, max_step]`.
    Anneal { step: usize, iters: usize },
    /// Uniform integer in `[min_step, max_step]`, one per object (its `num_frames` views share it).
    Random { seed: u64 },
    /// This timestep for every item (clipped to `[0, T−1]`).
    Fixed(usize),
}

/// The weighting `w(t)` of the SDS gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdsWeighting {
    /// `w = 1` (DreamGaussian's MVDream guidance).
    Unit,
    /// `w = 1 − ᾱ_t` (DreamGaussian's / DreamFusion's Stable Diffusion guidance).
    OneMinusAlphaBar,
}

/// SDS settings. `Default` is DreamGaussian's MVDream guidance.
#[derive(Debug, Clone, PartialEq)]
pub struct SdsOptions {
    /// CFG scale (DreamGaussian: 50 for MVDream).
    pub guidance_scale: f64,
    pub min_step: usize,
    pub max_step: usize,
    pub weighting: SdsWeighting,
    /// Views per object (the UNet's joint attention group).
    pub num_frames: usize,
}

impl Default for SdsOptions {
    fn default() -> Self {
        Self {
            guidance_scale: 50.0,
            min_step: 20,
            max_step: 980,
            weighting: SdsWeighting::Unit,
            num_frames: 4,
        }
    }
}

/// The UNet's conditioning for SDS: prompt embeddings and per-item cameras.
#[derive(Debug, Clone)]
pub struct SdsConditioning {
    /// `[1, T, C]` text embeddings of the prompt.
    pub positive: Tensor,
    /// `[1, T, C]` text embeddings of the negative prompt.
    pub negative: Tensor,
    /// `[num_frames, 16]` cameras of one object's views (repeated for every
    /// object of the batch), or `None` for a UNet without camera input.
    pub camera: Option<Tensor>,
}

/// What [`sds_gradient`] returns.
#[derive(Debug, Clone)]
pub struct SdsOutput {
    /// `w(t)·(ε̂ − ε)`, `[B, C, h, w]` f32, no graph.
    pub grad: Tensor,
    /// Scalar f32 `½·Σ(z − sg(z − grad))² / B`; its backward gives `grad / B` on the latents.
    pub loss: Tensor,
    /// The timestep of each item.
    pub timesteps: Vec<usize>,
    /// The noise `ε` that was added, `[B, C, h, w]` f32.
    pub noise: Tensor,
    /// The guided prediction `ε̂`, `[B, C, h, w]` f32.
    pub noise_pred: Tensor,
}

/// DreamGaussian's annealed timestep `round((1 − step/iters)·T)` clipped to `[min, max]`.
pub fn annealed_timestep(
    step: usize,
    iters: usize,
    num_train_timesteps: usize,
    min_step: usize,
    max_step: usize,
) -> usize {
    let ratio = if iters == 0 {
        1.0
    } else {
        step as f64 / iters as f64
    };
    let t = ((1.0 - ratio) * num_train_timesteps as f64).round();
    (t.max(0.0) as usize).clamp(min_step, max_step)
}

/// Timesteps for `b` items in groups of `num_frames`.
pub fn sds_timesteps(
    schedule: SdsTimestep,
    b: usize,
    num_frames: usize,
    num_train_timesteps: usize,
    opts: &SdsOptions,
) -> Vec<usize> {
    let last = num_train_timesteps.saturating_sub(1);
    match schedule {
        SdsTimestep::Anneal { step, iters } => {
            let t = annealed_timestep(
                step,
                iters,
                num_train_timesteps,
                opts.min_step,
                opts.max_step,
            )
            .min(last);
            vec![t; b]
        }
        SdsTimestep::Fixed(t) => vec![t.min(last); b],
        SdsTimestep::Random { seed } => {
            let mut r = SplitMix64::new(seed);
            let span = (opts.max_step.max(opts.min_step) - opts.min_step + 1) as u64;
            let groups = b.div_ceil(num_frames.max(1));
            let mut v = Vec::with_capacity(b);
            for _ in 0..groups {
                let t = (opts.min_step + (r.next_u64() % span) as usize).min(last);
                for _ in 0..num_frames.max(1) {
                    v.push(t);
                }
            }
            v.truncate(b);
            v
        }
    }
}

impl MvDreamPipeline {
    /// Images `[B, 3, H, W]` in [0, 1] → scaled latents `[B, 4, H/8, W/8]`
    /// (f32), differentiable with respect to the images (see [`crate::vae::Vae::encode`]).
    /// The images must already be at the model's resolution (256² for MVDream).
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.vae.encode(images)?)
    }

    /// Prompt embeddings and the cameras of a request, for [`sds_gradient`].
    /// Uses the request's prompt + suffix, negative prompt and camera rig.
    pub fn sds_conditioning(&self, req: &MvDreamRequest) -> Result<SdsConditioning> {
        let positive = self.encode_prompt(&format!("{}{}", req.prompt, req.prompt_suffix))?;
        let negative = self.encode_prompt(&req.negative_prompt)?;
        let camera = if self.unet.config().camera_dim.is_some() {
            Some(self.camera_tensor(req)?.0)
        } else {
            None
        };
        Ok(SdsConditioning {
            positive,
            negative,
            camera,
        })
    }
}

/// One SDS evaluation on `latents` `[B, 4, h, w]` (B a multiple of
/// `opts.num_frames`; normally the output of [`MvDreamPipeline::encode_images`]
/// so that `loss.backward()` reaches the images). `noise_seed` seeds `ε`.
pub fn sds_gradient(
    pipe: &MvDreamPipeline,
    latents: &Tensor,
    cond: &SdsConditioning,
    schedule: SdsTimestep,
    noise_seed: u64,
    opts: &SdsOptions,
) -> Result<SdsOutput> {
    let (b, c, h, w) = latents.dims4()?;
    let nf = opts.num_frames;
    if nf == 0 || b % nf != 0 {
        return Err(DiffusionError::InvalidArgument(format!(
            "batch {b} is not a multiple of num_frames {nf}"
        )));
    }
    if opts.min_step > opts.max_step {
        return Err(DiffusionError::InvalidArgument(format!(
            "min_step {} > max_step {}",
            opts.min_step, opts.max_step
        )));
    }
    let alphas = pipe.scheduler.alphas_cumprod();
    let ts = sds_timesteps(schedule, b, nf, alphas.len(), opts);
    let dev = latents.device();
    let z = latents.to_dtype(DType::F32)?;
    let z0 = z.detach();

    let noise = rng::randn(noise_seed, &[b, c, h, w], DType::F32, dev)?;
    let per_item = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
        let v: Vec<f32> = ts.iter().map(|&t| f(alphas[t]) as f32).collect();
        Ok(Tensor::from_vec(v, (b, 1, 1, 1), dev)?)
    };
    let sa = per_item(&|a| a.sqrt())?;
    let s1a = per_item(&|a| (1.0 - a).sqrt())?;
    let noisy = (z0.broadcast_mul(&sa)? + noise.broadcast_mul(&s1a)?)?;

    // One UNet pass on [positive; negative], as DreamGaussian does.
    let objects = b / nf;
    let (_, tl, cd) = cond.positive.dims3()?;
    let pos = cond.positive.broadcast_as((b, tl, cd))?;
    let neg = cond.negative.broadcast_as((b, tl, cd))?;
    let context = Tensor::cat(&[&pos, &neg], 0)?;
    let camera = match &cond.camera {
        Some(cam) => {
            let cam = if cam.dim(0)? == nf {
                let reps: Vec<&Tensor> = std::iter::repeat_n(cam, objects).collect();
                Tensor::cat(&reps, 0)?
            } else if cam.dim(0)? == b {
                cam.clone()
            } else {
                return Err(DiffusionError::InvalidArgument(format!(
                    "camera has {} rows, expected {nf} or {b}",
                    cam.dim(0)?
                )));
            };
            Some(Tensor::cat(&[&cam, &cam], 0)?)
        }
        None => None,
    };
    let x_in = Tensor::cat(&[&noisy, &noisy], 0)?;
    let tt: Vec<f64> = ts.iter().chain(ts.iter()).map(|&t| t as f64).collect();
    let eps = pipe.predict_noise(&x_in, &tt, &context, camera.as_ref(), nf)?;
    let cond_eps = eps.narrow(0, 0, b)?;
    let uncond_eps = eps.narrow(0, b, b)?;
    let noise_pred = (&uncond_eps + ((&cond_eps - &uncond_eps)? * opts.guidance_scale)?)?.detach();

    let diff = (&noise_pred - &noise)?;
    let grad = match opts.weighting {
        SdsWeighting::Unit => diff,
        SdsWeighting::OneMinusAlphaBar => diff.broadcast_mul(&per_item(&|a| 1.0 - a)?)?,
    };
    // nan_to_num: NaN → 0 (x == x is false for NaN).
    let finite = grad.eq(&grad)?;
    let grad = finite.where_cond(&grad, &grad.zeros_like()?)?.detach();

    let target = (&z0 - &grad)?.detach();
    let loss = ((z - target)?.sqr()?.sum_all()? * (0.5 / b as f64))?;
    Ok(SdsOutput {
        grad,
        loss,
        timesteps: ts,
        noise,
        noise_pred,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annealing_follows_dreamgaussian() {
        // t = round((1 − r)·1000) clipped to [20, 980].
        assert_eq!(annealed_timestep(0, 500, 1000, 20, 980), 980);
        assert_eq!(annealed_timestep(250, 500, 1000, 20, 980), 500);
        assert_eq!(annealed_timestep(1, 3, 1000, 20, 980), 667);
        assert_eq!(annealed_timestep(499, 500, 1000, 20, 980), 20);
        assert_eq!(annealed_timestep(500, 500, 1000, 20, 980), 20);
        assert_eq!(annealed_timestep(600, 500, 1000, 20, 980), 20);
    }

    #[test]
    fn random_timesteps_are_shared_per_object_and_in_range() {
        let o = SdsOptions::default();
        let ts = sds_timesteps(SdsTimestep::Random { seed: 3 }, 12, 4, 1000, &o);
        assert_eq!(ts.len(), 12);
        for g in ts.chunks(4) {
            assert!(g.iter().all(|&t| t == g[0]));
            assert!((20..=980).contains(&g[0]));
        }
        assert_ne!(ts[0..4], ts[4..8], "objects draw their own t (seed 3)");
        assert_eq!(
            ts,
            sds_timesteps(SdsTimestep::Random { seed: 3 }, 12, 4, 1000, &o)
        );
        let many = sds_timesteps(SdsTimestep::Random { seed: 9 }, 4000, 1, 1000, &o);
        assert_eq!(*many.iter().min().unwrap(), 20);
        assert_eq!(*many.iter().max().unwrap(), 980);
        assert_eq!(
            sds_timesteps(SdsTimestep::Fixed(5000), 2, 1, 1000, &o),
            vec![999, 999]
        );
    }
}
