//! The pipeline: models loaded once, then prompt → Gaussians, stage by stage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use splatforge_diffusion::{camera, load_mvdream, HubConfig, LoadOptions, ModelSource, MvDreamPipeline, MvDreamRequest, TilingOptions};
use splatforge_fit::densify::{DensifyParams, DensifyReport};
use splatforge_fit::trainer::backend_settings;
use splatforge_fit::{fit_with, initial_gaussians, CpuBackend, FitBackend, FitConfig, FitError, Init, View, Views};
use splatforge_splat::normalize::fit_to_box;
use splatforge_splat::Gaussians;

use crate::alpha::{foreground_alpha, straight_rgba};
use crate::carve::{carve_init, CarveStats};
use crate::config::{InitMethod, PipelineConfig};
use crate::decode::decode;
use crate::error::{PipelineError, Stage};
use crate::sds::{refine, SdsError, SdsInputs, SdsStep};

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
    let Some(spec) = spec else { return Ok(ModelSource::mvdream_hub()) };
    if spec.starts_with("hf:") {
        return Ok(ModelSource::parse(spec));
    }
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(ModelSource::parse(spec));
    }
    if !p.is_dir() {
        return Err(PipelineError::Load(format!("{spec}: no such model folder or file")));
    }
    if p.join("model_index.json").is_file() {
        return Ok(ModelSource::Diffusers(p.to_path_buf()));
    }
    let diffusers = p.join(splatforge_diffusion::tiny::DIFFUSERS_DIR);
    if diffusers.join("model_index.json").is_file() {
        return Ok(ModelSource::Diffusers(diffusers));
    }
    let ldm_dir = p.join(splatforge_diffusion::tiny::LDM_DIR);
    if ldm_dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&ldm_dir)
            .map_err(|e| PipelineError::Load(format!("{}: {e}", ldm_dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "safetensors" || x == "ckpt" || x == "pt"))
            .collect();
        files.sort();
        if let Some(f) = files.into_iter().next() {
            return Ok(ModelSource::Ldm { checkpoint: f, config: None, tokenizer: None });
        }
    }
    Err(PipelineError::Load(format!(
        "{spec}: no MVDream model here (expected model_index.json, or {}/ or {}/ as `splatforge models make-tiny` writes)",
        splatforge_diffusion::tiny::DIFFUSERS_DIR,
        splatforge_diffusion::tiny::LDM_DIR
    )))
}

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device, PipelineError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| PipelineError::Load(format!("device `{spec}`: expected cpu, cuda or cuda:N")))?,
        None => return Err(PipelineError::Load(format!("device `{spec}`: expected cpu, cuda or cuda:N"))),
    };
    Device::new_cuda(ordinal).map_err(|e| {
        PipelineError::Load(format!(
            "device `{spec}`: {e} (CUDA needs a build with `--features cuda` and an NVIDIA driver)"
        ))
    })
}

/// The name [`parse_device`] reads back: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Memory of one device as its driver reports it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// In use on the whole device (total − free: every process's
    /// allocations, plus the CUDA contexts), as `nvidia-smi` counts it.
    pub used: u64,
    pub total: u64,
}

/// The memory of `device` from the CUDA driver (`cuMemGetInfo` in the
/// device's context); `None` on the CPU or when the driver call fails.
#[cfg(feature = "cuda")]
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    let Device::Cuda(d) = device else { return None };
    let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
    Some(DeviceMemory { used: total.saturating_sub(free) as u64, total: total as u64 })
}

/// The memory of a GPU, from its driver: always `None` in a build without
/// the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn device_memory(_device: &Device) -> Option<DeviceMemory> {
    None
}

/// A [`FitBackend`] that stops the fit when `cancelled` fires: its step
/// returns an error the pipeline turns into [`PipelineError::Cancelled`].
/// (The fitting engine's progress callback cannot stop the loop.)
struct Cancellable<'a, B> {
    inner: B,
    cancelled: &'a (dyn Fn() -> bool + Sync),
    fired: bool,
}

impl<B: FitBackend> FitBackend for Cancellable<'_, B> {
    fn num_gaussians(&self) -> usize {
        self.inner.num_gaussians()
    }
    fn step(&mut self, views: &[splatforge_fit::backend::BatchView<'_>], params: &splatforge_fit::backend::StepParams) -> splatforge_fit::Result<splatforge_fit::backend::StepStats> {
        if (self.cancelled)() {
            self.fired = true;
            return Err(FitError::Input("cancelled".into()));
        }
        self.inner.step(views, params)
    }
    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport {
        self.inner.densify_and_prune(params)
    }
    fn reset_opacity(&mut self) {
        self.inner.reset_opacity()
    }
    fn gaussians(&self) -> Gaussians {
        self.inner.gaussians()
    }
    fn timings(&self) -> splatforge_fit::StageTimings {
        self.inner.timings()
    }
    fn latest_stats(&mut self) -> Option<splatforge_fit::backend::StepStats> {
        self.inner.latest_stats()
    }
    fn guided_step(
        &mut self,
        guide_cameras: &[splatforge_render::Camera],
        views: &[splatforge_fit::backend::BatchView<'_>],
        params: &splatforge_fit::GuidedParams,
        guide: &mut splatforge_fit::Guide<'_>,
    ) -> splatforge_fit::Result<Option<splatforge_fit::backend::StepStats>> {
        self.inner.guided_step(guide_cameras, views, params, guide)
    }
    fn reset_optimizer(&mut self) {
        self.inner.reset_optimizer()
    }
}

/// Runs the fitting engine's loop on `backend`, stopping when `cancelled`
/// fires; gives the backend back (for SDS) with the result.
fn run_fit<B: FitBackend>(
    backend: B,
    views: &Views,
    config: &FitConfig,
    cancelled: &(dyn Fn() -> bool + Sync),
    progress: &mut dyn FnMut(&splatforge_fit::Progress),
) -> Result<(splatforge_fit::trainer::FitResult, B), PipelineError> {
    let mut backend = Cancellable { inner: backend, cancelled, fired: false };
    match fit_with(&mut backend, views, config, progress) {
        Ok(r) => Ok((r, backend.inner)),
        Err(_) if backend.fired => Err(PipelineError::Cancelled),
        Err(e) => Err(PipelineError::stage(Stage::Fit, e)),
    }
}

/// What the fit and SDS stages of [`Pipeline::generate_with`] need.
struct FitStages<'a> {
    views: &'a Views,
    fit: &'a FitConfig,
    /// `None`: no SDS stage.
    sds: Option<SdsInputs<'a>>,
    cancelled: &'a (dyn Fn() -> bool + Sync),
    /// When the fit stage started (the backend's creation counts towards it).
    started: Instant,
}

/// The Gaussians after the fit and SDS, and the fit's last loss and PSNR.
struct Fitted {
    gaussians: Gaussians,
    fit_loss: f64,
    fit_psnr: f64,
}

/// The fit stage, then the SDS stage (when configured) on the same
/// backend, each reported to `obs` and timed into `timings`.
fn fit_and_refine<B: FitBackend>(
    backend: B,
    s: &FitStages<'_>,
    obs: &mut dyn Observer,
    timings: &mut Vec<(Stage, Duration)>,
) -> Result<Fitted, PipelineError> {
    let mut on_step = |p: &splatforge_fit::Progress| obs.step(Stage::Fit, p.iteration as u64, p.iters as u64, Some(p.loss));
    let (fit, mut backend) = run_fit(backend, s.views, s.fit, s.cancelled, &mut on_step)?;
    let el = s.started.elapsed();
    obs.stage_finished(Stage::Fit, el);
    timings.push((Stage::Fit, el));
    let Some(sds) = &s.sds else {
        return Ok(Fitted { gaussians: fit.gaussians, fit_loss: fit.final_loss, fit_psnr: fit.final_train_psnr });
    };

    if (s.cancelled)() {
        return Err(PipelineError::Cancelled);
    }
    let t0 = stage_timer(obs, Stage::Sds, sds.sds.sds_iters as u64);
    let mut on_step = |st: &SdsStep| obs.step(Stage::Sds, st.step as u64, st.iters as u64, Some(st.sds_loss));
    match refine(&mut backend, sds, &|| (s.cancelled)(), &mut on_step) {
        Ok(()) => {}
        Err(SdsError::Cancelled) => return Err(PipelineError::Cancelled),
        Err(e) => return Err(PipelineError::stage(Stage::Sds, e)),
    }
    let gaussians = backend.gaussians();
    let el = t0.elapsed();
    obs.stage_finished(Stage::Sds, el);
    timings.push((Stage::Sds, el));
    Ok(Fitted { gaussians, fit_loss: fit.final_loss, fit_psnr: fit.final_train_psnr })
}

/// Splits the largest Gaussians in two along their longest axis until there
/// are at least `min` (each child: half the long axis, centred ±σ/2 along
/// it, same colour and opacity). A no-op for an empty set.
pub fn ensure_min_count(g: &mut Gaussians, min: usize) {
    while !g.is_empty() && g.len() < min {
        let need = (min - g.len()).min(g.len());
        let mut order: Vec<usize> = (0..g.len()).collect();
        let big = |i: usize| g.log_scales[i].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        order.sort_by(|&a, &b| big(b).total_cmp(&big(a)).then(a.cmp(&b)));
        let rest = g.rest_coeffs() * 3;
        for &i in &order[..need] {
            let ls = g.log_scales[i];
            let axis = (0..3).max_by(|&a, &b| ls[a].total_cmp(&ls[b]).then(b.cmp(&a))).unwrap();
            let sigma = ls[axis].exp();
            let q = g.rotations[i];
            let n = (q.iter().map(|v| v * v).sum::<f32>()).sqrt().max(1e-12);
            let [w, x, y, z] = q.map(|v| v / n);
            // Column `axis` of the rotation matrix of (w, x, y, z).
            let r = [
                [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
                [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
                [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
            ];
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
pub fn views_from_images(images: &Tensor, cameras: &[splatforge_render::Camera], cfg: &PipelineConfig) -> Result<Views, PipelineError> {
    let err = |e: candle_core::Error| PipelineError::stage(Stage::Alpha, e);
    let (n, c, h, w) = images.dims4().map_err(err)?;
    if c != 3 || n != cameras.len() {
        return Err(PipelineError::stage(Stage::Alpha, format!("{n} images of {c} channels for {} cameras", cameras.len())));
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
            View::from_rgba(format!("view_{i}"), cameras[i], &rgba).map_err(|e| PipelineError::stage(Stage::Alpha, e))
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

fn stage_timer(obs: &mut dyn Observer, stage: Stage, steps: u64) -> Instant {
    obs.stage_started(stage, steps);
    Instant::now()
}

impl Pipeline {
    /// Loads MVDream on `device`. `profile` is a name for messages. On the
    /// CPU every model runs in fp32 whatever `precision` says. VAE tiling is
    /// set here from `config` (and stays for [`Self::generate_with`]).
    pub fn load(models: &ModelSource, device: &Device, hub: HubConfig, profile: &str, config: PipelineConfig) -> Result<Pipeline, PipelineError> {
        config.validate()?;
        let cpu = matches!(device, Device::Cpu);
        let dtype = if cpu { DType::F32 } else { config.diffusion.precision.dtype() };
        let vae_dtype = if cpu { DType::F32 } else { config.diffusion.vae_precision.map_or(dtype, |p| p.dtype()) };
        let opts = LoadOptions { device: device.clone(), dtype, vae_dtype: Some(vae_dtype), hub: hub.clone() };
        let load_err = |e: splatforge_diffusion::DiffusionError| PipelineError::load(e);
        let mut mvdream = load_mvdream(models, &opts).map_err(load_err)?;
        let d = &config.diffusion;
        mvdream.vae.set_tiling(TilingOptions { enabled: d.vae_tiling, tile_px: d.vae_tile_size, overlap_px: d.vae_tile_overlap });
        Ok(Pipeline { mvdream, config, profile: profile.to_string(), device: device.clone() })
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

    /// The memory of the pipeline's device (see [`device_memory`]).
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
    pub fn generate(&self, req: &Request, cancelled: &(dyn Fn() -> bool + Sync), obs: &mut dyn Observer) -> Result<Generated, PipelineError> {
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
        self.generate_with(&c, &Request { prompt: "a cat".into(), seed: Some(0) }, &|| false, &mut ())?;
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
        let check = || if cancelled() { Err(PipelineError::Cancelled) } else { Ok(()) };
        let seed = req.seed.unwrap_or(config.seed);
        let d = &config.diffusion;
        let mut timings = Vec::new();

        // 1. MVDream: prompt → n views.
        check()?;
        let steps = d.num_inference_steps as u64;
        let t0 = stage_timer(obs, Stage::Diffusion, steps + 1);
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
            camera_radius: d.camera_radius,
            fovy_deg: d.fovy,
        };
        let latents = self
            .mvdream
            .generate_latents(&mreq, |i, n| {
                obs.step(Stage::Diffusion, i as u64, n as u64 + 1, None);
                // Checked at every denoising step, so a timed-out or
                // disconnected request frees the GPU within one UNet call.
                if cancelled() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
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
        let images = decode(&self.mvdream, &latents, d).map_err(|e| PipelineError::stage(Stage::Diffusion, e))?;
        drop(latents);
        obs.step(Stage::Diffusion, steps + 1, steps + 1, None);
        let cameras = camera::render_cameras(d.n_views, d.elevation, d.azimuth_start, 360.0, d.camera_radius, d.fovy, d.resolution as u32);
        let el = t0.elapsed();
        obs.stage_finished(Stage::Diffusion, el);
        timings.push((Stage::Diffusion, el));

        // 2. Foreground alpha.
        check()?;
        let t0 = stage_timer(obs, Stage::Alpha, 0);
        let views = views_from_images(&images, &cameras, config)?;
        let el = t0.elapsed();
        obs.stage_finished(Stage::Alpha, el);
        timings.push((Stage::Alpha, el));

        // 3. Initial Gaussians.
        check()?;
        let t0 = stage_timer(obs, Stage::Init, 0);
        let mut fit_cfg = config.fit.clone();
        fit_cfg.seed = seed;
        let (init_g, init) = match config.init.method {
            InitMethod::Random => (initial_gaussians(&Init::Random, &fit_cfg), InitUsed::Random),
            InitMethod::Carve => match carve_init(&views.views, &config.init, fit_cfg.num_pts, fit_cfg.sh_degree, seed) {
                Some((g, stats)) => (g, InitUsed::Carved(stats)),
                None => (initial_gaussians(&Init::Random, &fit_cfg), InitUsed::RandomFallback),
            },
        };
        let el = t0.elapsed();
        obs.stage_finished(Stage::Init, el);
        timings.push((Stage::Init, el));

        // 4. Fit to the views, 5. SDS refinement: on one fitting backend, so
        // that the CUDA backend keeps the Gaussians on the GPU between them.
        check()?;
        let t0 = stage_timer(obs, Stage::Fit, fit_cfg.iters as u64);
        let settings = backend_settings(&fit_cfg);
        let stages = FitStages {
            views: &views,
            fit: &fit_cfg,
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
            started: t0,
        };
        #[cfg(feature = "cuda")]
        let fitted = if self.device.is_cuda() {
            // The fitting engine's CUDA backend, on the diffusion model's device.
            let b = splatforge_fit::cuda::CudaBackend::on_device(init_g, settings, &self.device)
                .map_err(|e| PipelineError::stage(Stage::Fit, e))?;
            fit_and_refine(b, &stages, obs, &mut timings)?
        } else {
            let b = CpuBackend::new(init_g, settings).map_err(|e| PipelineError::stage(Stage::Fit, e))?;
            fit_and_refine(b, &stages, obs, &mut timings)?
        };
        #[cfg(not(feature = "cuda"))]
        let fitted = {
            let b = CpuBackend::new(init_g, settings).map_err(|e| PipelineError::stage(Stage::Fit, e))?;
            fit_and_refine(b, &stages, obs, &mut timings)?
        };
        let mut g = fitted.gaussians;

        // 6. Top up and normalise.
        check()?;
        let t0 = stage_timer(obs, Stage::Normalize, 0);
        ensure_min_count(&mut g, config.output.min_gaussians);
        if config.output.normalize {
            fit_to_box(&mut g, config.output.box_size).map_err(|e| PipelineError::stage(Stage::Normalize, e))?;
        }
        let el = t0.elapsed();
        obs.stage_finished(Stage::Normalize, el);
        timings.push((Stage::Normalize, el));

        Ok(Generated {
            gaussians: g,
            timings,
            views,
            seed,
            latents_finite,
            init,
            fit_loss: fitted.fit_loss,
            fit_psnr: fitted.fit_psnr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_up_splits_the_largest_gaussians() {
        let mut g = splatforge_fit::init::random_ball(10, 0.5, 1, &mut splatforge_fit::rng::Rng::new(3));
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
        let sep: f32 = (0..3).map(|a| (g.means[4][a] - g.means[10][a]).powi(2)).sum::<f32>().sqrt();
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
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert_eq!(device_memory(&Device::Cpu), None, "the CPU reports no device memory");
        assert_eq!(device_name(&parse_device("CPU").unwrap()), "cpu");
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(feature = "cuda"))]
        assert!(parse_device("cuda:0").unwrap_err().to_string().contains("--features cuda"));
        assert!(matches!(resolve_models(None).unwrap(), ModelSource::HubDiffusers { .. }));
        assert!(matches!(resolve_models(Some("hf:a/b")).unwrap(), ModelSource::HubDiffusers { .. }));
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_models(Some(dir.path().to_str().unwrap())).unwrap_err().to_string();
        assert!(e.contains("make-tiny"), "{e}");
        let e = resolve_models(Some("/no/such/models")).unwrap_err().to_string();
        assert!(e.contains("/no/such/models"), "{e}");
        std::fs::create_dir(dir.path().join("mvdream-diffusers")).unwrap();
        std::fs::write(dir.path().join("mvdream-diffusers/model_index.json"), "{}").unwrap();
        assert_eq!(
            resolve_models(Some(dir.path().to_str().unwrap())).unwrap(),
            ModelSource::Diffusers(dir.path().join("mvdream-diffusers"))
        );
    }
}
