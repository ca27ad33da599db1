//! Text → 3D through an image (`pipeline: flux-trellis`): FLUX.1-schnell draws the
//! profile's `flux.prompt_template` around the prompt, the profile's matte cuts the object
//! out (TRELLIS' `matte` stage on the opaque picture), and the [`TrellisRunner`] turns it
//! into Gaussians. Behind `generate --prompt` with a
//! flux-trellis profile and `serve` with one.
//!
//! Models: FLUX from `--flux` (a diffusers-layout folder, e.g. `flux-schnell-diffusers/`
//! of `splatforge models make-tiny DIR`, or `hf:ORG/NAME[@REV]`; default
//! [`FLUX_SCHNELL_REPO`] through the Hugging Face cache), TRELLIS from `--models` as for
//! images ([`TrellisModels`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use splatforge_diffusion::flux::FLUX_SCHNELL_REPO;
use splatforge_diffusion::{
    load_flux, DiffusionError, FluxPipeline, FluxRequest, HubConfig, LoadOptions, ModelSource,
};
use splatforge_pipeline::{DeviceMemory, PipelineConfig, PipelineKind};
use splatforge_server::{
    BudgetedGeneration, CancelToken, Generation, GenerationError, GenerationRequest, Generator,
};
use splatforge_trellis::foreground::ForegroundMatte;
use splatforge_trellis::pipeline::Progress;
use splatforge_trellis::TrellisError;

use super::deadline::{RunShape, StageEstimates};
use super::trellis_generator::{
    generation_error, ImageGenerated, RunOverrides, TrellisModels, TrellisRunner,
};

/// The profile `--flux` picks without `--profile` for real TRELLIS models.
pub const DEFAULT_TEXT_IMAGE_PROFILE: &str = "text-image-quality";
/// The profile that fits the tiny random-weight FLUX and TRELLIS models.
pub const TINY_TEXT_IMAGE_PROFILE: &str = "text-image-development";

/// The FLUX stages before TRELLIS' own, as in timings and metrics.
pub const FLUX_TEXT: &str = "flux_text";
pub const FLUX: &str = "flux";
pub const FLUX_DECODE: &str = "flux_decode";

/// `--flux SPEC` (None: [`FLUX_SCHNELL_REPO`] from the hub) as a model source; a local
/// path must be a diffusers-layout folder (checked here, before anything loads).
pub fn flux_source(spec: Option<&str>) -> Result<ModelSource> {
    let spec = spec.map_or_else(|| format!("hf:{FLUX_SCHNELL_REPO}"), String::from);
    match ModelSource::parse(&spec) {
        ModelSource::Diffusers(dir) => {
            if !dir.join("transformer/config.json").is_file() {
                bail!(
                    "--flux {spec}: no FLUX model here (expected a diffusers-layout folder with transformer/config.json, e.g. a snapshot of {FLUX_SCHNELL_REPO})"
                );
            }
            Ok(ModelSource::Diffusers(dir))
        }
        source @ ModelSource::HubDiffusers { .. } => Ok(source),
        ModelSource::Ldm { checkpoint, .. } => bail!(
            "--flux {}: not a folder (FLUX loads from a diffusers-layout folder or hf:ORG/NAME)",
            checkpoint.display()
        ),
        ModelSource::HubLdm { .. } => {
            bail!("--flux {spec}: name a repository (hf:ORG/NAME), not a file in it")
        }
    }
}

/// What a stage of the whole chain tells the caller (FLUX's stages, then TRELLIS').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageProgress {
    /// A stage begins; `steps` sampler steps (0: one indivisible step).
    Started { stage: &'static str, steps: usize },
    /// Sampler step `done` of `total` finished.
    Step { done: usize, total: usize },
    /// The stage ended after `elapsed`.
    Finished { elapsed: Duration },
}

impl From<Progress> for StageProgress {
    fn from(p: Progress) -> Self {
        match p {
            Progress::Started { stage, steps } => StageProgress::Started {
                stage: stage.name(),
                steps,
            },
            Progress::Step { done, total, .. } => StageProgress::Step { done, total },
            Progress::Finished { elapsed, .. } => StageProgress::Finished { elapsed },
        }
    }
}

/// Why a text → 3D run failed.
#[derive(Debug, thiserror::Error)]
pub enum TextTo3dError {
    #[error("FLUX: {0}")]
    Flux(#[from] DiffusionError),
    #[error(transparent)]
    Trellis(#[from] TrellisError),
}

/// One text → Gaussians run.
pub struct TextGenerated {
    /// The picture FLUX drew.
    pub image: image::RgbImage,
    /// TRELLIS' run on it, with FLUX's stages first in its timings.
    pub out: ImageGenerated,
    /// The FLUX steps it ran.
    pub flux_steps: usize,
}

/// FLUX and TRELLIS loaded once, with the flux-trellis profile they run.
pub struct FluxTrellisRunner {
    flux: FluxPipeline,
    trellis: TrellisRunner,
}

impl FluxTrellisRunner {
    /// Loads FLUX from `flux` and TRELLIS from `models` on `device` for the flux-trellis
    /// profile `config` (`flux.precision` / `trellis.precision` on a GPU, f32 on the CPU).
    pub fn load(
        flux: &ModelSource,
        models: TrellisModels,
        device: &splatforge_diffusion::Device,
        profile: &str,
        config: PipelineConfig,
        hub: HubConfig,
    ) -> Result<Self> {
        anyhow::ensure!(
            config.pipeline == PipelineKind::FluxTrellis,
            "profile {profile} runs the {} pipeline, not flux-trellis (text → FLUX → TRELLIS)",
            config.pipeline.name()
        );
        let f = &config.flux;
        let (dtype, vae_dtype) = if device.is_cpu() {
            (splatforge_diffusion::DType::F32, None)
        } else {
            (f.precision.dtype(), f.vae_precision.map(|p| p.dtype()))
        };
        let opts = LoadOptions {
            device: device.clone(),
            dtype,
            vae_dtype,
            hub,
        };
        let flux = load_flux(flux, &opts).context("loading FLUX")?;
        let trellis = TrellisRunner::load(models, device, profile, config)?;
        Ok(Self { flux, trellis })
    }

    pub fn trellis(&self) -> &TrellisRunner {
        &self.trellis
    }

    /// Where FLUX came from.
    pub fn flux_source(&self) -> &str {
        &self.flux.source
    }

    /// Text → Gaussians with `seed` (`None`: the profile's) for both FLUX's noise and
    /// TRELLIS'; `progress` hears of every stage, `Break` cancels.
    pub fn generate(
        &self,
        prompt: &str,
        seed: Option<u64>,
        progress: impl FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<TextGenerated, TextTo3dError> {
        self.generate_with(prompt, seed, &RunOverrides::default(), progress)
    }

    /// [`Self::generate`] with `overrides` (a deadline's degradations).
    pub fn generate_with(
        &self,
        prompt: &str,
        seed: Option<u64>,
        overrides: &RunOverrides,
        mut progress: impl FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<TextGenerated, TextTo3dError> {
        let config = self.trellis.config();
        let seed = seed.unwrap_or(config.seed);
        let f = &config.flux;
        let request = FluxRequest {
            prompt: f.prompt(prompt),
            steps: overrides.flux_steps.unwrap_or(f.steps),
            seed,
            width: f.width,
            height: f.height,
            max_sequence_length: f.max_sequence_length,
            guidance: f.guidance,
        };
        let mut timings = Vec::new();
        let stage = |name: &'static str,
                     steps: usize,
                     progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>|
         -> Result<Instant, TextTo3dError> {
            if progress(StageProgress::Started { stage: name, steps }).is_break() {
                return Err(DiffusionError::Cancelled.into());
            }
            Ok(Instant::now())
        };
        let mut finish = |name: &'static str,
                          t0: Instant,
                          progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>|
         -> Result<(), TextTo3dError> {
            let elapsed = t0.elapsed();
            timings.push((name, elapsed));
            if progress(StageProgress::Finished { elapsed }).is_break() {
                return Err(DiffusionError::Cancelled.into());
            }
            Ok(())
        };

        let t0 = stage(FLUX_TEXT, 0, &mut progress)?;
        let text = self
            .flux
            .encode_prompt(&request.prompt, request.max_sequence_length)?;
        finish(FLUX_TEXT, t0, &mut progress)?;

        let t0 = stage(FLUX, request.steps, &mut progress)?;
        let latents = self.flux.sample_latents(&text, &request, |done, total| {
            progress(StageProgress::Step { done, total })
        })?;
        finish(FLUX, t0, &mut progress)?;

        let t0 = stage(FLUX_DECODE, 0, &mut progress)?;
        let images = self.flux.decode_latents(&latents)?;
        let image = splatforge_diffusion::vae::tensor_to_rgb_images(&images)?
            .into_iter()
            .next()
            .ok_or_else(|| DiffusionError::Config("the VAE decoded no image".into()))?;
        finish(FLUX_DECODE, t0, &mut progress)?;

        let rgba = image::DynamicImage::ImageRgb8(image.clone()).to_rgba8();
        let mut out = self
            .trellis
            .generate_decoded(&rgba, Some(seed), overrides, |p| progress(p.into()))?;
        timings.append(&mut out.timings);
        out.timings = timings;
        Ok(TextGenerated {
            image,
            out,
            flux_steps: request.steps,
        })
    }
}

/// The service's view of a text → 3D error.
pub fn text_generation_error(e: TextTo3dError) -> GenerationError {
    match e {
        TextTo3dError::Flux(DiffusionError::Cancelled) => GenerationError::Cancelled,
        TextTo3dError::Flux(e) if splatforge_pipeline::is_out_of_memory(&e.to_string()) => {
            GenerationError::OutOfMemory(format!("FLUX: {e}"))
        }
        TextTo3dError::Flux(e) => GenerationError::Failed(format!("FLUX: {e}")),
        // The picture is FLUX's, not the client's: TRELLIS finding no object in it is a
        // failed generation, not a bad request.
        TextTo3dError::Trellis(e @ TrellisError::EmptyStructure) => {
            GenerationError::Failed(e.to_string())
        }
        TextTo3dError::Trellis(e) => match generation_error(e) {
            GenerationError::BadInput(m) => GenerationError::Failed(m),
            other => other,
        },
    }
}

/// [`FluxTrellisRunner`] as the service's generator: the request's text prompt, cancelled
/// between stages and at every sampler step; with a deadline, degraded to fit it
/// ([`super::deadline`]).
pub struct FluxTrellisGenerator {
    runner: FluxTrellisRunner,
    name: String,
    estimates: StageEstimates,
}

impl FluxTrellisGenerator {
    pub fn new(runner: FluxTrellisRunner) -> Self {
        let name = format!("flux-trellis:{}", runner.trellis().profile());
        Self {
            runner,
            name,
            estimates: StageEstimates::default(),
        }
    }

    /// What a run of the profile does, as the estimates count it.
    fn full_shape(&self) -> RunShape {
        let trellis = self.runner.trellis();
        let (sparse_structure_steps, slat_steps) = trellis.sampler_steps(&RunOverrides::default());
        RunShape {
            sparse_structure_steps,
            slat_steps,
            matte: trellis.matte().name(),
            flux_steps: Some(trellis.config().flux.steps),
        }
    }

    /// One request with `overrides`; its stage times feed the estimates.
    fn run(
        &self,
        request: &GenerationRequest,
        overrides: &RunOverrides,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let done = self
            .runner
            .generate_with(
                &request.prompt,
                request.seed,
                overrides,
                |_: StageProgress| cancel.control_flow(),
            )
            .map_err(text_generation_error)?;
        self.record(&done, true);
        Ok(done.out.into_generation(request.y_up))
    }

    fn record(&self, done: &TextGenerated, request: bool) {
        let out = &done.out;
        self.estimates.record(
            &out.timings,
            &out.shape(Some(done.flux_steps)),
            out.alpha_source,
            request,
        );
    }
}

impl Generator for FluxTrellisGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        self.run(request, &RunOverrides::default(), cancel)
    }

    fn generate_by(
        &self,
        request: &GenerationRequest,
        deadline: Instant,
        cancel: &CancelToken,
    ) -> Result<BudgetedGeneration, GenerationError> {
        let fallback = self
            .runner
            .trellis()
            .fallback_matte()
            .map(ForegroundMatte::name);
        let plan = self
            .estimates
            .plan_by(&self.full_shape(), fallback, deadline);
        Ok(BudgetedGeneration {
            generation: self.run(request, &plan.overrides, cancel)?,
            degradations: plan.degradations,
        })
    }

    fn warm_up(&self) -> Result<(), GenerationError> {
        self.runner
            .trellis()
            .warm_up_mattes(&self.estimates)
            .map_err(|e| text_generation_error(e.into()))?;
        match self
            .runner
            .generate("a chair", None, |_| ControlFlow::Continue(()))
        {
            Ok(done) => {
                self.record(&done, false);
                Ok(())
            }
            // Random or real weights may draw nothing TRELLIS (or the matte) sees as an
            // object: the models ran.
            Err(TextTo3dError::Trellis(TrellisError::EmptyStructure)) => Ok(()),
            Err(TextTo3dError::Trellis(TrellisError::InvalidArgument(m)))
                if m.starts_with("image:") =>
            {
                Ok(())
            }
            Err(e) => Err(text_generation_error(e)),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn concurrent(&self) -> bool {
        splatforge_nn::device::threads_may_share(self.runner.trellis().device())
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.runner.trellis().device_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_sources_are_checked_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let msg = format!("{:#}", flux_source(dir.path().to_str()).unwrap_err());
        assert!(msg.contains("no FLUX model here"), "{msg}");
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let msg = format!("{:#}", flux_source(file.to_str()).unwrap_err());
        assert!(msg.contains("not a folder"), "{msg}");
        let msg = format!(
            "{:#}",
            flux_source(Some("hf:a/b:f.safetensors")).unwrap_err()
        );
        assert!(msg.contains("not a file in it"), "{msg}");
        assert!(matches!(
            flux_source(None).unwrap(),
            ModelSource::HubDiffusers { repo, .. } if repo == FLUX_SCHNELL_REPO
        ));
    }

    #[test]
    fn errors_map_to_the_service_outcomes() {
        assert_eq!(
            text_generation_error(DiffusionError::Cancelled.into()),
            GenerationError::Cancelled
        );
        assert_eq!(
            text_generation_error(TrellisError::Cancelled.into()),
            GenerationError::Cancelled
        );
        // Nothing in FLUX's picture is the generator's failure, never the client's.
        assert!(matches!(
            text_generation_error(TrellisError::EmptyStructure.into()),
            GenerationError::Failed(_)
        ));
        assert!(matches!(
            text_generation_error(
                TrellisError::InvalidArgument("image: fully transparent".into()).into()
            ),
            GenerationError::Failed(_)
        ));
        assert!(matches!(
            text_generation_error(DiffusionError::Config("CUDA_ERROR_OUT_OF_MEMORY".into()).into()),
            GenerationError::OutOfMemory(_)
        ));
    }
}
