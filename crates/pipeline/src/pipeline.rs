//! The pipeline: models loaded once, then prompt → Gaussians, stage by stage.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use splatforge_diffusion::{
    load_mvdream, HubConfig, LoadOptions, ModelSource, MvDreamPipeline, MvDreamRequest,
    TilingOptions,
};
use splatforge_fit::trainer::backend_settings;
use splatforge_fit::{
    backend_for, fit_with, initial_gaussians, FitBackend, FitConfig, FitError, Init, View, Views,
};
use splatforge_nn::device::{device_memory, DeviceMemory};
use splatforge_render::project::quat_to_rotmat;
use splatforge_splat::normalize::fit_to_box;
use splatforge_splat::Gaussians;

use crate::alpha::{foreground_alpha, straight_rgba};
use crate::carve::{carve_init, CarveStats};
use crate::config::{InitMethod, PipelineConfig, PipelineKind};
use crate::decode::decode;
use crate::error::{PipelineError, Stage};
use crate::refine::{refine, SdsError, SdsInputs, SdsStep};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub prompt: String,
    /// `None`: the configuration's `seed`.
    pub seed: Option<u64>,
}

/// Receives progress; every method has a no-op default.
pub trait Observer {
    /// A stage begins; `steps` is its number of steps (0: one indivisible step).
    fn stage_started(&mut self, _stage: Stage, _steps: u64) {}
    /// Step `done` of `total` of a stage finished; `loss` when the stage has one.
    fn step(&mut self, _stage: Stage, _done: u64, _total: u64, _loss: Option<f64>) {}
    /// A stage ended after `elapsed`.
    fn stage_finished(&mut self, _stage: Stage, _elapsed: Duration) {}
}

impl Observer for () {}

/// How the initial Gaussians were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitUsed {
    Carved(CarveStats),
    Random,
    /// Carving was asked for but the masks gave (almost) nothing.
    RandomFallback,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    pub gaussians: Gaussians,
    /// Wall time of each stage, in pipeline order.
    pub timings: Vec<(Stage, Duration)>,
    /// The fit's targets: the generated views with their foreground alpha.
    pub views: Views,
    pub seed: u64,
    /// Whether every value of the diffusion stage's latents was finite. A
    /// model overflowing its precision gives NaN or Inf latents, which the
    /// VAE's clamp to [0, 1] would hide in the views.
    pub latents_finite: bool,
    pub init: InitUsed,
    /// Training loss and PSNR of the fit's last step.
    pub fit_loss: f64,
    pub fit_psnr: f64,
}

impl Generated {
    pub fn total(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }
}

/// Where the models are: `spec` is a folder (diffusers layout, or a folder
/// holding `mvdream-diffusers/` or `mvdream-ldm/` as `splatforge models
/// make-tiny` writes), an LDM checkpoint file, or `hf:ORG/NAME[@REV][:FILE]`.
/// `None`: MVDream's diffusers export through the Hugging Face cache.
pub fn resolve_models(spec: Option<&str>) -> Result<ModelSource, PipelineError> {
    let Some(spec) = spec else {
        return Ok(ModelSource::mvdream_hub());
    };
    if spec.starts_with("hf:") {
        return Ok(ModelSource::parse(spec));
    }
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(ModelSource::parse(spec));
    }
    if !p.is_dir() {
        return Err(PipelineError::Load(format!(
            "{spec}: no such model folder or file"
        )));
    }
    if p.join("model_index.json").is_file() {
        return Ok(ModelSource::Diffusers(p.to_path_buf()));
    }
    let diffusers = p.join(splatforge_diffusion::random_models::DIFFUSERS_DIR);
    if diffusers.join("model_index.json").is_file() {
        return Ok(ModelSource::Diffusers(diffusers));
    }
    let ldm_dir = p.join(splatforge_diffusion::random_models::LDM_DIR);
    if ldm_dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&ldm_dir)
            .map_err(|e| PipelineError::Load(format!("{}: {e}", ldm_dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                f.extension()
                    .is_some_and(|x| x == "safetensors" || x == "ckpt" || x == "pt")
            })
            .collect();
        files.sort();
        if let Some(f) = files.into_iter().next() {
            return Ok(ModelSource::Ldm {
                checkpoint: f,
                config: None,
                tokenizer: None,
            });
        }
    }
    Err(PipelineError::Load(format!(
        "{spec}: no MVDream model here (expected model_index.json, or {}/ or {}/ as `splatforge models make-tiny` writes)",
        splatforge_diffusion::random_models::DIFFUSERS_DIR,
        splatforge_diffusion::random_models::LDM_DIR
    )))
}

/// Times the stages of one generation, in order, and tells the observer
/// when each starts and ends.
struct StageClock<'o> {
    obs: &'o mut dyn Observer,
    timings: Vec<(Stage, Duration)>,
    current: Option<(Stage, Instant)>,
}

impl<'o> StageClock<'o> {
    fn new(obs: &'o mut dyn Observer) -> Self {
        StageClock {
            obs,
            timings: Vec::new(),
            current: None,
        }
    }

    /// `stage` begins with `steps` steps (0: one indivisible step).
    fn start(&mut self, stage: Stage, steps: u64) {
        self.obs.stage_started(stage, steps);
        self.current = Some((stage, Instant::now()));
    }

    /// The stage begun last ends.
    fn finish(&mut self) {
        if let Some((stage, t0)) = self.current.take() {
            let elapsed = t0.elapsed();
            self.obs.stage_finished(stage, elapsed);
            self.timings.push((stage, elapsed));
        }
    }
}

/// What the fit and SDS stages of [`Pipeline::generate_with`] need.
struct FitStages<'a> {
    views: &'a Views,
    fit: &'a FitConfig,
    /// `sds.from_scratch`: no fit; the SDS stage is already started.
    from_scratch: bool,
    /// `None`: no SDS stage.
    sds: Option<SdsInputs<'a>>,
    cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// The Gaussians after the fit and SDS, and the fit's last loss and PSNR.
struct Fitted {
    gaussians: Gaussians,
    fit_loss: f64,
    fit_psnr: f64,
}

/// `Break` when `cancelled` fired: the stop signal of every long loop.
fn go_on(cancelled: &(dyn Fn() -> bool + Sync)) -> ControlFlow<()> {
    if cancelled() {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// The fit stage (already started on `clock`), then the SDS stage (when
/// configured) on the same backend; with `from_scratch`, the SDS stage
/// alone (already started).
fn fit_and_refine(
    mut backend: Box<dyn FitBackend>,
    s: &FitStages<'_>,
    clock: &mut StageClock<'_>,
) -> Result<Fitted, PipelineError> {
    let (fit_loss, fit_psnr) = if s.from_scratch {
        (f64::NAN, f64::NAN)
    } else {
        let fit = fit_with(backend.as_mut(), s.views, s.fit, &mut |p| {
            clock
                .obs
                .step(Stage::Fit, p.iteration as u64, p.iters as u64, Some(p.loss));
            go_on(s.cancelled)
        })
        .map_err(|e| match e {
            FitError::Cancelled => PipelineError::Cancelled,
            e => PipelineError::stage(Stage::Fit, e),
        })?;
        clock.finish();
        if s.sds.is_none() {
            return Ok(Fitted {
                gaussians: fit.gaussians,
                fit_loss: fit.final_loss,
                fit_psnr: fit.final_train_psnr,
            });
        }
        (fit.final_loss, fit.final_train_psnr)
    };
    // From scratch, validation guarantees SDS iterations.
    let Some(sds) = &s.sds else {
        return Err(PipelineError::stage(
            Stage::Sds,
            "sds.from_scratch without SDS iterations",
        ));
    };

    if (s.cancelled)() {
        return Err(PipelineError::Cancelled);
    }
    if !s.from_scratch {
        clock.start(Stage::Sds, sds.sds.sds_iters as u64);
    }
    let refined = refine(backend.as_mut(), sds, &mut |st: &SdsStep| {
        clock.obs.step(
            Stage::Sds,
            st.step as u64,
            st.iters as u64,
            Some(st.sds_loss),
        );
        go_on(s.cancelled)
    });
    match refined {
        Ok(()) => {}
        Err(SdsError::Cancelled) => return Err(PipelineError::Cancelled),
        Err(e) => return Err(PipelineError::stage(Stage::Sds, e)),
    }
    let gaussians = backend.gaussians();
    clock.finish();
    Ok(Fitted {
        gaussians,
        fit_loss,
        fit_psnr,
    })
}

/// Splits the largest Gaussians in two along their longest axis until there
/// are at least `min` (each child: half the long axis, centred ±σ/2 along
/// it, same colour and opacity). A no-op for an empty set.
pub fn ensure_min_count(g: &mut Gaussians, min: usize) {
    while !g.is_empty() && g.len() < min {
        let need = (min - g.len()).min(g.len());
        let mut order: Vec<usize> = (0..g.len()).collect();
        let big = |i: usize| {
            g.log_scales[i]
                .iter()
                .cloned()
                .fold(f32::NEG_INFINITY, f32::max)
        };
        order.sort_by(|&a, &b| big(b).total_cmp(&big(a)).then(a.cmp(&b)));
        let rest = g.rest_coeffs() * 3;
        for &i in &order[..need] {
            let ls = g.log_scales[i];
            let axis = (0..3)
                .max_by(|&a, &b| ls[a].total_cmp(&ls[b]).then(b.cmp(&a)))
                .unwrap();
            let sigma = ls[axis].exp();
            let q = g.rotations[i];
            let n = (q.iter().map(|v| v * v).sum::<f32>()).sqrt().max(1e-12);
            // Column `axis` of the rotation matrix.
            let r = quat_to_rotmat(q.map(|v| v / n));
            let d = [r[0][axis], r[1][axis], r[2][axis]].map(|v| v * 0.5 * sigma);
            let m = g.means[i];
            let mut child_scale = ls;
            child_scale[axis] -= std::f32::consts::LN_2;
            g.means[i] = [m[0] + d[0], m[1] + d[1], m[2] + d[2]];
            g.log_scales[i] = child_scale;
            g.means.push([m[0] - d[0], m[1] - d[1], m[2] - d[2]]);
            g.log_scales.push(child_scale);
            g.rotations.push(q);
            g.opacity_logits.push(g.opacity_logits[i]);
            g.sh_dc.push(g.sh_dc[i]);
            let r: Vec<f32> = g.sh_rest[i * rest..(i + 1) * rest].to_vec();
            g.sh_rest.extend_from_slice(&r);
        }
    }
}

/// Views `[n, 3, H, W]` in [0, 1] → the fit's targets with foreground alpha.
pub fn views_from_images(
    images: &Tensor,
    cameras: &[splatforge_render::Camera],
    cfg: &PipelineConfig,
) -> Result<Views, PipelineError> {
    let err = |e: candle_core::Error| PipelineError::stage(Stage::Alpha, e);
    let (n, c, h, w) = images.dims4().map_err(err)?;
    if c != 3 || n != cameras.len() {
        return Err(PipelineError::stage(
            Stage::Alpha,
            format!("{n} images of {c} channels for {} cameras", cameras.len()),
        ));
    }
    let data = images
        .to_dtype(DType::F32)
        .and_then(|t| t.to_device(&Device::Cpu))
        .and_then(|t| t.permute((0, 2, 3, 1)))
        .and_then(|t| t.contiguous())
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)?;
    let per = h * w * 3;
    let views = (0..n)
        .map(|i| {
            let rgb = &data[i * per..(i + 1) * per];
            let alpha = foreground_alpha(rgb, w, h, &cfg.alpha);
            let rgba = straight_rgba(rgb, &alpha);
            View::from_rgba(format!("view_{i}"), cameras[i], &rgba)
                .map_err(|e| PipelineError::stage(Stage::Alpha, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Views::new(views))
}

/// Models loaded on one device, and a configuration.
pub struct Pipeline {
    mvdream: MvDreamPipeline,
    config: PipelineConfig,
    profile: String,
    device: Device,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("profile", &self.profile)
            .field("models", &self.mvdream.source)
            .field("device", &self.device)
            .finish()
    }
}

impl Pipeline {
    /// Loads MVDream on `device`. `profile` is a name for messages. On the
    /// CPU every model runs in fp32 whatever `precision` says. VAE tiling is
    /// set here from `config` (and stays for [`Self::generate_with`]).
    pub fn load(
        models: &ModelSource,
        device: &Device,
        hub: HubConfig,
        profile: &str,
        config: PipelineConfig,
    ) -> Result<Pipeline, PipelineError> {
        config.validate()?;
        if config.pipeline != PipelineKind::Mvdream {
            return Err(PipelineError::Load(format!(
                "profile {profile} runs the {} pipeline (image → 3D), not text → 3D",
                config.pipeline.name()
            )));
        }
        let cpu = matches!(device, Device::Cpu);
        let dtype = if cpu {
            DType::F32
        } else {
            config.diffusion.precision.dtype()
        };
        let vae_dtype = if cpu {
            DType::F32
        } else {
            config.diffusion.vae_precision.map_or(dtype, |p| p.dtype())
        };
        let opts = LoadOptions {
            device: device.clone(),
            dtype,
            vae_dtype: Some(vae_dtype),
            hub: hub.clone(),
        };
        let load_err = |e: splatforge_diffusion::DiffusionError| PipelineError::load(e);
        let mut mvdream = load_mvdream(models, &opts).map_err(load_err)?;
        let d = &config.diffusion;
        mvdream.vae.set_tiling(TilingOptions {
            enabled: d.vae_tiling,
            tile_px: d.vae_tile_size,
            overlap_px: d.vae_tile_overlap,
        });
        Ok(Pipeline {
            mvdream,
            config,
            profile: profile.to_string(),
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The memory of the pipeline's device (from its driver; `None` on the CPU).
    pub fn device_memory(&self) -> Option<DeviceMemory> {
        device_memory(&self.device)
    }

    /// Where the models came from.
    pub fn models(&self) -> &str {
        &self.mvdream.source
    }

    /// The loaded MVDream model.
    pub fn mvdream(&self) -> &MvDreamPipeline {
        &self.mvdream
    }

    /// Runs the pipeline with the loaded configuration (see
    /// [`Self::generate_with`]).
    pub fn generate(
        &self,
        req: &Request,
        cancelled: &(dyn Fn() -> bool + Sync),
        obs: &mut dyn Observer,
    ) -> Result<Generated, PipelineError> {
        self.generate_with(&self.config, req, cancelled, obs)
    }

    /// One tiny generation with the loaded configuration's sizes (one DDIM
    /// step, two fit steps, at most one SDS step), so that a server's first
    /// request does not pay for first-use costs. Returns its wall time.
    pub fn warm_up(&self) -> Result<Duration, PipelineError> {
        let mut c = self.config.clone();
        c.diffusion.num_inference_steps = 1;
        c.fit.iters = 2;
        c.fit.position_lr_max_steps = c.fit.position_lr_max_steps.max(1);
        c.sds.sds_iters = c.sds.sds_iters.min(1);
        c.output.min_gaussians = 0;
        let t0 = Instant::now();
        self.generate_with(
            &c,
            &Request {
                prompt: "a cat".into(),
                seed: Some(0),
            },
            &|| false,
            &mut (),
        )?;
        Ok(t0.elapsed())
    }

    /// Prompt → Gaussians with `config`. Stages, in order:
    /// `diffusion`, `alpha`, `init`, `fit`, `sds` (when `sds_iters > 0`),
    /// `normalize`. `cancelled` is polled between stages and at every
    /// denoising, fit and SDS step.
    pub fn generate_with(
        &self,
        config: &PipelineConfig,
        req: &Request,
        cancelled: &(dyn Fn() -> bool + Sync),
        obs: &mut dyn Observer,
    ) -> Result<Generated, PipelineError> {
        config.validate()?;
        if req.prompt.trim().is_empty() {
            return Err(PipelineError::Input("the prompt is empty".into()));
        }
        let check = || {
            if cancelled() {
                Err(PipelineError::Cancelled)
            } else {
                Ok(())
            }
        };
        let seed = req.seed.unwrap_or(config.seed);
        let d = &config.diffusion;
        let mut clock = StageClock::new(obs);
        let from_scratch = config.sds.from_scratch;

        // 1. MVDream: prompt → n views, 2. their foreground alpha (none
        // from scratch: SDS alone trains the initial Gaussians).
        let (views, latents_finite) = if from_scratch {
            (Views::new(Vec::new()), true)
        } else {
            self.views(config, req, seed, cancelled, &mut clock)?
        };

        // 3. Initial Gaussians.
        check()?;
        clock.start(Stage::Init, 0);
        let mut fit_cfg = config.fit.clone();
        fit_cfg.seed = seed;
        let (init_g, init) = match config.init.method {
            InitMethod::Random => (initial_gaussians(&Init::Random, &fit_cfg), InitUsed::Random),
            InitMethod::Carve => match carve_init(
                &views.views,
                &config.init,
                fit_cfg.num_pts,
                fit_cfg.sh_degree,
                seed,
            ) {
                Some((g, stats)) => (g, InitUsed::Carved(stats)),
                None => (
                    initial_gaussians(&Init::Random, &fit_cfg),
                    InitUsed::RandomFallback,
                ),
            },
        };
        clock.finish();

        // 4. Fit to the views, 5. SDS refinement: on one fitting backend, so
        // that the CUDA backend keeps the Gaussians on the GPU between them.
        check()?;
        // The backend's creation counts towards the fit stage (the SDS
        // stage from scratch).
        if from_scratch {
            clock.start(Stage::Sds, config.sds.sds_iters as u64);
        } else {
            clock.start(Stage::Fit, fit_cfg.iters as u64);
        }
        let settings = backend_settings(&fit_cfg);
        let stages = FitStages {
            views: &views,
            fit: &fit_cfg,
            from_scratch,
            sds: (config.sds.sds_iters > 0).then(|| SdsInputs {
                pipe: &self.mvdream,
                sds: &config.sds,
                diffusion: d,
                fit: &fit_cfg,
                views: &views,
                prompt: &req.prompt,
                seed,
            }),
            cancelled,
        };
        let backend = backend_for(&self.device, init_g, settings)
            .map_err(|e| PipelineError::stage(Stage::Fit, e))?;
        let fitted = fit_and_refine(backend, &stages, &mut clock)?;
        let mut g = fitted.gaussians;

        // 6. Top up and normalise.
        check()?;
        clock.start(Stage::Normalize, 0);
        ensure_min_count(&mut g, config.output.min_gaussians);
        if config.output.normalize {
            fit_to_box(&mut g, config.output.box_size)
                .map_err(|e| PipelineError::stage(Stage::Normalize, e))?;
        }
        clock.finish();

        Ok(Generated {
            gaussians: g,
            timings: clock.timings,
            views,
            seed,
            latents_finite,
            init,
            fit_loss: fitted.fit_loss,
            fit_psnr: fitted.fit_psnr,
        })
    }

    /// The `diffusion` and `alpha` stages of [`Self::generate_with`]: the
    /// views with their foreground alpha, and whether the latents were finite.
    fn views(
        &self,
        config: &PipelineConfig,
        req: &Request,
        seed: u64,
        cancelled: &(dyn Fn() -> bool + Sync),
        clock: &mut StageClock<'_>,
    ) -> Result<(Views, bool), PipelineError> {
        let check = || {
            if cancelled() {
                Err(PipelineError::Cancelled)
            } else {
                Ok(())
            }
        };
        let d = &config.diffusion;
        check()?;
        let steps = d.num_inference_steps as u64;
        clock.start(Stage::Diffusion, steps + 1);
        let mreq = MvDreamRequest {
            prompt: req.prompt.clone(),
            prompt_suffix: d.prompt_suffix.clone(),
            negative_prompt: d.negative_prompt.clone(),
            steps: d.num_inference_steps,
            guidance_scale: d.guidance_scale,
            seed,
            image_size: d.resolution,
            num_frames: d.n_views,
            elevation_deg: d.elevation,
            azimuth_start_deg: d.azimuth_start,
            azimuth_span_deg: 360.0,
        };
        let latents = self
            .mvdream
            .generate_latents(&mreq, |i, n| {
                clock
                    .obs
                    .step(Stage::Diffusion, i as u64, n as u64 + 1, None);
                // Checked at every denoising step, so a timed-out or
                // disconnected request frees the GPU within one UNet call.
                go_on(cancelled)
            })
            .map_err(|e| match e {
                splatforge_diffusion::DiffusionError::Cancelled => PipelineError::Cancelled,
                e => PipelineError::stage(Stage::Diffusion, e),
            })?;
        check()?;
        let latents_finite = latents
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| PipelineError::stage(Stage::Diffusion, e))?
            .iter()
            .all(|v| v.is_finite());
        let images = decode(&self.mvdream, &latents, d)
            .map_err(|e| PipelineError::stage(Stage::Diffusion, e))?;
        drop(latents);
        clock.obs.step(Stage::Diffusion, steps + 1, steps + 1, None);
        let cameras = crate::cameras::render_cameras(
            d.n_views,
            d.elevation,
            d.azimuth_start,
            360.0,
            d.camera_radius,
            d.fovy,
            d.resolution as u32,
        );
        clock.finish();

        // 2. Foreground alpha.
        check()?;
        clock.start(Stage::Alpha, 0);
        let views = views_from_images(&images, &cameras, config)?;
        clock.finish();
        Ok((views, latents_finite))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_up_splits_the_largest_gaussians() {
        let mut g =
            splatforge_fit::init::random_ball(10, 0.5, 1, &mut splatforge_fit::rng::Rng::new(3));
        g.log_scales[4] = [1.0, -3.0, -3.0];
        g.rotations[4] = [0.9, 0.1, -0.3, 0.2];
        let before = g.clone();
        ensure_min_count(&mut g, 11);
        g.check_consistent().unwrap();
        assert_eq!(g.len(), 11);
        // The biggest one was split along its long axis, keeping its centre.
        let m: [f32; 3] = std::array::from_fn(|a| 0.5 * (g.means[4][a] + g.means[10][a]));
        for (mid, orig) in m.iter().zip(&before.means[4]) {
            assert!((mid - orig).abs() < 1e-6);
        }
        assert!((g.log_scales[4][0] - (1.0 - std::f32::consts::LN_2)).abs() < 1e-6);
        let sep: f32 = (0..3)
            .map(|a| (g.means[4][a] - g.means[10][a]).powi(2))
            .sum::<f32>()
            .sqrt();
        assert!((sep - 1.0f32.exp()).abs() < 1e-5, "{sep}");
        ensure_min_count(&mut g, 25);
        g.check_consistent().unwrap();
        assert_eq!(g.len(), 25);
        assert!(g.means.iter().flatten().all(|v| v.is_finite()));
        let mut empty = Gaussians::default();
        ensure_min_count(&mut empty, 5);
        assert!(empty.is_empty());
        let mut same = before.clone();
        ensure_min_count(&mut same, 3);
        assert_eq!(same, before);
    }

    #[test]
    fn devices_and_model_folders_resolve() {
        assert_eq!(
            device_memory(&Device::Cpu),
            None,
            "the CPU reports no device memory"
        );
        assert!(matches!(
            resolve_models(None).unwrap(),
            ModelSource::HubDiffusers { .. }
        ));
        assert!(matches!(
            resolve_models(Some("hf:a/b")).unwrap(),
            ModelSource::HubDiffusers { .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_models(Some(dir.path().to_str().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("make-tiny"), "{e}");
        let e = resolve_models(Some("/no/such/models"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/models"), "{e}");
        std::fs::create_dir(dir.path().join("mvdream-diffusers")).unwrap();
        std::fs::write(dir.path().join("mvdream-diffusers/model_index.json"), "{}").unwrap();
        assert_eq!(
            resolve_models(Some(dir.path().to_str().unwrap())).unwrap(),
            ModelSource::Diffusers(dir.path().join("mvdream-diffusers"))
        );
    }
}
