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
//! | `lr_scale` | 1.0 | learning rates are the fit's final ones times this (with `from_scratch`: the fit's schedule at the SDS step, times this) |
//! | `random_background` | true | white or black at random per step (DreamGaussian) |
//! | `batch_size` | 1 | orbits per step (DreamGaussian's `batch_size`): `batch_size × diffusion.n_views` renders scored in one MVDream batch, one background per step |
//! | `from_scratch` | false | SDS alone from DreamGaussian's random ball (`fit.num_pts`), as `text_mv` and the 404 reference miner train: the `diffusion`, `alpha` and `fit` stages are skipped; needs `init.method: random`, `lambda_views: 0` and `sds_iters > 0`; `fit.iters` is then unused |
//!
//! `output:`
//! | key | default | meaning |
//! |---|---|---|
//! | `normalize` | true | recentre and scale to a box (`splatforge_splat::normalize::fit_to_box`) |
//! | `box_size` | 1.5 | the box side (the validators' 1.5) |
//! | `min_gaussians` | 7000 | fewer Gaussians than this are topped up by splitting the largest ones (the validators reject fewer than 7000; 0 = off) |

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use splatforge_fit::FitConfig;
pub use splatforge_nn::Precision;

mod overrides;
mod profiles;
mod sections;
mod sources;
#[cfg(test)]
mod tests;
mod validate;

pub use overrides::apply_set;
pub use profiles::{builtin_profile, DEFAULT_PROFILE, PROFILES};
pub use sections::{
    AlphaConfig, CarveSample, DiffusionConfig, FluxConfig, InitConfig, InitMethod, MatteConfig,
    MatteMethod, OutputConfig, PipelineKind, SdsConfig, TrellisConfig, DEFAULT_NEGATIVE_PROMPT,
    PROMPT_PLACEHOLDER,
};
pub use sources::{ConfigSources, ALIASES};

/// A configuration error; the message names the key (and the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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

impl PipelineConfig {
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
}
