//! TRELLIS image → 3D behind `generate --image` and `serve` with an image profile (`pipeline:
//! trellis`): where the models are, loading them once, one image → Gaussians with the
//! profile's sampler overrides and `output:` settings, and the service's [`Generator`].
//!
//! Models: `--models` is a TRELLIS folder as published (`pipeline.json` + `ckpts/`, e.g.
//! from `splatforge models make-random --family trellis`) or `hf:ORG/NAME[@REV]` (default
//! `hf:microsoft/TRELLIS-image-large`, through the Hugging Face cache). DINOv2 comes from
//! `--dinov2` when given (a weight file, or `hf:ORG/NAME`), else from inside the TRELLIS
//! folder (`dinov2_vitl14_reg4_pretrain.{safetensors,pth}` or `dinov2/model.safetensors`,
//! as `make-random` writes it), else from torch hub's cache or
//! `hf:facebook/dinov2-with-registers-large` (the published folder has no DINOv2).
//!
//! The matte (profile section `matte:`) cuts the object out of pictures without a real
//! alpha: BiRefNet from `matte.weights` (`--matte`), else [`BIREFNET_FOLDER`] (or
//! [`BIREFNET_LITE_FOLDER`] for `birefnet-lite`) inside the TRELLIS folder, else
//! `hf:ZhengPeng7/BiRefNet` (`_lite`); or the plain-background threshold.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::deadline::{RunShape, StageEstimates};
use splatforge_diffusion::Device;
use splatforge_matte::loading::{BIREFNET_LITE_REPO, BIREFNET_REPO};
use splatforge_matte::Matte;
use splatforge_nn::hub::HubConfig;
use splatforge_pipeline::config::{MatteConfig, MatteMethod};
use splatforge_pipeline::pipeline::ensure_min_count;
use splatforge_pipeline::{DeviceMemory, PipelineConfig};
use splatforge_server::{
    BudgetedGeneration, CancelToken, Generation, GenerationError, GenerationRequest, Generator,
};
use splatforge_splat::normalize::{fit_to_box, y_down_to_y_up};
use splatforge_splat::Gaussians;
use splatforge_trellis::config::{
    Checkpoint, PipelineConfig as TrellisPipelineJson, TrellisSource, REQUIRED_MODELS,
    TRELLIS_IMAGE_LARGE_REPO,
};
use splatforge_trellis::foreground::{
    AlphaSource, ForegroundMatte, BIREFNET_FOLDER, BIREFNET_LITE_FOLDER,
};
use splatforge_trellis::noise::{GivenNoise, RunLatents};
use splatforge_trellis::pipeline::{
    dinov2_in_folder, Progress, SamplerOverrides, TrellisImageTo3d, TrellisOutput, TrellisRequest,
};
use splatforge_trellis::preprocess::decode_image;
use splatforge_trellis::sampler::SamplerParams;
use splatforge_trellis::slat_flow::{self, SLatFlowConfig};
use splatforge_trellis::structure::GivenStructure;
use splatforge_trellis::TrellisError;

/// The profile that fits tiny random-weight TRELLIS folders.
pub const TINY_TRELLIS_PROFILE: &str = "image-development";
/// The profile `generate --image` uses with real models and no `--profile`.
pub const DEFAULT_IMAGE_PROFILE: &str = "image-quality";

/// The stage-2 flow width of the smallest real TRELLIS model (image-large: 1024); the tiny
/// random-weight models' is 32.
const REAL_SLAT_FLOW_MIN_CHANNELS: usize = 256;

/// Where the TRELLIS folder and DINOv2's weights are (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrellisModels {
    pub dir: PathBuf,
    pub dinov2: PathBuf,
}

impl TrellisModels {
    pub fn resolve(models: Option<&str>, dinov2: Option<&str>, hub: &HubConfig) -> Result<Self> {
        let spec = models.map_or_else(|| format!("hf:{TRELLIS_IMAGE_LARGE_REPO}"), String::from);
        let dir = TrellisSource::parse(&spec)
            .resolve(hub, &REQUIRED_MODELS)
            .with_context(|| format!("TRELLIS models {spec}"))?;
        let dinov2 = match (dinov2, dinov2_in_folder(&dir)) {
            (Some(spec), _) => splatforge_trellis::dinov2::resolve_weights(Some(spec), hub)?,
            (None, Some(inside)) => inside,
            (None, None) => splatforge_trellis::dinov2::resolve_weights(None, hub)
                .context("DINOv2 (not in the TRELLIS folder; give --dinov2)")?,
        };
        Ok(Self { dir, dinov2 })
    }

    /// Whether the folder holds tiny random-weight models (a narrow stage-2 flow). Anything
    /// unreadable counts as not tiny: loading reports what is wrong with it.
    pub fn is_tiny(&self) -> bool {
        let flow = TrellisPipelineJson::read(&self.dir.join("pipeline.json"))
            .and_then(|p| p.checkpoint_stem(&self.dir, "slat_flow_model"))
            .and_then(|stem| Checkpoint::<SLatFlowConfig>::read(&stem, slat_flow::CLASS));
        flow.is_ok_and(|c| c.args.model_channels < REAL_SLAT_FLOW_MIN_CHANNELS)
    }
}

/// What one run changes from its profile to meet a deadline (see [`super::deadline`]);
/// the default changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOverrides {
    /// Stage-1 sampler steps instead of the profile's.
    pub sparse_structure_steps: Option<usize>,
    /// Stage-2 sampler steps instead of the profile's.
    pub slat_steps: Option<usize>,
    /// A lighter matte than the profile's.
    pub matte: Option<MatteStep>,
    /// FLUX steps instead of the profile's (text via an image).
    pub flux_steps: Option<usize>,
}

/// The matte a deadline switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatteStep {
    /// The profile's `matte.fallback` (the lite network).
    Fallback,
    /// The plain-background threshold.
    Threshold,
}

/// The weights of the matte `method` (see the module docs): `weights` when given, else
/// its folder inside `trellis_dir`, else its hub repository; `None` for the threshold.
pub fn matte_weights(
    method: MatteMethod,
    weights: Option<&String>,
    trellis_dir: &std::path::Path,
) -> Option<String> {
    let (folder, repo) = match method {
        MatteMethod::Threshold => return None,
        MatteMethod::Birefnet => (BIREFNET_FOLDER, BIREFNET_REPO),
        MatteMethod::BirefnetLite => (BIREFNET_LITE_FOLDER, BIREFNET_LITE_REPO),
    };
    if let Some(spec) = weights {
        return Some(spec.clone());
    }
    let inside = trellis_dir.join(folder);
    Some(if inside.join("model.safetensors").is_file() {
        inside.display().to_string()
    } else {
        format!("hf:{repo}")
    })
}

/// `--matte SPEC` as a `--set` of `matte.weights` (quoted: a path may hold YAML syntax).
pub fn matte_weights_set(spec: &str) -> String {
    let quoted = serde_json::to_string(spec).expect("a string serialises");
    format!("matte.weights={quoted}")
}

/// Loads the matte `method` from `weights` (see [`matte_weights`]) on `device`
/// (`matte.precision` on a GPU, f32 on the CPU).
fn load_matte(
    method: MatteMethod,
    weights: Option<&String>,
    matte: &MatteConfig,
    trellis_dir: &std::path::Path,
    device: &Device,
) -> Result<ForegroundMatte> {
    let Some(spec) = matte_weights(method, weights, trellis_dir) else {
        return Ok(ForegroundMatte::Threshold);
    };
    let dtype = if device.is_cpu() {
        splatforge_diffusion::DType::F32
    } else {
        matte.precision.dtype()
    };
    let network = Matte::load_native(&spec, dtype, device)
        .with_context(|| format!("loading the {} matte from {spec}", method.name()))?;
    Ok(ForegroundMatte::Network {
        matte: Box::new(network),
        name: method.name(),
    })
}

/// One image → Gaussians run.
pub struct ImageGenerated {
    /// In `save_ply`'s frame (Y-down; see [`TrellisOutput::gaussians`]).
    pub gaussians: Gaussians,
    /// The 518² RGBA cut-out the 3D stage saw.
    pub cutout: image::RgbaImage,
    /// Where the alpha came from, and which matte ran (`image` when the picture had one).
    pub alpha_source: AlphaSource,
    pub matte: &'static str,
    /// Occupied voxels of the sparse structure.
    pub voxels: usize,
    /// The sampler parameters each stage ran with.
    pub sparse_structure_params: SamplerParams,
    pub slat_params: SamplerParams,
    /// The pipeline's stages, then `normalize` when `output:` changes the splat.
    pub timings: Vec<(&'static str, Duration)>,
    pub seed: u64,
    /// What the run sampled, when the runner keeps it ([`TrellisRunner::for_parity`]).
    pub latents: Option<RunLatents>,
}

impl ImageGenerated {
    pub fn total(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }

    /// What this run did, as the deadline estimates count it (`flux_steps` for text).
    pub fn shape(&self, flux_steps: Option<usize>) -> RunShape {
        RunShape {
            sparse_structure_steps: self.sparse_structure_params.steps,
            slat_steps: self.slat_params.steps,
            matte: self.matte,
            flux_steps,
        }
    }

    /// The service's answer: the Gaussians, turned Y-up when `y_up` (the request's
    /// [`GenerationRequest::y_up`]), and the stage times.
    pub fn into_generation(mut self, y_up: bool) -> Generation {
        if y_up {
            y_down_to_y_up(&mut self.gaussians);
        }
        Generation {
            gaussians: self.gaussians,
            stage_timings: self
                .timings
                .iter()
                .map(|(s, d)| (s.to_string(), *d))
                .collect(),
        }
    }
}

/// TRELLIS loaded once, with the profile it runs.
pub struct TrellisRunner {
    pipe: TrellisImageTo3d,
    matte: ForegroundMatte,
    /// `matte.fallback`, loaded beside it for deadlines.
    fallback_matte: Option<ForegroundMatte>,
    config: PipelineConfig,
    profile: String,
    models: TrellisModels,
    /// Every run's initial noise instead of its seed's (`generate --noise`).
    noise: Option<Arc<GivenNoise>>,
    /// Whether runs keep their latents (`generate --save-latents`).
    keep_latents: bool,
    /// Every run's sparse structure instead of stage 1's (`generate --structure`).
    structure: Option<Arc<GivenStructure>>,
}

impl TrellisRunner {
    /// Loads `models` and the matte on `device` for the TRELLIS profile `config` (weights
    /// in its `trellis.precision` / `matte.precision` on a GPU, f32 on the CPU).
    pub fn load(
        models: TrellisModels,
        device: &Device,
        profile: &str,
        config: PipelineConfig,
    ) -> Result<Self> {
        anyhow::ensure!(
            config.pipeline.runs_trellis(),
            "profile {profile} runs the {} pipeline (text → 3D), not TRELLIS",
            config.pipeline.name()
        );
        let dtype = if device.is_cpu() {
            splatforge_diffusion::DType::F32
        } else {
            config.trellis.precision.dtype()
        };
        let pipe = TrellisImageTo3d::load(&models.dir, &models.dinov2, dtype, device)
            .with_context(|| format!("loading TRELLIS from {}", models.dir.display()))?;
        let m = &config.matte;
        let matte = load_matte(m.method, m.weights.as_ref(), m, &models.dir, device)?;
        // A fallback lighter than the profile's network: behind the full BiRefNet only.
        let fallback_matte = m
            .fallback
            .filter(|_| m.method == MatteMethod::Birefnet)
            .map(|method| load_matte(method, m.fallback_weights.as_ref(), m, &models.dir, device))
            .transpose()?;
        Ok(Self {
            pipe,
            matte,
            fallback_matte,
            config,
            profile: profile.to_string(),
            models,
            noise: None,
            keep_latents: false,
            structure: None,
        })
    }

    /// For a parity run against the official pipeline: every run starts from `noise` (read
    /// by [`GivenNoise::read`]) instead of its seed's when given, and keeps what it sampled
    /// in [`ImageGenerated::latents`] when `keep_latents`.
    pub fn for_parity(self, noise: Option<GivenNoise>, keep_latents: bool) -> Self {
        Self {
            noise: noise.map(Arc::new),
            keep_latents,
            ..self
        }
    }

    /// Every run on the voxels of `structure` (stage 1 skipped) when given.
    pub fn on_structure(self, structure: Option<GivenStructure>) -> Self {
        Self {
            structure: structure.map(Arc::new),
            ..self
        }
    }

    /// The profile's sampler overrides, with the run's, as the pipeline's request.
    fn request(&self, seed: u64, overrides: &RunOverrides) -> TrellisRequest {
        let t = &self.config.trellis;
        TrellisRequest {
            seed,
            sparse_structure: SamplerOverrides {
                steps: overrides
                    .sparse_structure_steps
                    .or(t.sparse_structure_steps),
                cfg_strength: t.sparse_structure_cfg,
            },
            slat: SamplerOverrides {
                steps: overrides.slat_steps.or(t.slat_steps),
                cfg_strength: t.slat_cfg,
            },
            noise: self.noise.clone(),
            structure: self.structure.clone(),
            keep_latents: self.keep_latents,
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    pub fn models(&self) -> &TrellisModels {
        &self.models
    }

    pub fn device(&self) -> &Device {
        self.pipe.device()
    }

    /// The matte opaque pictures get.
    pub fn matte(&self) -> &ForegroundMatte {
        &self.matte
    }

    /// The lighter matte a deadline may switch to (`matte.fallback`).
    pub fn fallback_matte(&self) -> Option<&ForegroundMatte> {
        self.fallback_matte.as_ref()
    }

    /// Runs each matte (the profile's, its fallback, the threshold) once on an opaque
    /// picture, timed into `estimates`: the warm-up, which also loads their kernels.
    pub fn warm_up_mattes(
        &self,
        estimates: &StageEstimates,
    ) -> std::result::Result<(), TrellisError> {
        let opaque = warm_up_disc(true);
        let mattes = [Some(&self.matte), self.fallback_matte.as_ref()];
        for matte in mattes
            .into_iter()
            .flatten()
            .chain([&ForegroundMatte::Threshold])
        {
            let t0 = Instant::now();
            matte.apply(&opaque)?;
            estimates.record_matte(matte.name(), t0.elapsed());
        }
        Ok(())
    }

    /// The sampler steps a run with `overrides` takes: (stage 1, stage 2).
    pub fn sampler_steps(&self, overrides: &RunOverrides) -> (usize, usize) {
        let (ss, slat) = self.pipe.sampler_params(&self.request(0, overrides));
        (ss.steps, slat.steps)
    }

    pub fn device_memory(&self) -> Option<DeviceMemory> {
        splatforge_pipeline::device_memory(self.pipe.device())
    }

    /// Image file bytes → Gaussians with `seed` (`None`: the profile's); `progress` as
    /// [`TrellisImageTo3d::run`]'s (a `Break` cancels).
    pub fn generate(
        &self,
        image: &[u8],
        seed: Option<u64>,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> std::result::Result<ImageGenerated, TrellisError> {
        self.generate_with(image, seed, &RunOverrides::default(), progress)
    }

    /// [`Self::generate`] with `overrides` (a deadline's degradations).
    pub fn generate_with(
        &self,
        image: &[u8],
        seed: Option<u64>,
        overrides: &RunOverrides,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> std::result::Result<ImageGenerated, TrellisError> {
        self.generate_decoded(&decode_image(image)?, seed, overrides, progress)
    }

    /// [`Self::generate_with`] on a decoded picture (an opaque one gets the profile's matte
    /// in the `matte` stage, or the threshold when `overrides` say so).
    pub fn generate_decoded(
        &self,
        image: &image::RgbaImage,
        seed: Option<u64>,
        overrides: &RunOverrides,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> std::result::Result<ImageGenerated, TrellisError> {
        let seed = seed.unwrap_or(self.config.seed);
        let matte = match (overrides.matte, &self.fallback_matte) {
            (None, _) => &self.matte,
            (Some(MatteStep::Fallback), Some(fallback)) => fallback,
            (Some(_), _) => &ForegroundMatte::Threshold,
        };
        let out = self
            .pipe
            .run(image, &self.request(seed, overrides), matte, progress)?;
        let TrellisOutput {
            mut gaussians,
            cutout,
            alpha_source,
            voxels,
            sparse_structure_params,
            slat_params,
            timings,
            latents,
        } = out;
        let mut timings: Vec<(&'static str, Duration)> =
            timings.iter().map(|(s, d)| (s.name(), *d)).collect();
        let o = &self.config.output;
        if o.normalize || o.min_gaussians > gaussians.len() {
            let t0 = Instant::now();
            ensure_min_count(&mut gaussians, o.min_gaussians);
            if o.normalize {
                fit_to_box(&mut gaussians, o.box_size)
                    .map_err(|e| TrellisError::InvalidArgument(e.to_string()))?;
            }
            timings.push(("normalize", t0.elapsed()));
        }
        Ok(ImageGenerated {
            gaussians,
            cutout,
            alpha_source,
            matte: match alpha_source {
                AlphaSource::Image => "image",
                _ => matte.name(),
            },
            voxels,
            sparse_structure_params,
            slat_params,
            timings,
            seed,
            latents,
        })
    }
}

/// The service's view of a TRELLIS error: a bad image is the client's fault (its message
/// says what is wrong), out of device memory keeps the worker serving.
pub fn generation_error(e: TrellisError) -> GenerationError {
    match e {
        TrellisError::Cancelled => GenerationError::Cancelled,
        // Decoding and preprocessing name a bad picture's fault after "image:".
        TrellisError::InvalidArgument(m) if m.starts_with("image:") => GenerationError::BadInput(m),
        e @ TrellisError::EmptyStructure => GenerationError::BadInput(e.to_string()),
        e if splatforge_pipeline::is_out_of_memory(&e.to_string()) => {
            GenerationError::OutOfMemory(e.to_string())
        }
        e => GenerationError::Failed(e.to_string()),
    }
}

/// [`TrellisRunner`] as the service's generator: the request's image (its prompt is not
/// read), cancelled between stages and at every sampler step; with a deadline, degraded
/// to fit it ([`super::deadline`]).
pub struct TrellisGenerator {
    runner: TrellisRunner,
    name: String,
    estimates: StageEstimates,
}

impl TrellisGenerator {
    pub fn new(runner: TrellisRunner) -> Self {
        let name = format!("trellis:{}", runner.profile());
        Self {
            runner,
            name,
            estimates: StageEstimates::default(),
        }
    }

    /// What a run of the profile does, as the estimates count it.
    fn full_shape(&self) -> RunShape {
        let (sparse_structure_steps, slat_steps) =
            self.runner.sampler_steps(&RunOverrides::default());
        RunShape {
            sparse_structure_steps,
            slat_steps,
            matte: self.runner.matte().name(),
            flux_steps: None,
        }
    }

    /// One request with `overrides`; its stage times feed the estimates.
    fn run(
        &self,
        request: &GenerationRequest,
        overrides: &RunOverrides,
        cancel: &CancelToken,
    ) -> std::result::Result<Generation, GenerationError> {
        let image = request.image.as_deref().ok_or_else(|| {
            GenerationError::Failed(
                "this server turns images into 3D; the request has no image".into(),
            )
        })?;
        let out = self
            .runner
            .generate_with(image, request.seed, overrides, |_: Progress| {
                cancel.control_flow()
            })
            .map_err(generation_error)?;
        self.estimates
            .record(&out.timings, &out.shape(None), out.alpha_source, true);
        Ok(out.into_generation(request.y_up))
    }
}

/// A 64² picture with a disc: on transparent black (`opaque` false: no matte runs) or on
/// white (the matte runs); the warm-up inputs.
fn warm_up_disc(opaque: bool) -> image::RgbaImage {
    image::RgbaImage::from_fn(64, 64, |x, y| {
        let (dx, dy) = (x as f32 - 32.0, y as f32 - 32.0);
        image::Rgba(match (dx * dx + dy * dy < 400.0, opaque) {
            (true, _) => [200, 200, 210, 255],
            (false, true) => [255, 255, 255, 255],
            (false, false) => [0, 0, 0, 0],
        })
    })
}

impl Generator for TrellisGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> std::result::Result<Generation, GenerationError> {
        self.run(request, &RunOverrides::default(), cancel)
    }

    fn generate_by(
        &self,
        request: &GenerationRequest,
        deadline: Instant,
        cancel: &CancelToken,
    ) -> std::result::Result<BudgetedGeneration, GenerationError> {
        let fallback = self.runner.fallback_matte().map(ForegroundMatte::name);
        let plan = self
            .estimates
            .plan_by(&self.full_shape(), fallback, deadline);
        Ok(BudgetedGeneration {
            generation: self.run(request, &plan.overrides, cancel)?,
            degradations: plan.degradations,
        })
    }

    /// Every matte alone on an opaque picture (random weights may find no object in it),
    /// then the whole pipeline on a transparent one; all timed for the deadline estimates.
    fn warm_up(&self) -> std::result::Result<(), GenerationError> {
        self.runner
            .warm_up_mattes(&self.estimates)
            .map_err(generation_error)?;
        let disc = super::encode_png(warm_up_disc(false))
            .map_err(|e| GenerationError::Failed(e.to_string()))?;
        match self
            .runner
            .generate(&disc, None, |_| ControlFlow::Continue(()))
        {
            Ok(out) => {
                self.estimates
                    .record(&out.timings, &out.shape(None), out.alpha_source, false);
                Ok(())
            }
            // Random or real weights may see no object in the disc: the models ran.
            Err(TrellisError::EmptyStructure) => Ok(()),
            Err(e) => Err(generation_error(e)),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn concurrent(&self) -> bool {
        splatforge_nn::device::threads_may_share(self.runner.device())
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.runner.device_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_service_outcomes() {
        assert_eq!(
            generation_error(TrellisError::Cancelled),
            GenerationError::Cancelled
        );
        assert!(matches!(
            generation_error(TrellisError::EmptyStructure),
            GenerationError::BadInput(_)
        ));
        let clear = TrellisError::InvalidArgument("image: fully transparent".into());
        assert!(
            matches!(generation_error(clear), GenerationError::BadInput(m) if m.contains("transparent"))
        );
        let oom = TrellisError::Config("CUDA_ERROR_OUT_OF_MEMORY".into());
        assert!(matches!(
            generation_error(oom),
            GenerationError::OutOfMemory(_)
        ));
        let other = TrellisError::Config("bad shape".into());
        assert!(matches!(
            generation_error(other),
            GenerationError::Failed(_)
        ));
        let internal = TrellisError::InvalidArgument("SLatFlowModel: 3 voxels".into());
        assert!(matches!(
            generation_error(internal),
            GenerationError::Failed(_)
        ));
    }
}
