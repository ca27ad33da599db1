//! Stable Diffusion 2.1 and SD-Turbo text → image, with our CLIP text
//! encoder ([`crate::clip_text`]; candle's `stable_diffusion::clip::Config`
//! has private fields), our VAE ([`crate::vae`], tiled), our deterministic
//! schedulers (DDIM for SD 2.1, Euler for SD-Turbo) and, for the UNet, our
//! MVDream UNet with one view and no camera ([`crate::mvdream`]), which is
//! SD 2.1's UNet in LDM form: diffusers' tensor names are mapped with
//! [`crate::mvdream::ldm::diffusers_unet_names`].
//!
//! Why not candle-transformers' `UNet2DConditionModel` (used until the
//! measurements in BENCHMARKS.md): in bf16 it is 2.9e-2 from diffusers' f32
//! output (bound 2e-2; its timestep frequencies are rounded to bf16 and its
//! GEGLU uses the tanh GELU), ours 1.1e-2; and ours runs the fused attention,
//! GroupNorm and cuDNN convolutions of [`splatforge_nn::ops`]. [`SdUNetConfig::to_candle`]
//! still validates the block layout, which both UNets share.
//!
//! Loading: a diffusers-layout folder or hub repository
//! (`stabilityai/sd-turbo`, `stabilityai/stable-diffusion-2-1[-base]`):
//! `unet/config.json` (diffusers `UNet2DConditionModel`, mapped to candle's
//! config), `unet/diffusion_pytorch_model[.fp16].safetensors` (or sharded),
//! `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/scheduler_config.json`
//! (`EulerDiscreteScheduler` → Euler; anything else → DDIM with the same
//! β schedule and prediction type).

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use serde::{Deserialize, Serialize};

use splatforge_nn::hub::FileSource;
use splatforge_nn::loading::{
    build_named, component_weights, read_source_config, read_source_json,
};
use splatforge_nn::rng;
use splatforge_nn::weights::MappedBackend;

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{DiffusionError, Result};
use crate::loading::{
    diffusers_clip_text, diffusers_clip_tokenizer, diffusers_source, diffusers_vae,
    diffusers_vae_config, LoadOptions, ModelSource,
};
use crate::mvdream::ldm::diffusers_unet_names;
use crate::mvdream::{MultiViewUNet, MultiViewUNetConfig, PerLevel};
use crate::schedulers::ddim::{DdimConfig, DdimScheduler};
use crate::schedulers::euler::EulerScheduler;
use crate::tokenizer::ClipTokenizer;
use crate::vae::{DecodedImages, Vae};

/// SD-Turbo on the hub (SD 2.1 architecture, 512², 1–4 steps, no guidance).
pub const SD_TURBO_REPO: &str = "stabilityai/sd-turbo";
/// SD 2.1 (768², v-prediction).
pub const SD21_REPO: &str = "stabilityai/stable-diffusion-2-1";
/// SD 2.1-base (512², ε-prediction).
pub const SD21_BASE_REPO: &str = "stabilityai/stable-diffusion-2-1-base";

/// An integer or one integer per block (diffusers accepts both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::All(n) => Some(*n),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
}

fn d4() -> usize {
    4
}
fn d32() -> usize {
    32
}
fn eps5() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}

/// `unet/config.json` of a diffusers `UNet2DConditionModel`, the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SdUNetConfig {
    #[serde(default = "d4")]
    pub in_channels: usize,
    #[serde(default = "d4")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Number of heads per block in SD 1.x/2.x configs (diffusers' legacy naming).
    pub attention_head_dim: PerBlock,
    /// When given, the number of heads per block (takes precedence).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub transformer_layers_per_block: Option<PerBlock>,
    pub cross_attention_dim: usize,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d32")]
    pub norm_num_groups: usize,
    #[serde(default = "eps5")]
    pub norm_eps: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

impl SdUNetConfig {
    /// SD 2.1 / SD-Turbo's UNet.
    pub fn sd21() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: vec![
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "CrossAttnDownBlock2D".into(),
                "DownBlock2D".into(),
            ],
            up_block_types: vec![
                "UpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
                "CrossAttnUpBlock2D".into(),
            ],
            layers_per_block: 2,
            attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
            num_attention_heads: None,
            transformer_layers_per_block: None,
            cross_attention_dim: 1024,
            use_linear_projection: true,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            sample_size: Some(96),
        }
    }

    /// candle-transformers' configuration; errors on block layouts it cannot build.
    pub fn to_candle(&self) -> std::result::Result<UNet2DConditionModelConfig, String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "unet: {n} block_out_channels but {} down and {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        let mut blocks = vec![];
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            let cross = match self.down_block_types[i].as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(format!("unet: down block type {other} is not supported")),
            };
            let up_expect = if cross {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            };
            if self.up_block_types[n - 1 - i] != up_expect {
                return Err(format!(
                    "unet: up block {} is {}, candle's UNet mirrors the down blocks ({up_expect})",
                    n - 1 - i,
                    self.up_block_types[n - 1 - i]
                ));
            }
            let heads = self
                .num_attention_heads
                .as_ref()
                .unwrap_or(&self.attention_head_dim)
                .get(i)
                .ok_or("unet: attention heads list is too short")?;
            if heads == 0 || c % heads != 0 {
                return Err(format!(
                    "unet: {c} channels do not split into {heads} heads"
                ));
            }
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "unet: {c} channels are not divisible into {} groups",
                    self.norm_num_groups
                ));
            }
            let layers = match &self.transformer_layers_per_block {
                Some(p) => p
                    .get(i)
                    .ok_or("unet: transformer_layers_per_block is too short")?,
                None => 1,
            };
            blocks.push(BlockConfig {
                out_channels: c,
                use_cross_attn: cross.then_some(layers),
                attention_head_dim: heads,
            });
        }
        Ok(UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        })
    }
}

impl SdUNetConfig {
    /// The equivalent LDM configuration of [`MultiViewUNet`] (one view, no
    /// camera); errors on what the LDM UNet cannot express.
    pub fn to_multiview(&self) -> std::result::Result<MultiViewUNetConfig, String> {
        let cc = self.to_candle()?;
        let unsupported =
            |what: &str| Err(format!("unet: {what} is not supported by the LDM UNet"));
        if self.norm_num_groups != 32 {
            return unsupported(&format!("norm_num_groups {}", self.norm_num_groups));
        }
        if !self.flip_sin_to_cos || self.freq_shift != 0.0 {
            return unsupported(
                "a timestep embedding other than flip_sin_to_cos with freq_shift 0",
            );
        }
        if self.center_input_sample
            || self.mid_block_scale_factor != 1.0
            || self.downsample_padding != 1
        {
            return unsupported(
                "center_input_sample, mid_block_scale_factor ≠ 1 or downsample_padding ≠ 1",
            );
        }
        let mc = self.block_out_channels[0];
        if self.block_out_channels.iter().any(|&c| c % mc != 0) {
            return unsupported("block_out_channels that are not multiples of the first");
        }
        let mut levels = vec![];
        let mut depth = None;
        for (i, b) in cc.blocks.iter().enumerate() {
            if let Some(d) = b.use_cross_attn {
                if depth.is_some_and(|x| x != d) {
                    return unsupported("transformer_layers_per_block varying per level");
                }
                depth = Some(d);
                levels.push((i, b.out_channels, b.attention_head_dim));
            }
        }
        // LDM has either a head count or a head width for all levels.
        let same_width = levels
            .windows(2)
            .all(|w| w[0].1 / w[0].2 == w[1].1 / w[1].2);
        let same_count = levels.windows(2).all(|w| w[0].2 == w[1].2);
        let (num_heads, num_head_channels) = match levels.first() {
            None => (-1, 64),
            Some(&(_, c, h)) if same_width => (-1, (c / h) as i64),
            Some(&(_, _, h)) if same_count => (h as i64, -1),
            Some(_) => return unsupported("heads of different counts and widths per level"),
        };
        Ok(MultiViewUNetConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            model_channels: mc,
            num_res_blocks: PerLevel::All(self.layers_per_block),
            attention_resolutions: levels.iter().map(|&(i, _, _)| 1usize << i).collect(),
            channel_mult: self.block_out_channels.iter().map(|&b| b / mc).collect(),
            num_heads,
            num_head_channels,
            transformer_depth: depth.unwrap_or(1),
            context_dim: self.cross_attention_dim,
            camera_dim: None,
            use_linear_in_transformer: self.use_linear_projection,
            ..MultiViewUNetConfig::sd21_base_4view()
        })
    }
}

/// Which sampler a scheduler config selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdSamplerKind {
    Ddim,
    Euler,
}

/// The scheduler of an SD pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SdSchedulerConfig {
    pub kind: SdSamplerKind,
    pub config: DdimConfig,
}

impl SdSchedulerConfig {
    /// From `scheduler/scheduler_config.json`: `EulerDiscreteScheduler` and
    /// `EulerAncestralDiscreteScheduler` → Euler (deterministic), else DDIM.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let class = v.get("_class_name").and_then(|c| c.as_str()).unwrap_or("");
        let config: DdimConfig = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let kind = if class.starts_with("EulerDiscrete") || class.starts_with("EulerAncestral") {
            SdSamplerKind::Euler
        } else {
            SdSamplerKind::Ddim
        };
        Ok(Self { kind, config })
    }
}

enum Sampler {
    Ddim(DdimScheduler),
    Euler(EulerScheduler),
}

impl Sampler {
    fn new(c: &SdSchedulerConfig, steps: usize) -> Result<Self> {
        Ok(match c.kind {
            SdSamplerKind::Ddim => Sampler::Ddim(
                DdimScheduler::new(&c.config, steps).map_err(DiffusionError::InvalidArgument)?,
            ),
            SdSamplerKind::Euler => Sampler::Euler(
                EulerScheduler::new(&c.config, steps).map_err(DiffusionError::InvalidArgument)?,
            ),
        })
    }
    fn timesteps(&self) -> Vec<usize> {
        match self {
            Sampler::Ddim(s) => s.timesteps().to_vec(),
            Sampler::Euler(s) => s.timesteps().to_vec(),
        }
    }
    fn init_sigma(&self) -> f64 {
        match self {
            Sampler::Ddim(s) => s.init_noise_sigma(),
            Sampler::Euler(s) => s.init_noise_sigma(),
        }
    }
    fn scale_input(&self, x: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        match self {
            Sampler::Ddim(_) => Ok(x.clone()),
            Sampler::Euler(s) => s.scale_model_input(x, i),
        }
    }
    fn step(&self, out: &Tensor, i: usize, t: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Sampler::Ddim(s) => s.step(out, t, x),
            Sampler::Euler(s) => s.step(out, i, x),
        }
    }
}

/// What to generate. `Default` is SD-Turbo's setting: 1 step, no guidance, 512².
#[derive(Debug, Clone, PartialEq)]
pub struct SdRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// CFG scale; ≤ 1 disables guidance (SD-Turbo).
    pub guidance_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
}

impl Default for SdRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 1,
            guidance_scale: 0.0,
            seed: 0,
            width: 512,
            height: 512,
        }
    }
}

impl SdRequest {
    /// SD 2.1's usual setting: 50 steps, guidance 7.5, 768².
    pub fn sd21(prompt: &str) -> Self {
        Self {
            prompt: prompt.into(),
            steps: 50,
            guidance_scale: 7.5,
            width: 768,
            height: 768,
            ..Default::default()
        }
    }
}

/// The generated image; its latents are `[1, 4, H/8, W/8]`.
pub type SdOutput = DecodedImages;

/// A loaded SD 2.1 / SD-Turbo pipeline. Build it with [`load_sd`].
#[derive(Debug)]
pub struct SdPipeline {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SD's UNet as [`MultiViewUNet`] with one view and no camera.
    pub unet: MultiViewUNet,
    pub unet_config: SdUNetConfig,
    pub vae: Vae,
    pub scheduler: SdSchedulerConfig,
    pub device: Device,
    pub dtype: DType,
    pub vae_dtype: DType,
    pub source: String,
}

impl SdPipeline {
    /// Text embeddings `[1, max_length, C]` (model dtype).
    pub fn encode_prompt(&self, text: &str) -> Result<Tensor> {
        crate::clip_text::encode_clip_prompt(
            &self.tokenizer,
            &self.text_encoder,
            text,
            &self.device,
        )
    }

    /// UNet output (ε or v) for a batch at one timestep, f32.
    pub fn predict_noise(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> Result<Tensor> {
        let t = Tensor::full(timestep as f32, latents.dim(0)?, &self.device)?;
        Ok(self
            .unet
            .forward(
                &latents.to_dtype(self.dtype)?,
                &t,
                &context.to_dtype(self.dtype)?,
                None,
                1,
            )?
            .to_dtype(DType::F32)?)
    }

    /// Scaled latents → images `[B, 3, H, W]` in [0, 1] (f32, CPU).
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self
            .vae
            .decode_to_images(latents, self.vae_dtype)?
            .to_device(&Device::Cpu)?)
    }

    fn latent_side(&self, px: usize) -> Result<usize> {
        let f = self.vae.config().downscale() << (self.unet_config.block_out_channels.len() - 1);
        if px == 0 || px % f != 0 {
            return Err(DiffusionError::InvalidArgument(format!(
                "image side {px} must be a positive multiple of {f}"
            )));
        }
        Ok(px / self.vae.config().downscale())
    }

    /// The denoising loop: final latents `[1, 4, h, w]` f32 on the device.
    pub fn generate_latents(
        &self,
        req: &SdRequest,
        mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        let (h, w) = (self.latent_side(req.height)?, self.latent_side(req.width)?);
        let sampler = Sampler::new(&self.scheduler, req.steps)?;
        let cfg = req.guidance_scale > 1.0;
        let pos = self.encode_prompt(&req.prompt)?;
        let context = if cfg {
            Tensor::cat(&[&self.encode_prompt(&req.negative_prompt)?, &pos], 0)?
        } else {
            pos
        };
        let c = self.unet_config.in_channels;
        let mut x = (rng::randn(req.seed, &[1, c, h, w], DType::F32, &self.device)?
            * sampler.init_sigma())?;
        let ts = sampler.timesteps();
        for (i, &t) in ts.iter().enumerate() {
            let xi = sampler.scale_input(&x, i)?;
            let x_in = if cfg {
                Tensor::cat(&[&xi, &xi], 0)?
            } else {
                xi
            };
            let out = self.predict_noise(&x_in, t as f64, &context)?;
            let out = if cfg {
                let u = out.narrow(0, 0, 1)?;
                let c = out.narrow(0, 1, 1)?;
                (&u + ((c - &u)? * req.guidance_scale)?)?
            } else {
                out
            };
            x = sampler.step(&out, i, t, &x)?;
            if progress(i + 1, ts.len()).is_break() {
                return Err(DiffusionError::Cancelled);
            }
        }
        Ok(x)
    }

    /// Text → image.
    pub fn generate(&self, req: &SdRequest) -> Result<SdOutput> {
        let latents = self.generate_latents(req, |_, _| ControlFlow::Continue(()))?;
        Ok(SdOutput {
            images: self.decode_latents(&latents)?,
            latents: latents.to_device(&Device::Cpu)?,
        })
    }
}

/// Loads SD 2.1 / SD-Turbo from a diffusers-layout folder or hub repository.
pub fn load_sd(source: &ModelSource, opts: &LoadOptions) -> Result<SdPipeline> {
    let hint = format!(
        "expected a diffusers-layout Stable Diffusion 2.x folder such as a snapshot of {SD_TURBO_REPO} (`huggingface-cli download {SD_TURBO_REPO}`) or {SD21_REPO}"
    );
    let src = diffusers_source(source, opts, &hint, "Stable Diffusion")?;
    load_sd_from(src.as_ref(), opts)
}

/// [`load_sd`] from any file source.
pub fn load_sd_from(src: &dyn FileSource, opts: &LoadOptions) -> Result<SdPipeline> {
    splatforge_nn::configure_device(&opts.device)?;
    let (unet_config, mv_cfg) =
        read_source_config(src, "unet/config.json", SdUNetConfig::to_multiview)?;
    let vae_cfg = diffusers_vae_config(src)?;
    let text_cfg: ClipTextConfig = read_source_json(src, "text_encoder/config.json")?;
    if text_cfg.hidden_size != unet_config.cross_attention_dim {
        return Err(DiffusionError::Config(format!(
            "the text encoder's hidden_size {} differs from the UNet's cross_attention_dim {}",
            text_cfg.hidden_size, unet_config.cross_attention_dim
        )));
    }
    let scheduler = match src.find_optional(&["scheduler/scheduler_config.json"]) {
        Some(p) => {
            let v: serde_json::Value = read_source_json(src, "scheduler/scheduler_config.json")?;
            SdSchedulerConfig::from_json(&v).map_err(|m| DiffusionError::bad_file(&p, m))?
        }
        None => SdSchedulerConfig {
            kind: SdSamplerKind::Ddim,
            config: DdimConfig::default(),
        },
    };
    let tokenizer = diffusers_clip_tokenizer(src, text_cfg.max_position_embeddings)?;
    let vae_dtype = opts.vae_dtype.unwrap_or(opts.dtype);

    let unet_file = component_weights(src, "unet", &["diffusion_pytorch_model"])?;
    let unet = build_named(
        "UNet",
        unet_file.path(),
        MultiViewUNet::new(
            MappedBackend::new(unet_file.clone(), diffusers_unet_names(&mv_cfg), "unet")
                .into_var_builder(opts.dtype, &opts.device),
            &mv_cfg,
        ),
    )?;
    let vae = diffusers_vae(src, &vae_cfg, vae_dtype, &opts.device)?;
    let text_encoder =
        diffusers_clip_text(src, &text_cfg, "text encoder", opts.dtype, &opts.device)?;
    Ok(SdPipeline {
        tokenizer,
        text_encoder,
        unet,
        unet_config,
        vae,
        scheduler,
        device: opts.device.clone(),
        dtype: opts.dtype,
        vae_dtype,
        source: src.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd21_maps_to_fixed_width_heads_of_64() {
        let c = SdUNetConfig::sd21().to_multiview().unwrap();
        assert_eq!((c.num_heads, c.num_head_channels), (-1, 64));
        assert_eq!(c.attention_resolutions, vec![1, 2, 4]);
        assert_eq!(c.channel_mult, vec![1, 2, 4, 4]);
        assert_eq!(
            (c.model_channels, c.context_dim, c.camera_dim),
            (320, 1024, None)
        );
        assert!(c.use_linear_in_transformer);
    }

    #[test]
    fn a_fixed_head_count_maps_to_num_heads() {
        // SD 1.5 style: 8 heads on every level, so the head width varies.
        let u = SdUNetConfig {
            attention_head_dim: PerBlock::All(8),
            cross_attention_dim: 768,
            use_linear_projection: false,
            ..SdUNetConfig::sd21()
        };
        let c = u.to_multiview().unwrap();
        assert_eq!((c.num_heads, c.num_head_channels), (8, -1));
        assert!(!c.use_linear_in_transformer);
        for level in 0..3 {
            let ch = 320 * c.channel_mult[level];
            assert_eq!(c.heads_for(ch), (8, ch / 8));
        }
    }

    #[test]
    fn what_the_ldm_unet_cannot_express_is_refused() {
        let base = SdUNetConfig::sd21();
        let cases = [
            SdUNetConfig {
                norm_num_groups: 16,
                ..base.clone()
            },
            SdUNetConfig {
                flip_sin_to_cos: false,
                ..base.clone()
            },
            SdUNetConfig {
                downsample_padding: 0,
                ..base.clone()
            },
            // Neither the head count nor the head width is the same on all levels.
            SdUNetConfig {
                attention_head_dim: PerBlock::Each(vec![5, 8, 10, 10]),
                ..base.clone()
            },
        ];
        for u in cases {
            let e = u.to_multiview().unwrap_err();
            assert!(e.contains("not supported"), "{e}");
        }
    }
}
