//! The pipeline configuration: YAML profiles with the seeds' and
//! DreamGaussian's key names, a user config file over them, and
//! `--set key=value` overrides with dotted paths.
//!
//! # Resolution order
//! 1. the profile (`--profile NAME`, default [`DEFAULT_PROFILE`]): one of the
//!    YAML files in the repository's `profiles/` folder, compiled into the
//!    binary ([`builtin_profile`]);
//! 2. the config file (`--config FILE`), merged over it section by section
//!    (a key given in the file replaces the profile's, other keys stay);
//! 3. each `--set a.b.c=VALUE` in order (`VALUE` is parsed as YAML:
//!    `0.5`, `true`, `fp16`, `[128, 256]`, `null`).
//!
//! Every section rejects unknown keys (`deny_unknown_fields`), and the
//! error names the key with its section (`sds.sds_iter`), so a typo never
//! silently falls back to a default. Missing keys take the defaults below.
//!
//! # Keys
//! Top level: `description` (free text), `seed` (default seed, used when a
//! request has none), `pipeline` (`mvdream`, the default: text → views →
//! fit, the sections `diffusion` to `sds` below; `trellis`: image → 3D with
//! TRELLIS, the `trellis:` section; `flux-trellis`: text → FLUX.1-schnell
//! image → matte → TRELLIS, the `flux:` and `trellis:`
//! sections; both TRELLIS pipelines read `matte:`; `output:` applies to all).
//!
//! `flux:` (FLUX.1-schnell text → image, `splatforge_diffusion::flux`; read by
//! `pipeline: flux-trellis` only)
//! | key | default | meaning |
//! |---|---|---|
//! | `steps` | 4 | flow-matching Euler steps (schnell is distilled for 1–4) |
//! | `width` / `height` | 512 | image size in pixels (multiples of 16); TRELLIS crops the object and resizes it to 518² |
//! | `max_sequence_length` | 256 | T5 tokens (schnell's limit) |
//! | `guidance` | 3.5 | distilled guidance, read only by transformers with `guidance_embeds` (FLUX.1-dev); schnell has no guidance input and no CFG, so it ignores this |
//! | `prompt_template` | `{prompt}` | the text FLUX sees: `{prompt}` is replaced by the request's prompt (must occur once) |
//! | `precision` | bf16 | transformer and text encoders on a GPU (T5 runs f32 when this is fp16: it overflows in fp16); the CPU uses fp32 |
//! | `vae_precision` | null | VAE precision; null = `precision` |
//!
//! `trellis:` (TRELLIS image → 3D, `splatforge_trellis`; `null`: the model
//! folder's `pipeline.json` value, for TRELLIS-image-large 25 steps and
//! `cfg_strength` 5.0 in both stages)
//! | key | default | meaning |
//! |---|---|---|
//! | `sparse_structure_steps` | null | stage-1 sampler steps |
//! | `sparse_structure_cfg` | null | stage-1 classifier-free guidance strength |
//! | `slat_steps` | null | stage-2 (structured latent) sampler steps |
//! | `slat_cfg` | null | stage-2 guidance strength |
//! | `precision` | fp16 | the transformers' and convolutions' precision on a GPU (the official `use_fp16`); the CPU uses fp32 |
//!
//! `matte:` (background removal before TRELLIS, for pictures without a real alpha:
//! an image whose alpha has a pixel that is not opaque keeps it; read by `pipeline:
//! trellis` and `flux-trellis`)
//! | key | default | meaning |
//! |---|---|---|
//! | `method` | birefnet | `birefnet`: BiRefNet (Swin-L, `ZhengPeng7/BiRefNet`); `birefnet-lite`: BiRefNet_lite (Swin-T); `threshold`: no network, the plain-background threshold (the border's median colour is background) |
//! | `weights` | null | where the network's weights are (a `.safetensors`/`.pth` file, a folder with `model.safetensors`, or `hf:ORG/NAME`); null: `birefnet/` (or `birefnet_lite/`) inside the TRELLIS folder, else `hf:ZhengPeng7/BiRefNet` (or `_lite`); `--matte` overrides it |
//! | `precision` | bf16 | the network's precision on a GPU; the CPU uses fp32 |
//! | `fallback` | null | `birefnet-lite`: also load the lite network, which a request's deadline may switch to before the threshold; read with `method: birefnet` only |
//! | `fallback_weights` | null | the lite network's weights; null: `birefnet_lite/` inside the TRELLIS folder, else `hf:ZhengPeng7/BiRefNet_lite` |
//!
//! `diffusion:` (MVDream text → views)
//! | key | default | meaning |
//! |---|---|---|
//! | `num_inference_steps` | 30 | DDIM steps |
//! | `guidance_scale` | 7.5 | classifier-free guidance scale (≤ 1: off) |
//! | `n_views` | 4 | views generated (MVDream's `num_frames`) |
//! | `resolution` (alias `ref_size`) | 256 | view side in pixels (multiple of 16 for the tiny models, 64 for SD) |
//! | `elevation` | 15 | camera elevation in degrees, positive = above (MVDream's sign) |
//! | `azimuth_start` | 0 | azimuth of view 0, degrees; views are 360/n_views apart |
//! | `camera_radius` | 3.5 | distance of the fit cameras (reference miner) |
//! | `fovy` | 49.1 | vertical field of view of the fit cameras, degrees |
//! | `prompt_suffix` | ", 3d asset" | appended to the prompt (MVDream) |
//! | `negative_prompt` | DreamGaussian's | the unconditional prompt of CFG |
//! | `precision` | fp16 | UNet and text encoder: fp16, bf16 or fp32 (the CPU uses fp32 whatever this says) |
//! | `vae_precision` | null | VAE precision; null = `precision` |
//! | `vae_slicing` | false | decode the views one at a time (diffusers' `enable_vae_slicing`) |
//! | `vae_tiling` | false | decode in overlapping tiles (diffusers' `enable_vae_tiling`); only views larger than a tile are tiled |
//! | `vae_tile_size` | 256 | tile side in pixels (multiple of 8) |
//! | `vae_tile_overlap` | 32 | tile overlap in pixels (multiple of 8, < tile size), blended linearly |
//!
//! `alpha:` (foreground by white-background separation, see [`crate::alpha`])
//! | key | default | meaning |
//! |---|---|---|
//! | `low` | 0.04 | distance from white at or below which a pixel is background |
//! | `high` | 0.15 | distance from white at or above which a pixel is fully foreground |
//! | `open_radius` | 1 | morphological opening radius (pixels) removing specks |
//! | `fill_holes` | true | background not connected to the border becomes foreground |
//! | `min_component` | 0.002 | foreground blobs smaller than this fraction of the image are removed |
//!
//! `init:` (initial Gaussians, see [`crate::carve`])
//! | key | default | meaning |
//! |---|---|---|
//! | `method` | random | `random`: DreamGaussian's ball (`fit.num_pts`, `fit.init_radius`); `carve`: points in the visual hull of the views' masks, coloured from the views (measured: see `examples/init_compare.rs`) |
//! | `sample` | volume | carved points anywhere in the hull's `volume` or on its `surface` |
//! | `grid` | 64 | carving grid cells per side |
//! | `bound` | 1.0 | half side of the carved cube (scene units) |
//! | `mask_threshold` | 0.5 | alpha at which a pixel is inside the mask |
//! | `mask_dilation` | 1 | masks are dilated by this many pixels first (tolerates view inconsistency) |
//! | `opacity` | 0.1 | initial opacity (DreamGaussian: 0.1) |
//!
//! `fit:` the fitting engine's [`FitConfig`] verbatim (DreamGaussian keys:
//! `iters`, `num_pts`, `batch_size`, `position_lr_init`, `render_sizes`,
//! `densify_grad_threshold`, …; see `splatforge_fit::config`). Its `seed`
//! is ignored: the request's seed is used.
//!
//! `sds:` (score-distillation refinement with MVDream, see [`crate::refine`])
//! | key | default | meaning |
//! |---|---|---|
//! | `sds_iters` | 0 | refinement steps (0: no SDS stage) |
//! | `guidance_scale` | 50 | CFG scale of the SDS guidance (DreamGaussian text_mv: 100) |
//! | `resolution` | 256 | render side for SDS (latents are a eighth of it) |
//! | `min_step` / `max_step` | 0.02 / 0.98 | timestep range, fractions of the 1000 training steps |
//! | `timestep_annealing` | true | DreamGaussian's `t = round(T·(1 − step/iters)^annealing_eta)` clipped to the range; false: t uniform in the range |
//! | `annealing_eta` | 1.0 | exponent of the annealing curve (1 = DreamGaussian's linear; this is not DDIM's η: sampling is deterministic DDIM) |
//! | `lambda_sds` | 1.0 | weight of the SDS loss |
//! | `lambda_views` | 1.0 | weight of the fit loss to the generated views during SDS (0: pure SDS) |
//! | `elevation_range` | [-30, 30] | random camera elevation, degrees |
//! | `lr_scale` | 1.0 | learning rates are the fit's final ones times this |
//! | `random_background` | true | white or black at random per step (DreamGaussian) |
//!
//! `output:`
//! | key | default | meaning |
//! |---|---|---|
//! | `normalize` | true | recentre and scale to a box (`splatforge_splat::normalize::fit_to_box`) |
//! | `box_size` | 1.5 | the box side (the validators' 1.5) |
//! | `min_gaussians` | 7000 | fewer Gaussians than this are topped up by splitting the largest ones (the validators reject fewer than 7000; 0 = off) |

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use splatforge_fit::FitConfig;
pub use splatforge_nn::Precision;

/// The profile used when none is named.
pub const DEFAULT_PROFILE: &str = "balanced";

/// The built-in profiles: `(name, YAML)`, from the repository's `profiles/`.
pub const PROFILES: &[(&str, &str)] = &[
    ("speed", include_str!("../../../profiles/speed.yaml")),
    ("balanced", include_str!("../../../profiles/balanced.yaml")),
    ("quality", include_str!("../../../profiles/quality.yaml")),
    ("memory", include_str!("../../../profiles/memory.yaml")),
    (
        "development",
        include_str!("../../../profiles/development.yaml"),
    ),
    (
        "image-quality",
        include_str!("../../../profiles/image-quality.yaml"),
    ),
    (
        "image-speed",
        include_str!("../../../profiles/image-speed.yaml"),
    ),
    (
        "image-development",
        include_str!("../../../profiles/image-development.yaml"),
    ),
    (
        "text-image-quality",
        include_str!("../../../profiles/text-image-quality.yaml"),
    ),
    (
        "text-image-development",
        include_str!("../../../profiles/text-image-development.yaml"),
    ),
];

/// The YAML text of a built-in profile.
pub fn builtin_profile(name: &str) -> Option<&'static str> {
    PROFILES.iter().find(|(n, _)| *n == name).map(|(_, y)| *y)
}

/// A configuration error; the message names the key (and the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// `diffusion:` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub n_views: usize,
    /// Also accepted as `ref_size` (DreamGaussian's name), see [`ALIASES`].
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

/// The sections only the MVDream pipeline reads (left out of a TRELLIS
/// profile's [`PipelineConfig::to_yaml`]).
const MVDREAM_SECTIONS: &[&str] = &["diffusion", "alpha", "init", "fit", "sds"];

/// The section only `pipeline: flux-trellis` reads (left out of other profiles'
/// [`PipelineConfig::to_yaml`]).
const FLUX_SECTION: &str = "flux";

/// The sections only the TRELLIS pipelines read (left out of MVDream profiles'
/// [`PipelineConfig::to_yaml`]).
const TRELLIS_SECTIONS: &[&str] = &["trellis", "matte"];

/// The whole configuration (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub description: String,
    pub seed: u64,
    pub pipeline: PipelineKind,
    pub diffusion: DiffusionConfig,
    pub alpha: AlphaConfig,
    pub init: InitConfig,
    pub fit: FitConfig,
    pub sds: SdsConfig,
    pub trellis: TrellisConfig,
    pub matte: MatteConfig,
    pub flux: FluxConfig,
    pub output: OutputConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            description: String::new(),
            seed: 0,
            pipeline: PipelineKind::default(),
            diffusion: DiffusionConfig::default(),
            alpha: AlphaConfig::default(),
            init: InitConfig::default(),
            fit: FitConfig {
                random_background: true,
                ..FitConfig::default()
            },
            sds: SdsConfig::default(),
            trellis: TrellisConfig::default(),
            matte: MatteConfig::default(),
            flux: FluxConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

/// Where a configuration comes from (the CLI flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSources {
    /// `--profile NAME` (None: [`DEFAULT_PROFILE`]).
    pub profile: Option<String>,
    /// `--config FILE`.
    pub config_file: Option<std::path::PathBuf>,
    /// `--set KEY=VALUE`, in order.
    pub sets: Vec<String>,
}

impl ConfigSources {
    /// Resolves the sources (see the module docs). Returns the profile's
    /// name with the configuration.
    pub fn resolve(&self) -> Result<(String, PipelineConfig), ConfigError> {
        let name = self
            .profile
            .clone()
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string());
        let text = builtin_profile(&name).ok_or_else(|| {
            let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
            ConfigError(format!(
                "unknown profile `{name}` (profiles: {}; use --config FILE for your own)",
                names.join(", ")
            ))
        })?;
        let mut value = parse_yaml(text, &format!("profile {name}"))?;
        if let Some(path) = &self.config_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            let over = parse_yaml(&text, &path.display().to_string())?;
            // Check the file on its own first, so that its errors name it.
            from_value(over.clone())
                .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
            merge(&mut value, over);
        }
        for s in &self.sets {
            apply_set(&mut value, s)?;
            check_sections(&value).map_err(|e| ConfigError(format!("--set {s}: {}", e.0)))?;
        }
        let config = from_value(value)?;
        Ok((name, config))
    }
}

/// Other names accepted for keys: `(section, alias, key)`.
pub const ALIASES: &[(&str, &str, &str)] = &[("diffusion", "ref_size", "resolution")];

/// Renames aliases to their keys in one source (both in one source is an error).
fn canonicalize(value: &mut Value, what: &str) -> Result<(), ConfigError> {
    let Value::Mapping(top) = value else {
        return Ok(());
    };
    for (section, alias, key) in ALIASES {
        let Some(Value::Mapping(m)) = top.get_mut(*section) else {
            continue;
        };
        if let Some(v) = m.remove(*alias) {
            if m.contains_key(*key) {
                return Err(ConfigError(format!(
                    "{what}: {section}.{alias} and {section}.{key} are the same key; give one"
                )));
            }
            m.insert(Value::String(key.to_string()), v);
        }
    }
    Ok(())
}

fn parse_yaml(text: &str, what: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    let mut v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError(format!("{what}: {e}")))?;
    match v {
        Value::Mapping(_) => {
            canonicalize(&mut v, what)?;
            Ok(v)
        }
        Value::Null => Ok(Value::Mapping(Mapping::new())),
        _ => Err(ConfigError(format!(
            "{what}: the configuration must be a mapping of keys"
        ))),
    }
}

/// Deep merge: mappings merge key by key, anything else replaces.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Applies one `a.b.c=VALUE` override to a YAML tree.
pub fn apply_set(value: &mut Value, set: &str) -> Result<(), ConfigError> {
    let (key, raw) = set.split_once('=').ok_or_else(|| {
        ConfigError(format!(
            "--set {set}: expected KEY=VALUE (e.g. fit.iters=300)"
        ))
    })?;
    let key = key.trim();
    let mut parts: Vec<&str> = key.split('.').collect();
    if let [section, name] = parts[..] {
        if let Some((_, _, k)) = ALIASES.iter().find(|(s, a, _)| *s == section && *a == name) {
            parts[1] = k;
        }
    }
    if key.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError(format!(
            "--set {set}: `{key}` is not a key path (e.g. sds.sds_iters)"
        )));
    }
    let parsed: Value = if raw.trim().is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw)
            .map_err(|e| ConfigError(format!("--set {key}: cannot parse `{raw}`: {e}")))?
    };
    let mut node = value;
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            Value::Mapping(m) => m,
            Value::Null => {
                *node = Value::Mapping(Mapping::new());
                match node {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => {
                return Err(ConfigError(format!(
                    "--set {key}: `{}` is a value, not a section",
                    parts[..i].join(".")
                )))
            }
        };
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, parsed);
            return Ok(());
        }
        if !map.contains_key(&k) {
            map.insert(k.clone(), Value::Mapping(Mapping::new()));
        }
        node = map.get_mut(&k).expect("inserted");
    }
    unreachable!("the loop returns at the last part")
}

const SECTIONS: &[&str] = &[
    "diffusion",
    "alpha",
    "init",
    "fit",
    "sds",
    "trellis",
    "matte",
    "flux",
    "output",
];

/// Deserialises a YAML tree, naming the section of a bad key.
fn from_value(value: Value) -> Result<PipelineConfig, ConfigError> {
    check_sections(&value)?;
    let config: PipelineConfig =
        serde_yaml_ng::from_value(value).map_err(|e| ConfigError(e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// Deserialises each section alone, so that errors carry the section's
/// name (serde's own messages name only the field).
fn check_sections(value: &Value) -> Result<(), ConfigError> {
    if let Value::Mapping(m) = value {
        for (k, v) in m {
            let Some(section) = k.as_str().filter(|s| SECTIONS.contains(s)) else {
                continue;
            };
            let r = match section {
                "diffusion" => section_check::<DiffusionConfig>(v),
                "alpha" => section_check::<AlphaConfig>(v),
                "init" => section_check::<InitConfig>(v),
                "fit" => section_check::<FitConfig>(v),
                "sds" => section_check::<SdsConfig>(v),
                "trellis" => section_check::<TrellisConfig>(v),
                "matte" => section_check::<MatteConfig>(v),
                "flux" => section_check::<FluxConfig>(v),
                _ => section_check::<OutputConfig>(v),
            };
            r.map_err(|e| ConfigError(format!("{section}: {e}")))?;
        }
    }
    Ok(())
}

fn section_check<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    serde_yaml_ng::from_value::<T>(v.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl PipelineConfig {
    /// Parses one YAML document (no profile under it) and validates it.
    pub fn from_yaml_str(text: &str) -> Result<PipelineConfig, ConfigError> {
        from_value(parse_yaml(text, "config")?)
    }

    /// A built-in profile.
    pub fn profile(name: &str) -> Result<PipelineConfig, ConfigError> {
        ConfigSources {
            profile: Some(name.to_string()),
            ..Default::default()
        }
        .resolve()
        .map(|(_, c)| c)
    }

    /// Reads a YAML file (no profile under it).
    pub fn load(path: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        PipelineConfig::from_yaml_str(&text)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Every key the configured pipeline reads, with its value, as YAML (a
    /// TRELLIS profile leaves out the MVDream sections, and only a flux-trellis
    /// profile shows `flux:`).
    pub fn to_yaml(&self) -> String {
        let mut value = serde_yaml_ng::to_value(self).expect("config serialises");
        if let Value::Mapping(m) = &mut value {
            let hidden = if self.pipeline.runs_trellis() {
                MVDREAM_SECTIONS
            } else {
                TRELLIS_SECTIONS
            };
            for section in hidden {
                m.remove(*section);
            }
            if self.pipeline != PipelineKind::FluxTrellis {
                m.remove(FLUX_SECTION);
            }
        }
        serde_yaml_ng::to_string(&value).expect("config serialises")
    }

    /// Checks ranges and consistency; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("{key}: {why}")));
        let t = &self.trellis;
        for (key, steps) in [
            ("trellis.sparse_structure_steps", t.sparse_structure_steps),
            ("trellis.slat_steps", t.slat_steps),
        ] {
            if let Some(n) = steps.filter(|n| !(1..=1000).contains(n)) {
                return bad(key, format!("must be 1 to 1000, got {n}"));
            }
        }
        for (key, cfg) in [
            ("trellis.sparse_structure_cfg", t.sparse_structure_cfg),
            ("trellis.slat_cfg", t.slat_cfg),
        ] {
            if let Some(c) = cfg.filter(|c| !(c.is_finite() && *c >= 0.0)) {
                return bad(key, format!("must be finite and ≥ 0, got {c}"));
            }
        }
        let m = &self.matte;
        if let Some(fallback) = m.fallback.filter(|f| *f != MatteMethod::BirefnetLite) {
            return bad(
                "matte.fallback",
                format!(
                    "only birefnet-lite (or null) is a fallback, got {}",
                    fallback.name()
                ),
            );
        }
        let f = &self.flux;
        if !(1..=100).contains(&f.steps) {
            return bad("flux.steps", format!("must be 1 to 100, got {}", f.steps));
        }
        for (key, side) in [("flux.width", f.width), ("flux.height", f.height)] {
            if side == 0 || side % 16 != 0 || side > 2048 {
                return bad(
                    key,
                    format!("must be a multiple of 16 from 16 to 2048, got {side}"),
                );
            }
        }
        if !(1..=512).contains(&f.max_sequence_length) {
            return bad(
                "flux.max_sequence_length",
                format!("must be 1 to 512, got {}", f.max_sequence_length),
            );
        }
        if !(f.guidance.is_finite() && f.guidance >= 0.0) {
            return bad(
                "flux.guidance",
                format!("must be finite and ≥ 0, got {}", f.guidance),
            );
        }
        if f.prompt_template.matches(PROMPT_PLACEHOLDER).count() != 1 {
            return bad(
                "flux.prompt_template",
                format!(
                    "must contain {PROMPT_PLACEHOLDER} exactly once, got {:?}",
                    f.prompt_template
                ),
            );
        }
        let d = &self.diffusion;
        if d.num_inference_steps == 0 || d.num_inference_steps > 1000 {
            return bad(
                "diffusion.num_inference_steps",
                format!("must be 1 to 1000, got {}", d.num_inference_steps),
            );
        }
        if !d.guidance_scale.is_finite() || d.guidance_scale < 0.0 {
            return bad(
                "diffusion.guidance_scale",
                format!("must be finite and ≥ 0, got {}", d.guidance_scale),
            );
        }
        if d.n_views == 0 || d.n_views > 16 {
            return bad(
                "diffusion.n_views",
                format!("must be 1 to 16, got {}", d.n_views),
            );
        }
        if d.resolution == 0 || d.resolution % 8 != 0 || d.resolution > 2048 {
            return bad(
                "diffusion.resolution",
                format!(
                    "must be a multiple of 8 from 8 to 2048, got {}",
                    d.resolution
                ),
            );
        }
        if !(d.camera_radius.is_finite() && d.camera_radius > 0.0) {
            return bad(
                "diffusion.camera_radius",
                format!("must be positive, got {}", d.camera_radius),
            );
        }
        if !(d.fovy.is_finite() && d.fovy > 1.0 && d.fovy < 170.0) {
            return bad(
                "diffusion.fovy",
                format!("must be between 1 and 170 degrees, got {}", d.fovy),
            );
        }
        if !d.elevation.is_finite() || d.elevation.abs() > 89.0 {
            return bad(
                "diffusion.elevation",
                format!("must be within ±89 degrees, got {}", d.elevation),
            );
        }
        if !d.azimuth_start.is_finite() {
            return bad("diffusion.azimuth_start", "must be finite".into());
        }
        if d.vae_tile_size < 16 || d.vae_tile_size % 8 != 0 {
            return bad(
                "diffusion.vae_tile_size",
                format!(
                    "must be a multiple of 8, at least 16, got {}",
                    d.vae_tile_size
                ),
            );
        }
        if d.vae_tile_overlap % 8 != 0 || d.vae_tile_overlap >= d.vae_tile_size {
            return bad(
                "diffusion.vae_tile_overlap",
                format!(
                    "must be a multiple of 8 below vae_tile_size, got {}",
                    d.vae_tile_overlap
                ),
            );
        }
        let a = &self.alpha;
        if !(a.low.is_finite()
            && a.high.is_finite()
            && 0.0 <= a.low
            && a.low < a.high
            && a.high <= 1.0)
        {
            return bad(
                "alpha.low",
                format!("need 0 ≤ low < high ≤ 1, got low {} high {}", a.low, a.high),
            );
        }
        if a.open_radius > 16 {
            return bad(
                "alpha.open_radius",
                format!("must be at most 16, got {}", a.open_radius),
            );
        }
        if !(a.min_component.is_finite() && (0.0..1.0).contains(&a.min_component)) {
            return bad(
                "alpha.min_component",
                format!("must be in [0, 1), got {}", a.min_component),
            );
        }
        let i = &self.init;
        if i.grid < 2 || i.grid > 512 {
            return bad("init.grid", format!("must be 2 to 512, got {}", i.grid));
        }
        if !(i.bound.is_finite() && i.bound > 0.0) {
            return bad("init.bound", format!("must be positive, got {}", i.bound));
        }
        if !(i.mask_threshold > 0.0 && i.mask_threshold < 1.0) {
            return bad(
                "init.mask_threshold",
                format!("must be in (0, 1), got {}", i.mask_threshold),
            );
        }
        if !(i.opacity > 0.0 && i.opacity < 1.0) {
            return bad(
                "init.opacity",
                format!("must be in (0, 1), got {}", i.opacity),
            );
        }
        if i.mask_dilation > 32 {
            return bad(
                "init.mask_dilation",
                format!("must be at most 32, got {}", i.mask_dilation),
            );
        }
        self.fit
            .validate()
            .map_err(|e| ConfigError(format!("fit.{e}")))?;
        if self.fit.num_pts == 0 {
            return bad("fit.num_pts", "must be at least 1".into());
        }
        let s = &self.sds;
        if s.sds_iters > 0 && (s.resolution == 0 || s.resolution % 8 != 0 || s.resolution > 2048) {
            return bad(
                "sds.resolution",
                format!(
                    "must be a multiple of 8 from 8 to 2048, got {}",
                    s.resolution
                ),
            );
        }
        if !(0.0 <= s.min_step && s.min_step <= s.max_step && s.max_step < 1.0) {
            return bad(
                "sds.min_step",
                format!(
                    "need 0 ≤ min_step ≤ max_step < 1, got {} and {}",
                    s.min_step, s.max_step
                ),
            );
        }
        if !(s.annealing_eta.is_finite() && s.annealing_eta > 0.0) {
            return bad(
                "sds.annealing_eta",
                format!("must be positive, got {}", s.annealing_eta),
            );
        }
        if !s.guidance_scale.is_finite() || s.guidance_scale < 0.0 {
            return bad(
                "sds.guidance_scale",
                format!("must be finite and ≥ 0, got {}", s.guidance_scale),
            );
        }
        for (key, v) in [
            ("sds.lambda_sds", s.lambda_sds),
            ("sds.lambda_views", s.lambda_views),
            ("sds.lr_scale", s.lr_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("must be finite and ≥ 0, got {v}"));
            }
        }
        let [lo, hi] = s.elevation_range;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi && lo >= -89.0 && hi <= 89.0) {
            return bad(
                "sds.elevation_range",
                format!("need -89 ≤ low ≤ high ≤ 89, got [{lo}, {hi}]"),
            );
        }
        if !(self.output.box_size.is_finite() && self.output.box_size > 0.0) {
            return bad(
                "output.box_size",
                format!("must be positive, got {}", self.output.box_size),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(profile: Option<&str>, sets: &[&str]) -> ConfigSources {
        ConfigSources {
            profile: profile.map(str::to_string),
            config_file: None,
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn every_builtin_profile_parses_and_validates() {
        for (name, _) in PROFILES {
            let c = PipelineConfig::profile(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Round trip through YAML.
            assert_eq!(
                PipelineConfig::from_yaml_str(&c.to_yaml()).unwrap(),
                c,
                "{name}"
            );
        }
        let speed = PipelineConfig::profile("speed").unwrap();
        let quality = PipelineConfig::profile("quality").unwrap();
        assert_eq!(speed.sds.sds_iters, 0);
        assert!(quality.sds.sds_iters > 0);
        assert!(quality.diffusion.num_inference_steps > speed.diffusion.num_inference_steps);
        let memory = PipelineConfig::profile("memory").unwrap();
        assert!(memory.diffusion.vae_slicing && memory.diffusion.vae_tiling);
        let dev = PipelineConfig::profile("development").unwrap();
        assert!(dev.diffusion.resolution <= 64 && dev.fit.iters <= 20);
        assert_eq!(dev.pipeline, PipelineKind::Mvdream);
        // The image profiles: pipeline.json's samplers, fewer steps, tiny sizes.
        let image = |name| PipelineConfig::profile(name).unwrap();
        let (quality, speed, dev) = (
            image("image-quality"),
            image("image-speed"),
            image("image-development"),
        );
        for c in [&quality, &speed, &dev] {
            assert_eq!(c.pipeline, PipelineKind::Trellis);
            assert!(!c.output.normalize && c.output.min_gaussians == 0);
        }
        assert_eq!(quality.trellis, TrellisConfig::default());
        assert_eq!(
            (
                speed.trellis.sparse_structure_steps,
                speed.trellis.slat_steps
            ),
            (Some(12), Some(12))
        );
        assert_eq!(dev.trellis.slat_steps, Some(2));
        assert_eq!(dev.trellis.precision, Precision::F32);
        let yaml = speed.to_yaml();
        assert!(yaml.contains("pipeline: trellis") && yaml.contains("slat_steps: 12"));
        assert!(
            !yaml.contains("diffusion:") && !yaml.contains("sds:"),
            "{yaml}"
        );
        let e = sources(Some("image-speed"), &["trellis.slat_steps=0"])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.contains("trellis.slat_steps"), "{e}");
        let e = sources(Some("image-speed"), &["trellis.slat_stepz=3"])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.contains("trellis") && e.contains("slat_stepz"), "{e}");
    }

    #[test]
    fn default_profile_is_balanced_and_unknown_profiles_are_named() {
        let (name, c) = sources(None, &[]).resolve().unwrap();
        assert_eq!(name, "balanced");
        assert_eq!(c, PipelineConfig::profile("balanced").unwrap());
        let e = sources(Some("fastest"), &[]).resolve().unwrap_err().0;
        assert!(e.contains("fastest") && e.contains("speed"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_them() {
        for (yaml, key) in [
            ("sds:\n  sds_iter: 3\n", "sds_iter"),
            (
                "diffusion:\n  num_inference_step: 3\n",
                "num_inference_step",
            ),
            (
                "fit:\n  densify_grad_treshold: 0.1\n",
                "densify_grad_treshold",
            ),
            ("bogus: 1\n", "bogus"),
            ("model:\n  rescale_factor: 0.5\n", "model"),
        ] {
            let e = PipelineConfig::from_yaml_str(yaml).unwrap_err().0;
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let e = PipelineConfig::from_yaml_str("sds:\n  sds_iter: 3\n")
            .unwrap_err()
            .0;
        assert!(e.starts_with("sds: "), "{e}");
        let e = sources(Some("speed"), &["sds.sds_iter=3"])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.contains("sds") && e.contains("sds_iter"), "{e}");
        let e = sources(Some("speed"), &["nosuch.key=3"])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn image_profiles_choose_their_matte_and_bad_matte_keys_are_named() {
        let matte = |name| PipelineConfig::profile(name).unwrap().matte;
        let quality = matte("image-quality");
        assert_eq!(
            (quality.method, quality.fallback, quality.precision),
            (
                MatteMethod::Birefnet,
                Some(MatteMethod::BirefnetLite),
                Precision::Bf16
            )
        );
        assert_eq!(matte("image-speed").method, MatteMethod::BirefnetLite);
        assert_eq!(matte("image-development").precision, Precision::F32);
        assert_eq!(matte("text-image-quality").method, MatteMethod::Birefnet);
        let yaml = PipelineConfig::profile("image-speed").unwrap().to_yaml();
        assert!(yaml.contains("method: birefnet-lite"), "{yaml}");
        let mvdream = PipelineConfig::profile("speed").unwrap().to_yaml();
        assert!(!mvdream.contains("matte:"), "{mvdream}");
        let e = sources(Some("image-quality"), &["matte.fallback=threshold"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("matte.fallback"), "{e}");
        let e = sources(Some("image-speed"), &["matte.method=rembg"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("matte") && e.contains("rembg"), "{e}");
        let (_, c) = sources(Some("image-quality"), &["matte.method=threshold"])
            .resolve()
            .unwrap();
        assert_eq!(c.matte.method, MatteMethod::Threshold);
    }

    #[test]
    fn flux_trellis_profiles_show_their_flux_section_and_check_it() {
        let quality = PipelineConfig::profile("text-image-quality").unwrap();
        assert_eq!(quality.pipeline, PipelineKind::FluxTrellis);
        assert_eq!(
            (quality.flux.steps, quality.flux.width, quality.flux.height),
            (4, 512, 512)
        );
        assert_eq!(quality.trellis, TrellisConfig::default());
        let prompt = quality.flux.prompt("a red chair");
        assert!(
            prompt.contains("a red chair") && prompt.contains("white background"),
            "{prompt}"
        );
        let yaml = quality.to_yaml();
        assert!(
            yaml.contains("pipeline: flux-trellis")
                && yaml.contains("prompt_template:")
                && yaml.contains("trellis:")
                && !yaml.contains("diffusion:"),
            "{yaml}"
        );
        assert!(!PipelineConfig::profile("image-quality")
            .unwrap()
            .to_yaml()
            .contains("flux:"));
        assert!(!PipelineConfig::profile("balanced")
            .unwrap()
            .to_yaml()
            .contains("flux:"));
        let dev = PipelineConfig::profile("text-image-development").unwrap();
        assert_eq!(dev.flux.precision, Precision::F32);
        assert!(dev.flux.width <= 64 && dev.trellis.slat_steps == Some(2));
        for (set, needle) in [
            ("flux.steps=0", "flux.steps"),
            ("flux.width=100", "flux.width"),
            (
                "flux.prompt_template=no placeholder",
                "flux.prompt_template",
            ),
            (
                "flux.prompt_template='{prompt} and {prompt}'",
                "exactly once",
            ),
            ("flux.guidance=-1", "flux.guidance"),
            ("flux.stepz=3", "stepz"),
        ] {
            let e = sources(Some("text-image-development"), &[set])
                .resolve()
                .unwrap_err()
                .0;
            assert!(e.contains(needle), "{set}: {e}");
        }
    }

    #[test]
    fn sets_override_with_dotted_paths_and_yaml_values() {
        let (_, c) = sources(
            Some("speed"),
            &[
                "fit.iters=123",
                "sds.sds_iters=7",
                "diffusion.precision=bf16",
                "diffusion.guidance_scale=3.5",
                "fit.render_sizes=[64, 128]",
                "fit.render_size_milestones=[0.5]",
                "seed=9",
                "diffusion.ref_size=128",
                "diffusion.negative_prompt=",
            ],
        )
        .resolve()
        .unwrap();
        assert_eq!(c.fit.iters, 123);
        assert_eq!(c.sds.sds_iters, 7);
        assert_eq!(c.diffusion.precision, Precision::Bf16);
        assert_eq!(c.diffusion.guidance_scale, 3.5);
        assert_eq!(c.fit.render_sizes, vec![64, 128]);
        assert_eq!(c.seed, 9);
        assert_eq!(c.diffusion.resolution, 128);
        assert_eq!(c.diffusion.negative_prompt, "");
        // The rest of the profile is kept.
        let speed = PipelineConfig::profile("speed").unwrap();
        assert_eq!(c.fit.num_pts, speed.fit.num_pts);
        assert_eq!(c.alpha, speed.alpha);

        for (set, needle) in [
            ("fit.iters", "KEY=VALUE"),
            ("fit.iters=lots", "iters"),
            ("fit.iters=0", "fit.iters"),
            ("seed.x=1", "`seed` is a value"),
            (".x=1", "key path"),
            ("diffusion.precision=fp8", "precision"),
        ] {
            let e = sources(Some("speed"), &[set]).resolve().unwrap_err().0;
            assert!(e.contains(needle), "{set}: {e}");
        }
    }

    #[test]
    fn config_file_merges_over_the_profile_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mine.yaml");
        std::fs::write(&p, "fit:\n  iters: 77\nsds:\n  sds_iters: 5\n").unwrap();
        let s = ConfigSources {
            profile: Some("quality".into()),
            config_file: Some(p.clone()),
            sets: vec!["fit.iters=78".into()],
        };
        let (name, c) = s.resolve().unwrap();
        assert_eq!(name, "quality");
        assert_eq!((c.fit.iters, c.sds.sds_iters), (78, 5));
        let q = PipelineConfig::profile("quality").unwrap();
        assert_eq!(c.fit.num_pts, q.fit.num_pts);
        assert_eq!(c.diffusion, q.diffusion);

        std::fs::write(&p, "diffusion:\n  ref_size: 64\n").unwrap();
        let c = ConfigSources {
            config_file: Some(p.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .1;
        assert_eq!(c.diffusion.resolution, 64);
        std::fs::write(&p, "diffusion:\n  ref_size: 64\n  resolution: 64\n").unwrap();
        let e = ConfigSources {
            config_file: Some(p.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("same key"), "{e}");
        std::fs::write(&p, "sds:\n  lambda_sdss: 1\n").unwrap();
        let e = ConfigSources {
            config_file: Some(p.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("mine.yaml") && e.contains("lambda_sdss"), "{e}");
        let e = ConfigSources {
            config_file: Some(dir.path().join("none.yaml")),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("none.yaml"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (yaml, key) in [
            ("diffusion:\n  resolution: 100\n", "diffusion.resolution"),
            ("diffusion:\n  n_views: 0\n", "diffusion.n_views"),
            ("alpha:\n  low: 0.5\n  high: 0.2\n", "alpha.low"),
            ("sds:\n  min_step: 0.9\n  max_step: 0.1\n", "sds.min_step"),
            ("sds:\n  sds_iters: 3\n  resolution: 12\n", "sds.resolution"),
            ("init:\n  grid: 1\n", "init.grid"),
            ("fit:\n  iters: 0\n", "fit.iters"),
            (
                "diffusion:\n  vae_tile_overlap: 256\n",
                "diffusion.vae_tile_overlap",
            ),
        ] {
            let e = PipelineConfig::from_yaml_str(yaml).unwrap_err().0;
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }
}
