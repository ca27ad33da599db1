//! `TrellisImageTo3DPipeline` (`trellis/pipelines/trellis_image_to_3d.py`) for Gaussians:
//! image → condition → sparse structure → structured latent → Gaussians, stage by stage with
//! progress and wall times; and [`write_random_trellis`], a whole random-weight TRELLIS
//! folder.
//!
//! # Equal to the official `run(image, seed, …, formats=["gaussian"])`
//! * `preprocess_image` (alpha as given; see [`crate::preprocess`]), `get_cond` (DINOv2
//!   tokens, zeros as `neg_cond`);
//! * `sample_sparse_structure`: noise `[1, C, R, R, R]`, the pipeline's
//!   `sparse_structure_sampler` with the caller's `steps` / `cfg_strength` merged over its
//!   `params` (`{**self.sparse_structure_sampler_params, **params}`), the decoder,
//!   `argwhere(logits > 0)`;
//! * `sample_slat`: noise `[N, in_channels]` on those voxels, the `slat_sampler` merged the
//!   same way, `slat · std + mean` with `slat_normalization`;
//! * `decode_slat` with the Gaussian decoder, the Gaussians as `save_ply` writes them
//!   ([`crate::gaussians`]).
//!
//! With a given structure ([`TrellisRequest::structure`]) it is `run_detail_variation`
//! instead: `preprocess_voxel`'s voxels replace `sample_sparse_structure`, and the rest is
//! the same.
//!
//! # Not equal
//! * Noise: torch's `manual_seed(seed)` + `randn` (Philox on CUDA, MT19937 on the CPU) is not
//!   reproducible outside torch; ours is the workspace's seeded SplitMix64 + Box–Muller
//!   ([`splatforge_nn::rng`]). As in the official code one stream serves both stages, in
//!   the same order: the stage-1 noise is its first values, the stage-2 noise continues it
//!   ([`slat_noise_seed`]). The same seed gives the same splat on every device here; a
//!   parity run against the official code hands both stages the noise torch drew instead
//!   ([`TrellisRequest::noise`], a file of [`crate::noise`]): everything after the initial
//!   noise is the same code either way.
//! * Opaque pictures: TRELLIS runs `rembg`; we run the caller's [`ForegroundMatte`]
//!   (BiRefNet, or the plain-background threshold) in a stage of its own, `matte`.
//! * One sample per run (`num_samples = 1`); no mesh or radiance-field decoders.
//! * An empty structure (no voxel with `logits > 0`) is an error here
//!   ([`TrellisError::EmptyStructure`]); the official code fails later, inside the decoder.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::RgbaImage;
use serde::{Deserialize, Serialize};
use splatforge_nn::rng::GAMMA;
use splatforge_nn::weights::RandomRecorder;
use splatforge_splat::Gaussians;

use crate::config::{bad_file, checkpoint_weights, write_checkpoint, Checkpoint, PipelineConfig};
use crate::dinov2::{Dinov2Config, DINOV2_HUB_CHECKPOINT};
use crate::foreground::{AlphaSource, ForegroundMatte, BIREFNET_FOLDER, BIREFNET_LITE_FOLDER};
use crate::gs_decoder::{self, GaussianDecoder, GaussianDecoderConfig};
use crate::noise::{GivenNoise, RunLatents};
use crate::preprocess::{cutout, on_black};
use crate::sampler::SamplerParams;
use crate::slat_flow::{self, denormalize_slat, SLatFlowConfig, SLatFlowModel, SlatVelocity};
use crate::sparse::SparseTensor;
use crate::ss_decoder::SparseStructureDecoderConfig;
use crate::ss_flow::SparseStructureFlowConfig;
use crate::stage1::{stage1_configs, write_random_stage1, ModelSize, Stage1};
use crate::structure::GivenStructure;
use crate::{Result, TrellisError};
use splatforge_matte::random::{write_random_birefnet_with_contrast, RANDOM_MATTE_CONTRAST};
use splatforge_matte::BiRefNetConfig;

/// The stages of one run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrellisStage {
    /// The object's alpha: the image's own, else the matte network's or the threshold's.
    Matte,
    /// `preprocess_image`: crop, 518² Lanczos (CPU).
    Preprocess,
    /// `get_cond`: DINOv2 tokens.
    Dinov2,
    /// Stage 1 sampling: the flow over the 16³ structure latent.
    SparseStructure,
    /// Stage 1 decoding: the structure decoder, occupied voxels.
    SsDecoder,
    /// Stage 2 sampling: the flow over the occupied voxels' latent, de-normalised.
    Slat,
    /// The Gaussian decoder and the `save_ply` values.
    GsDecoder,
}

impl TrellisStage {
    pub const ALL: [TrellisStage; 7] = [
        TrellisStage::Matte,
        TrellisStage::Preprocess,
        TrellisStage::Dinov2,
        TrellisStage::SparseStructure,
        TrellisStage::SsDecoder,
        TrellisStage::Slat,
        TrellisStage::GsDecoder,
    ];

    /// A short identifier (`[a-z_0-9]`), as in timings and metrics.
    pub fn name(self) -> &'static str {
        match self {
            TrellisStage::Matte => "matte",
            TrellisStage::Preprocess => "preprocess",
            TrellisStage::Dinov2 => "dinov2",
            TrellisStage::SparseStructure => "sparse_structure",
            TrellisStage::SsDecoder => "ss_decoder",
            TrellisStage::Slat => "slat",
            TrellisStage::GsDecoder => "gs_decoder",
        }
    }
}

impl std::fmt::Display for TrellisStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// What the progress callback of [`TrellisImageTo3d::run`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A stage begins; `steps` sampler steps (0: one indivisible step).
    Started { stage: TrellisStage, steps: usize },
    /// Sampler step `done` of `total` (from 1) of a sampling stage finished.
    Step {
        stage: TrellisStage,
        done: usize,
        total: usize,
    },
    /// A stage ended after `elapsed`.
    Finished {
        stage: TrellisStage,
        elapsed: Duration,
    },
}

/// A caller's changes to one sampler's `params` (`None`: `pipeline.json`'s value), merged
/// over them as the official `{**self.*_sampler_params, **params}`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SamplerOverrides {
    pub steps: Option<usize>,
    pub cfg_strength: Option<f64>,
}

impl SamplerOverrides {
    /// `base` with these overrides.
    pub fn apply(&self, base: &SamplerParams) -> SamplerParams {
        SamplerParams {
            steps: self.steps.unwrap_or(base.steps),
            cfg_strength: self.cfg_strength.unwrap_or(base.cfg_strength),
            ..*base
        }
    }
}

/// One run's choices.
#[derive(Debug, Clone, Default)]
pub struct TrellisRequest {
    /// The noise seed of both stages (the official `seed`, default 42 there).
    pub seed: u64,
    /// `sparse_structure_sampler_params`.
    pub sparse_structure: SamplerOverrides,
    /// `slat_sampler_params`.
    pub slat: SamplerOverrides,
    /// Both stages' initial noise, given instead of drawn from `seed` (a parity run).
    pub noise: Option<Arc<GivenNoise>>,
    /// The sparse structure, given instead of sampled: stage 1 is skipped, and stage 2's
    /// noise is the seed's stream from its start (the official `run_detail_variation` draws
    /// it first after seeding).
    pub structure: Option<Arc<GivenStructure>>,
    /// Keep what the run sampled in [`TrellisOutput::latents`].
    pub keep_latents: bool,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct TrellisOutput {
    /// `save_ply`'s Gaussians in TRELLIS' unit cube, in `save_ply`'s frame: TRELLIS' Z-up
    /// turned by `(x, y, z)` → `(x, −z, y)`, so the object's up is −Y (Y-down, the frame
    /// 404's older subnet used; [`splatforge_splat::normalize::y_down_to_y_up`] turns it
    /// upright for Y-up consumers).
    pub gaussians: Gaussians,
    /// The 518² RGBA cut-out the conditioning saw (before its colour went on black).
    pub cutout: RgbaImage,
    /// Where the alpha came from.
    pub alpha_source: AlphaSource,
    /// Occupied voxels of the sparse structure.
    pub voxels: usize,
    /// The sampler parameters each stage ran with.
    pub sparse_structure_params: SamplerParams,
    pub slat_params: SamplerParams,
    /// Wall time of each stage, in order.
    pub timings: Vec<(TrellisStage, Duration)>,
    /// The noise, latents and voxels of the run, when the request kept them.
    pub latents: Option<RunLatents>,
}

impl TrellisOutput {
    pub fn total(&self) -> Duration {
        self.timings.iter().map(|(_, d)| *d).sum()
    }
}

/// Stage 1's noise and sampled latent, each `[1, C, R, R, R]`, when a run keeps them.
type Stage1Latents = (Tensor, Tensor);

/// The seed whose stream continues the stage-1 noise of `seed` after `stage1_values`
/// normals: SplitMix64's state after `k` draws is `seed + k·γ`, and
/// [`splatforge_nn::rng::randn`] draws two per pair of values (an odd count rounds up).
pub fn slat_noise_seed(seed: u64, stage1_values: usize) -> u64 {
    let draws = stage1_values.div_ceil(2) * 2;
    seed.wrapping_add((draws as u64).wrapping_mul(GAMMA))
}

/// Times the stages of one run and tells the progress callback; a `Break` from the
/// callback ends the run with [`TrellisError::Cancelled`].
struct StageClock<F: FnMut(Progress) -> ControlFlow<()>> {
    progress: F,
    timings: Vec<(TrellisStage, Duration)>,
    current: Option<(TrellisStage, Instant)>,
}

impl<F: FnMut(Progress) -> ControlFlow<()>> StageClock<F> {
    fn tell(&mut self, p: Progress) -> Result<()> {
        match (self.progress)(p) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(TrellisError::Cancelled),
        }
    }

    fn start(&mut self, stage: TrellisStage, steps: usize) -> Result<()> {
        self.tell(Progress::Started { stage, steps })?;
        self.current = Some((stage, Instant::now()));
        Ok(())
    }

    /// The stage begun last ends.
    fn finish(&mut self) -> Result<()> {
        match self.current.take() {
            Some((stage, t0)) => {
                let elapsed = t0.elapsed();
                self.timings.push((stage, elapsed));
                self.tell(Progress::Finished { stage, elapsed })
            }
            None => Ok(()),
        }
    }

    /// The per-step callback of a sampling stage.
    fn steps(&mut self, stage: TrellisStage) -> impl FnMut(usize, usize) -> ControlFlow<()> + '_ {
        move |done, total| (self.progress)(Progress::Step { stage, done, total })
    }
}

/// The models of `TrellisImageTo3DPipeline` that make Gaussians, on one device.
#[derive(Debug, Clone)]
pub struct TrellisImageTo3d {
    stage1: Stage1,
    slat_flow: SLatFlowModel,
    decoder: GaussianDecoder,
    device: Device,
}

/// Where DINOv2's weights are inside a TRELLIS folder `dir`, if there:
/// `dinov2_vitl14_reg4_pretrain.safetensors` or `.pth` (torch-hub names; a
/// `dinov2_vitl14_reg4_pretrain.json` beside it may give another shape, as
/// [`write_random_trellis`] writes), else `dinov2/model.safetensors` (the Hugging Face
/// layout of `facebook/dinov2-with-registers-large`, its `config.json` beside it).
pub fn dinov2_in_folder(dir: &Path) -> Option<PathBuf> {
    let hub = dir.join(DINOV2_HUB_CHECKPOINT);
    [
        hub.with_extension("safetensors"),
        hub,
        dir.join("dinov2").join("model.safetensors"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

impl TrellisImageTo3d {
    /// Loads the TRELLIS folder `dir` (`pipeline.json`, `ckpts/` with the four models of
    /// [`crate::config::REQUIRED_MODELS`]) and DINOv2 from `dinov2`; transformer and
    /// convolution torsos in `dtype` (f32 on the CPU), the rest as the official `use_fp16`
    /// leaves it. Fails when the models do not fit together (token widths, latent
    /// channels, grid sides).
    pub fn load(dir: &Path, dinov2: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let stage1 = Stage1::load(dir, dinov2, dtype, device)?;
        let pipeline = stage1.pipeline();
        let flow_stem = pipeline.checkpoint_stem(dir, "slat_flow_model")?;
        let flow_config = Checkpoint::<SLatFlowConfig>::read(&flow_stem, slat_flow::CLASS)?.args;
        let slat_flow = SLatFlowModel::load(
            &flow_config,
            checkpoint_weights(&flow_stem, dtype, device)?,
            dtype,
        )?;
        let decoder = GaussianDecoder::from_checkpoint(
            &pipeline.checkpoint_stem(dir, "slat_decoder_gs")?,
            dtype,
            device,
        )?;
        let pipe = Self {
            stage1,
            slat_flow,
            decoder,
            device: device.clone(),
        };
        pipe.check_fit()?;
        Ok(pipe)
    }

    /// The models' shapes agree with each other and with `slat_normalization`.
    fn check_fit(&self) -> Result<()> {
        let flow = self.slat_flow.config();
        let dec = self.decoder.config();
        let tokens = self.stage1.dinov2().config().embed_dim;
        let stats = self.pipeline().args.slat_normalization.mean.len();
        let occupancy = self.stage1.occupancy_resolution();
        let mismatch = if flow.cond_channels != tokens {
            Some(format!(
                "DINOv2 gives {tokens}-wide tokens, the structured-latent flow cross-attends to {}",
                flow.cond_channels
            ))
        } else if flow.in_channels != flow.out_channels || flow.out_channels != stats {
            Some(format!(
                "the structured-latent flow maps {} to {} channels, slat_normalization has {stats}",
                flow.in_channels, flow.out_channels
            ))
        } else if dec.latent_channels != flow.out_channels {
            Some(format!(
                "the Gaussian decoder takes {} latent channels, the flow gives {}",
                dec.latent_channels, flow.out_channels
            ))
        } else if flow.resolution != occupancy || dec.resolution as usize != occupancy {
            Some(format!(
                "grid sides differ: structure {occupancy}³, flow {}³, Gaussian decoder {}³",
                flow.resolution, dec.resolution
            ))
        } else {
            None
        };
        match mismatch {
            Some(m) => Err(TrellisError::Config(format!(
                "the models do not fit together: {m}"
            ))),
            None => Ok(()),
        }
    }

    pub fn pipeline(&self) -> &PipelineConfig {
        self.stage1.pipeline()
    }

    pub fn stage1(&self) -> &Stage1 {
        &self.stage1
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The sampler parameters a run with `request` uses: (stage 1, stage 2).
    pub fn sampler_params(&self, request: &TrellisRequest) -> (SamplerParams, SamplerParams) {
        let a = &self.pipeline().args;
        (
            request
                .sparse_structure
                .apply(&a.sparse_structure_sampler.params),
            request.slat.apply(&a.slat_sampler.params),
        )
    }

    /// `run(image, seed, …)` for Gaussians (see the module docs); an opaque `image` gets
    /// `matte`'s alpha. `progress` hears of each stage's start, sampler steps and end;
    /// `Break` stops the run with [`TrellisError::Cancelled`].
    pub fn run(
        &self,
        image: &RgbaImage,
        request: &TrellisRequest,
        matte: &ForegroundMatte,
        progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<TrellisOutput> {
        let (ss_params, slat_params) = self.sampler_params(request);
        let mut clock = StageClock {
            progress,
            timings: Vec::new(),
            current: None,
        };

        clock.start(TrellisStage::Matte, 0)?;
        let (matted, alpha_source) = matte.apply(image)?;
        clock.finish()?;

        clock.start(TrellisStage::Preprocess, 0)?;
        let cutout = cutout(&matted)?;
        drop(matted);
        let prepared = on_black(&cutout);
        clock.finish()?;

        clock.start(TrellisStage::Dinov2, 0)?;
        let conditioning = self.stage1.encode(&prepared)?;
        clock.finish()?;

        let (coords, stage1_kept) = match &request.structure {
            Some(given) => {
                if request.keep_latents {
                    return Err(TrellisError::InvalidArgument(
                        "a run on a given structure samples no stage-1 latents to keep".into(),
                    ));
                }
                let resolution = self.slat_flow.config().resolution;
                (given.coords(resolution)?.to_vec(), None)
            }
            None => self.sample_structure(request, &conditioning, &ss_params, &mut clock)?,
        };
        if coords.is_empty() {
            return Err(TrellisError::EmptyStructure);
        }

        clock.start(TrellisStage::Slat, slat_params.steps)?;
        let slat_noise = self.slat_noise(request, &coords)?;
        let slat = self.sample_slat(
            &conditioning,
            &coords,
            &slat_noise,
            &slat_params,
            clock.steps(TrellisStage::Slat),
        )?;
        clock.finish()?;

        clock.start(TrellisStage::GsDecoder, 0)?;
        let gaussians = self
            .decoder
            .decode(&slat)?
            .into_iter()
            .next()
            .ok_or(TrellisError::EmptyStructure)?;
        clock.finish()?;

        let voxels = coords.len();
        let latents = stage1_kept.map(|(ss_noise, ss_latent)| RunLatents {
            coords,
            ss_noise,
            ss_latent,
            slat_noise,
            slat: slat.feats,
        });
        Ok(TrellisOutput {
            gaussians,
            cutout,
            alpha_source,
            voxels,
            sparse_structure_params: ss_params,
            slat_params,
            timings: clock.timings,
            latents,
        })
    }

    /// Stage 1 of [`Self::run`]: the sampled latent decoded to voxels, with the noise and
    /// latent when the request keeps them.
    fn sample_structure<F: FnMut(Progress) -> ControlFlow<()>>(
        &self,
        request: &TrellisRequest,
        conditioning: &crate::stage1::Conditioning,
        ss_params: &SamplerParams,
        clock: &mut StageClock<F>,
    ) -> Result<(Vec<[u32; 4]>, Option<Stage1Latents>)> {
        clock.start(TrellisStage::SparseStructure, ss_params.steps)?;
        let ss_noise = match &request.noise {
            Some(given) => given.sparse_structure(&self.stage1.latent_shape(), &self.device)?,
            None => self.stage1.noise(request.seed)?,
        };
        let latent = self.stage1.sample_latent(
            conditioning,
            &ss_noise,
            ss_params,
            clock.steps(TrellisStage::SparseStructure),
        )?;
        clock.finish()?;

        clock.start(TrellisStage::SsDecoder, 0)?;
        let coords = self.stage1.decode_structure(&latent)?;
        // Freed here unless the run keeps its latents.
        let kept = request.keep_latents.then_some((ss_noise, latent));
        clock.finish()?;
        Ok((coords, kept))
    }

    /// The stage-2 noise `[N, in_channels]` of a run of `request` on the voxels `coords`:
    /// the request's given noise for those voxels, else drawn from the stream that continues
    /// the stage-1 noise of its seed ([`slat_noise_seed`]).
    fn slat_noise(&self, request: &TrellisRequest, coords: &[[u32; 4]]) -> Result<Tensor> {
        let channels = self.slat_flow.config().in_channels;
        if let Some(given) = &request.noise {
            return given.slat(coords, channels, &self.device);
        }
        let stage1_values = match request.structure {
            Some(_) => 0,
            None => self.stage1.latent_shape().iter().product(),
        };
        let seed = slat_noise_seed(request.seed, stage1_values);
        Ok(splatforge_nn::rng::randn(
            seed,
            &[coords.len(), channels],
            DType::F32,
            &self.device,
        )?)
    }

    /// `sample_slat`: from `noise` (`[N, in_channels]` f32, row `i` for voxel `i`) on the
    /// voxels `coords` (`(0, x, y, z)`), flow-Euler with `params`, de-normalised → the
    /// structured latent.
    pub fn sample_slat(
        &self,
        conditioning: &crate::stage1::Conditioning,
        coords: &[[u32; 4]],
        noise: &Tensor,
        params: &SamplerParams,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<SparseTensor> {
        let velocity = SlatVelocity::new(&self.slat_flow, coords, &self.device)?;
        let a = &self.pipeline().args;
        let feats: Tensor = a.slat_sampler.args.sample(
            &velocity,
            noise,
            &conditioning.cond,
            &conditioning.neg_cond,
            params,
            progress,
        )?;
        let n = &a.slat_normalization;
        denormalize_slat(&SparseTensor::new(coords.to_vec(), feats)?, &n.mean, &n.std)
    }
}

/// The shapes of a whole random-weight TRELLIS folder.
#[derive(Debug, Clone, PartialEq)]
pub struct TrellisConfigs {
    pub dinov2: Dinov2Config,
    pub ss_flow: SparseStructureFlowConfig,
    pub ss_decoder: SparseStructureDecoderConfig,
    pub slat_flow: SLatFlowConfig,
    pub gs_decoder: GaussianDecoderConfig,
}

/// The shapes [`write_random_trellis`] writes at `size`: the published ones, or tiny models
/// that fit together (16³ occupancy, 32-wide DINOv2 tokens at 518²).
pub fn trellis_configs(size: ModelSize) -> TrellisConfigs {
    let (dinov2, ss_flow, ss_decoder) = stage1_configs(size);
    let (slat_flow, gs_decoder) = match size {
        ModelSize::Full => (
            SLatFlowConfig::image_large(),
            GaussianDecoderConfig::trellis_image_large(),
        ),
        ModelSize::Tiny => {
            let occupancy = ss_flow.resolution << (ss_decoder.channels.len() - 1);
            (
                SLatFlowConfig {
                    resolution: occupancy,
                    cond_channels: dinov2.embed_dim,
                    ..SLatFlowConfig::tiny()
                },
                GaussianDecoderConfig {
                    resolution: occupancy as u32,
                    ..GaussianDecoderConfig::tiny()
                },
            )
        }
    };
    TrellisConfigs {
        dinov2,
        ss_flow,
        ss_decoder,
        slat_flow,
        gs_decoder,
    }
}

/// Writes a whole TRELLIS-image-large folder with random weights under the real names and
/// layout: [`write_random_stage1`]'s files (`pipeline.json`, the structure flow and
/// decoder, DINOv2 as `dinov2_vitl14_reg4_pretrain.safetensors` + its shape in `.json`)
/// and `ckpts/slat_flow_img_dit_L_64l8p2_fp16.{json,safetensors}`,
/// `ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16.{json,safetensors}`, and the mattes the image
/// profiles look for in the folder: BiRefNet (Swin-L) in [`BIREFNET_FOLDER`] and
/// BiRefNet_lite (Swin-T) in [`BIREFNET_LITE_FOLDER`] (both the tiny test model at
/// [`ModelSize::Tiny`]), the random matte made decisive ([`RANDOM_MATTE_CONTRAST`]);
/// checkpoints stored as `dtype`, DINOv2 as f32. Returns the DINOv2 path
/// ([`dinov2_in_folder`] finds it too).
/// The decoder's `offset_perturbation` buffer is random like every other tensor (the
/// published one holds Hammersley points).
pub fn write_random_trellis(
    dir: &Path,
    size: ModelSize,
    dtype: DType,
    seed: u64,
) -> Result<PathBuf> {
    let configs = trellis_configs(size);
    let dinov2 = write_random_stage1(dir, size, dtype, seed)?;
    let pipeline = PipelineConfig::read(&dir.join("pipeline.json"))?;

    let recorder = RandomRecorder::new(seed.wrapping_add(3));
    SLatFlowModel::load(&configs.slat_flow, recorder.var_builder(), DType::F32)?;
    write_checkpoint(
        &pipeline.checkpoint_stem(dir, "slat_flow_model")?,
        slat_flow::CLASS,
        &configs.slat_flow,
        &recorder.recipes(),
        dtype,
    )?;

    let recorder = RandomRecorder::new(seed.wrapping_add(4));
    GaussianDecoder::load(
        configs.gs_decoder.clone(),
        DType::F32,
        recorder.var_builder(),
    )?;
    write_checkpoint(
        &pipeline.checkpoint_stem(dir, "slat_decoder_gs")?,
        gs_decoder::CHECKPOINT_CLASS,
        &configs.gs_decoder,
        &recorder.recipes(),
        dtype,
    )?;
    for (folder, published, offset) in [
        (BIREFNET_FOLDER, BiRefNetConfig::birefnet(), 5),
        (BIREFNET_LITE_FOLDER, BiRefNetConfig::birefnet_lite(), 6),
    ] {
        let config = match size {
            ModelSize::Full => published,
            ModelSize::Tiny => BiRefNetConfig::tiny(),
        };
        let folder = dir.join(folder);
        std::fs::create_dir_all(&folder).map_err(|e| bad_file(&folder, e))?;
        write_random_birefnet_with_contrast(
            &config,
            seed.wrapping_add(offset),
            dtype,
            &folder.join("model.safetensors"),
            RANDOM_MATTE_CONTRAST,
        )?;
    }
    if !dinov2.is_file() {
        return Err(bad_file(&dinov2, "DINOv2 weights were not written"));
    }
    Ok(dinov2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    /// A pale ghost-like blob with two dark eyes on a transparent background.
    fn ghost() -> RgbaImage {
        RgbaImage::from_fn(80, 96, |x, y| {
            let (dx, dy) = (x as f32 - 40.0, y as f32 - 44.0);
            let head = dx * dx + dy * dy < 28.0 * 28.0;
            let body = dx.abs() < 28.0 && (44.0..84.0).contains(&(y as f32));
            let eye = [(-10.0f32, -6.0f32), (10.0, -6.0)]
                .iter()
                .any(|(ex, ey)| (dx - ex).powi(2) + (dy - ey).powi(2) < 16.0);
            match (head || body, eye) {
                (true, true) => Rgba([20, 20, 30, 255]),
                (true, false) => Rgba([235, 235, 245, 255]),
                _ => Rgba([0, 0, 0, 0]),
            }
        })
    }

    fn quick() -> TrellisRequest {
        let steps = SamplerOverrides {
            steps: Some(2),
            cfg_strength: None,
        };
        TrellisRequest {
            seed: 3,
            sparse_structure: steps,
            slat: steps,
            ..Default::default()
        }
    }

    #[test]
    fn tiny_folder_runs_image_to_gaussians_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_random_trellis(dir.path(), ModelSize::Tiny, DType::F16, 11).unwrap();
        for f in [
            "ckpts/slat_flow_img_dit_L_64l8p2_fp16.json",
            "ckpts/slat_flow_img_dit_L_64l8p2_fp16.safetensors",
            "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16.json",
            "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16.safetensors",
            "birefnet/model.safetensors",
            "birefnet_lite/model.safetensors",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let dinov2 = dinov2_in_folder(dir.path()).unwrap();
        assert_eq!(dinov2, written);
        let pipe = TrellisImageTo3d::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).unwrap();

        let mut events = Vec::new();
        let out = pipe
            .run(&ghost(), &quick(), &ForegroundMatte::Threshold, |p| {
                events.push(p);
                ControlFlow::Continue(())
            })
            .unwrap();
        let g = &out.gaussians;
        assert!(out.voxels > 0);
        assert_eq!(g.len(), out.voxels * 4, "4 Gaussians per voxel (tiny)");
        let finite = |v: &[[f32; 3]]| v.iter().flatten().all(|x| x.is_finite());
        assert!(finite(&g.means) && finite(&g.log_scales) && finite(&g.sh_dc));
        assert!(g.opacity_logits.iter().all(|x| x.is_finite()));
        assert!(g.rotations.iter().flatten().all(|x| x.is_finite()));
        assert_eq!(
            out.timings.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            TrellisStage::ALL
        );
        assert_eq!(
            (out.sparse_structure_params.steps, out.slat_params.steps),
            (2, 2)
        );
        assert_eq!(out.slat_params.cfg_strength, 5.0, "pipeline.json's cfg");
        let steps: Vec<(TrellisStage, usize)> = events
            .iter()
            .filter_map(|p| match p {
                Progress::Step { stage, done, .. } => Some((*stage, *done)),
                _ => None,
            })
            .collect();
        use TrellisStage::{Slat, SparseStructure};
        assert_eq!(
            steps,
            [
                (SparseStructure, 1),
                (SparseStructure, 2),
                (Slat, 1),
                (Slat, 2)
            ]
        );
        assert_eq!(out.alpha_source, AlphaSource::Image);
        assert!(matches!(
            events.first(),
            Some(Progress::Started {
                stage: TrellisStage::Matte,
                steps: 0
            })
        ));

        let again = pipe
            .run(&ghost(), &quick(), &ForegroundMatte::Threshold, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(again.gaussians.means, g.means, "same seed, same splat");
        assert_eq!(again.gaussians.sh_dc, g.sh_dc);
        let other = pipe
            .run(
                &ghost(),
                &TrellisRequest { seed: 4, ..quick() },
                &ForegroundMatte::Threshold,
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
        assert_ne!(other.gaussians.means, g.means, "another seed");

        // Stopping in the middle of stage 2 ends the run.
        let stop = pipe.run(
            &ghost(),
            &quick(),
            &ForegroundMatte::Threshold,
            |p| match p {
                Progress::Step {
                    stage: TrellisStage::Slat,
                    ..
                } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        );
        assert!(matches!(stop, Err(TrellisError::Cancelled)));
        // A fully transparent picture has no object.
        let clear = pipe.run(
            &RgbaImage::new(32, 32),
            &quick(),
            &ForegroundMatte::Threshold,
            |_| ControlFlow::Continue(()),
        );
        assert!(clear.unwrap_err().to_string().contains("transparent"));
    }

    #[test]
    fn given_noise_runs_the_same_code_as_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_trellis(dir.path(), ModelSize::Tiny, DType::F32, 11).unwrap();
        let pipe = TrellisImageTo3d::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).unwrap();
        let run = |request: &TrellisRequest| {
            pipe.run(&ghost(), request, &ForegroundMatte::Threshold, |_| {
                ControlFlow::Continue(())
            })
        };
        let seeded = run(&TrellisRequest {
            keep_latents: true,
            ..quick()
        })
        .unwrap();
        let kept = seeded.latents.as_ref().expect("kept latents");
        assert_eq!(kept.coords.len(), seeded.voxels);
        let host = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            host(&kept.ss_noise),
            host(&pipe.stage1().noise(quick().seed).unwrap())
        );
        assert_eq!(kept.slat.dims(), kept.slat_noise.dims());
        assert_eq!(kept.slat.dims()[0], seeded.voxels);

        // The kept noise, written and read back as a noise file, replaces another seed's:
        // the same splat, since only the initial noise differs between the two paths.
        let file = dir.path().join("latents.safetensors");
        kept.save(&file).unwrap();
        let given = Arc::new(GivenNoise::read(&file).unwrap());
        let replay = run(&TrellisRequest {
            seed: 99,
            noise: Some(given),
            ..quick()
        })
        .unwrap();
        assert_eq!(replay.gaussians, seeded.gaussians);
        assert!(replay.latents.is_none(), "not asked to keep them");
    }

    #[test]
    fn a_given_structure_skips_stage_1() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_trellis(dir.path(), ModelSize::Tiny, DType::F32, 11).unwrap();
        let pipe = TrellisImageTo3d::load(dir.path(), &dinov2, DType::F32, &Device::Cpu).unwrap();
        let run = |request: &TrellisRequest, stages: &mut Vec<TrellisStage>| {
            pipe.run(&ghost(), request, &ForegroundMatte::Threshold, |p| {
                if let Progress::Started { stage, .. } = p {
                    stages.push(stage);
                }
                ControlFlow::Continue(())
            })
        };
        let seeded = run(
            &TrellisRequest {
                keep_latents: true,
                ..quick()
            },
            &mut Vec::new(),
        )
        .unwrap();
        let kept = seeded.latents.as_ref().expect("kept latents");
        let latents = dir.path().join("latents.safetensors");
        kept.save(&latents).unwrap();
        // The seeded run's voxels as a structure file, listed in reverse ([N, 3]).
        let xyz: Vec<i32> = kept
            .coords
            .iter()
            .rev()
            .flat_map(|c| c[1..].iter().map(|&v| v as i32))
            .collect();
        let file = dir.path().join("structure.safetensors");
        let coords = Tensor::from_vec(xyz, (kept.coords.len(), 3), &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(crate::structure::COORDS.to_string(), coords)]),
            &file,
        )
        .unwrap();
        let structure = Some(Arc::new(GivenStructure::read(&file).unwrap()));

        // With the seeded run's stage-2 noise, the same splat: stage 2 saw the same voxels.
        let mut stages = Vec::new();
        let replay = run(
            &TrellisRequest {
                seed: 99,
                noise: Some(Arc::new(GivenNoise::read(&latents).unwrap())),
                structure: structure.clone(),
                ..quick()
            },
            &mut stages,
        )
        .unwrap();
        assert_eq!(replay.gaussians, seeded.gaussians);
        assert_eq!(replay.voxels, seeded.voxels);
        use TrellisStage::*;
        assert_eq!(stages, [Matte, Preprocess, Dinov2, Slat, GsDecoder]);
        assert_eq!(
            replay.timings.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            stages
        );
        // From the seed alone: stage 2's noise is the seed's stream from its start.
        let on_structure = TrellisRequest {
            structure: structure.clone(),
            ..quick()
        };
        let a = run(&on_structure, &mut Vec::new()).unwrap();
        let b = run(&on_structure, &mut Vec::new()).unwrap();
        assert_eq!(a.gaussians, b.gaussians);
        assert_ne!(a.gaussians, seeded.gaussians, "another stage-2 noise");
        let keep = run(
            &TrellisRequest {
                keep_latents: true,
                ..on_structure
            },
            &mut Vec::new(),
        );
        assert!(keep.unwrap_err().to_string().contains("no stage-1 latents"));
    }

    #[test]
    fn stage2_noise_continues_the_stage1_stream() {
        let n = 4 * 8 * 8 * 8;
        let stream =
            splatforge_nn::rng::normals(&mut splatforge_nn::rng::SplitMix64::new(9), n + 6);
        let next = splatforge_nn::rng::normals(
            &mut splatforge_nn::rng::SplitMix64::new(slat_noise_seed(9, n)),
            6,
        );
        assert_eq!(&stream[n..], next.as_slice());
        // An odd stage-1 count leaves the second value of its last pair unused.
        assert_eq!(slat_noise_seed(9, 3), slat_noise_seed(9, 4));
    }

    #[test]
    fn models_that_do_not_fit_together_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dinov2 = write_random_trellis(dir.path(), ModelSize::Tiny, DType::F32, 2).unwrap();
        let pipeline = PipelineConfig::read(&dir.path().join("pipeline.json")).unwrap();
        let stem = pipeline
            .checkpoint_stem(dir.path(), "slat_decoder_gs")
            .unwrap();
        // A decoder on a 64³ grid behind a 16³ structure.
        let config = GaussianDecoderConfig {
            resolution: 64,
            ..trellis_configs(ModelSize::Tiny).gs_decoder
        };
        let recorder = RandomRecorder::new(1);
        GaussianDecoder::load(config.clone(), DType::F32, recorder.var_builder()).unwrap();
        write_checkpoint(
            &stem,
            gs_decoder::CHECKPOINT_CLASS,
            &config,
            &recorder.recipes(),
            DType::F32,
        )
        .unwrap();
        let err = TrellisImageTo3d::load(dir.path(), &dinov2, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grid sides differ"), "{err}");
    }

    #[test]
    fn full_size_folder_has_the_published_stage2_shapes() {
        let c = trellis_configs(ModelSize::Full);
        assert_eq!(c.slat_flow, SLatFlowConfig::image_large());
        assert_eq!(c.gs_decoder, GaussianDecoderConfig::trellis_image_large());
        let tiny = trellis_configs(ModelSize::Tiny);
        assert_eq!(tiny.slat_flow.resolution, 16);
        assert_eq!(tiny.gs_decoder.resolution, 16);
    }
}
