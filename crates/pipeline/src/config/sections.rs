//! The sections of a configuration (`diffusion:`, `alpha:`, `init:`, `sds:`,
//! `output:`, `flux:`, `trellis:`, `matte:`) and the `pipeline:` choice, with
//! their defaults; the keys are tabled in the [`config`](super) module docs.

use serde::{Deserialize, Serialize};

use super::Precision;

/// `diffusion:` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub n_views: usize,
    /// Also accepted as `ref_size` (DreamGaussian's name), see [`ALIASES`](super::ALIASES).
    pub resolution: usize,
    pub elevation: f64,
    pub azimuth_start: f64,
    pub camera_radius: f32,
    pub fovy: f32,
    pub prompt_suffix: String,
    pub negative_prompt: String,
    pub precision: Precision,
    pub vae_precision: Option<Precision>,
    pub vae_slicing: bool,
    pub vae_tiling: bool,
    pub vae_tile_size: usize,
    pub vae_tile_overlap: usize,
}

/// DreamGaussian's default negative prompt (`configs/text_mv.yaml`).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, and unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, poorly drawn face, deformed, dehydrated, bad proportions";

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            num_inference_steps: 30,
            guidance_scale: 7.5,
            n_views: 4,
            resolution: 256,
            elevation: 15.0,
            azimuth_start: 0.0,
            camera_radius: crate::cameras::DEFAULT_RADIUS,
            fovy: crate::cameras::DEFAULT_FOVY_DEG,
            prompt_suffix: ", 3d asset".into(),
            negative_prompt: DEFAULT_NEGATIVE_PROMPT.into(),
            precision: Precision::F16,
            vae_precision: None,
            vae_slicing: false,
            vae_tiling: false,
            vae_tile_size: 256,
            vae_tile_overlap: 32,
        }
    }
}

/// `alpha:` (see [`crate::alpha::AlphaParams`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlphaConfig {
    pub low: f32,
    pub high: f32,
    pub open_radius: usize,
    pub fill_holes: bool,
    pub min_component: f32,
}

impl Default for AlphaConfig {
    fn default() -> Self {
        AlphaConfig {
            low: 0.04,
            high: 0.15,
            open_radius: 1,
            fill_holes: true,
            min_component: 0.002,
        }
    }
}

/// How the fit starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMethod {
    /// Points on the visual hull of the views' masks, coloured from the views.
    Carve,
    /// DreamGaussian's random ball.
    Random,
}

/// Where carved points are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CarveSample {
    /// On the hull's surface (cells with a carved neighbour).
    Surface,
    /// Anywhere inside the hull.
    Volume,
}

/// `init:` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    pub method: InitMethod,
    pub sample: CarveSample,
    pub grid: usize,
    pub bound: f32,
    pub mask_threshold: f32,
    pub mask_dilation: usize,
    pub opacity: f32,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            method: InitMethod::Random,
            sample: CarveSample::Volume,
            grid: 64,
            bound: 1.0,
            mask_threshold: 0.5,
            mask_dilation: 1,
            opacity: 0.1,
        }
    }
}

/// `sds:` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdsConfig {
    pub sds_iters: u32,
    pub guidance_scale: f64,
    pub resolution: usize,
    pub min_step: f64,
    pub max_step: f64,
    pub timestep_annealing: bool,
    pub annealing_eta: f64,
    pub lambda_sds: f32,
    pub lambda_views: f32,
    pub elevation_range: [f64; 2],
    pub lr_scale: f32,
    pub random_background: bool,
    /// Orbits rendered per step (DreamGaussian's `batch_size`): each step
    /// renders `batch_size × diffusion.n_views` images, and MVDream scores
    /// them in one batch.
    pub batch_size: usize,
    /// SDS alone from the initial Gaussians, as DreamGaussian's `text_mv` and
    /// the 404 reference miner train: no views are generated and nothing is
    /// fitted (the `diffusion`, `alpha` and `fit` stages are skipped), and
    /// the learning rates follow the fit's schedule by SDS step.
    pub from_scratch: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        SdsConfig {
            sds_iters: 0,
            guidance_scale: 50.0,
            resolution: 256,
            min_step: 0.02,
            max_step: 0.98,
            timestep_annealing: true,
            annealing_eta: 1.0,
            lambda_sds: 1.0,
            lambda_views: 1.0,
            elevation_range: [-30.0, 30.0],
            lr_scale: 1.0,
            random_background: true,
            batch_size: 1,
            from_scratch: false,
        }
    }
}

/// `output:` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub normalize: bool,
    pub box_size: f32,
    pub min_gaussians: usize,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            normalize: true,
            box_size: splatforge_splat::normalize::VALIDATOR_BOX,
            min_gaussians: splatforge_splat::validate::ValidationConfig::default().min_gaussians,
        }
    }
}

/// Which pipeline a profile runs (`pipeline:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineKind {
    /// Text → MVDream views → fitted Gaussians (the sections `diffusion` … `sds`).
    #[default]
    Mvdream,
    /// Image → TRELLIS → Gaussians (the `trellis` section).
    Trellis,
    /// Text → FLUX.1-schnell image → matte → TRELLIS → Gaussians (the `flux` and
    /// `trellis` sections).
    #[serde(rename = "flux-trellis")]
    FluxTrellis,
}

impl PipelineKind {
    pub fn name(self) -> &'static str {
        match self {
            PipelineKind::Mvdream => "mvdream",
            PipelineKind::Trellis => "trellis",
            PipelineKind::FluxTrellis => "flux-trellis",
        }
    }

    /// Whether the 3D stage is TRELLIS (the `trellis:` section applies).
    pub fn runs_trellis(self) -> bool {
        matches!(self, PipelineKind::Trellis | PipelineKind::FluxTrellis)
    }
}

/// `flux:` (see the module docs): FLUX.1-schnell's text → image for `pipeline:
/// flux-trellis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FluxConfig {
    pub steps: usize,
    pub width: usize,
    pub height: usize,
    pub max_sequence_length: usize,
    pub guidance: f64,
    pub prompt_template: String,
    pub precision: Precision,
    pub vae_precision: Option<Precision>,
}

/// The placeholder of [`FluxConfig::prompt_template`].
pub const PROMPT_PLACEHOLDER: &str = "{prompt}";

impl Default for FluxConfig {
    fn default() -> Self {
        FluxConfig {
            steps: 4,
            width: 512,
            height: 512,
            max_sequence_length: 256,
            guidance: 3.5,
            prompt_template: PROMPT_PLACEHOLDER.into(),
            precision: Precision::Bf16,
            vae_precision: None,
        }
    }
}

impl FluxConfig {
    /// The text FLUX sees for the request's `prompt`.
    pub fn prompt(&self, prompt: &str) -> String {
        self.prompt_template.replacen(PROMPT_PLACEHOLDER, prompt, 1)
    }
}

/// `trellis:` (see the module docs): the caller's changes to the model's
/// `pipeline.json` sampler parameters, and the GPU precision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrellisConfig {
    pub sparse_structure_steps: Option<usize>,
    pub sparse_structure_cfg: Option<f64>,
    pub slat_steps: Option<usize>,
    pub slat_cfg: Option<f64>,
    pub precision: Precision,
}

impl Default for TrellisConfig {
    fn default() -> Self {
        TrellisConfig {
            sparse_structure_steps: None,
            sparse_structure_cfg: None,
            slat_steps: None,
            slat_cfg: None,
            precision: Precision::F16,
        }
    }
}

/// How `matte:` finds the foreground of a picture without a real alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatteMethod {
    /// BiRefNet with the Swin-L backbone (`ZhengPeng7/BiRefNet`).
    #[default]
    Birefnet,
    /// BiRefNet_lite, the Swin-T backbone (`ZhengPeng7/BiRefNet_lite`): the fast one.
    BirefnetLite,
    /// No network: the plain-background threshold.
    Threshold,
}

impl MatteMethod {
    pub fn name(self) -> &'static str {
        match self {
            MatteMethod::Birefnet => "birefnet",
            MatteMethod::BirefnetLite => "birefnet-lite",
            MatteMethod::Threshold => "threshold",
        }
    }
}

/// `matte:` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatteConfig {
    pub method: MatteMethod,
    pub weights: Option<String>,
    pub precision: Precision,
    pub fallback: Option<MatteMethod>,
    pub fallback_weights: Option<String>,
}

impl Default for MatteConfig {
    fn default() -> Self {
        MatteConfig {
            method: MatteMethod::Birefnet,
            weights: None,
            precision: Precision::Bf16,
            fallback: None,
            fallback_weights: None,
        }
    }
}
