//! FLUX.1-schnell (and -dev) text → image on our transformer
//! ([`transformer::FluxTransformer`]) and candle-transformers'
//! `flux::sampling` (packing, schedule, Euler flow-matching loop), with
//! candle's T5 encoder (`models::t5::T5EncoderModel`), our CLIP text encoder
//! for the pooled CLIP-L embedding, and our VAE ([`crate::vae`] with FLUX's
//! 16-channel configuration, shift and scale; tiled for large images).
//!
//! The transformer is ours, not candle's `flux::model::Flux` (same weights,
//! names and forward), because candle's materialises the attention scores and
//! keeps its attention private, so the fused flash-attention kernel cannot be
//! used: on an H100 its step took 196 ms at 512² and 930 ms at 1024² against
//! diffusers' 73 / 176 ms (see the transformer's module docs).
//!
//! Loading: a diffusers-layout folder or hub repository
//! (`black-forest-labs/FLUX.1-schnell`): `transformer/config.json`
//! (`FluxTransformer2DModel`) and its (sharded) safetensors in diffusers
//! names, mapped to the original BFL module names (candle's and ours) by
//! [`flux_diffusers_source`] (fused `qkv` / `linear1` concatenated from
//! `to_q`, `to_k`, `to_v` [, `proj_mlp`], the final modulation's
//! `(scale, shift)` halves swapped); or, when the folder has no
//! `transformer/` weights, the original single file `flux1-schnell.safetensors`
//! / `flux1-dev.safetensors` at its root (BFL names as they are).
//! `text_encoder/` (CLIP-L, `CLIPTextModel`), `tokenizer/`,
//! `text_encoder_2/` (T5 v1.1 XXL encoder, sharded), `tokenizer_2/tokenizer.json`,
//! `vae/`, `scheduler/scheduler_config.json` (`FlowMatchEulerDiscreteScheduler`).

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::flux::model::Config as FluxConfig;
use candle_transformers::models::flux::sampling;
use candle_transformers::models::t5;
use serde::{Deserialize, Serialize};

use splatforge_nn::hub::FileSource;
use splatforge_nn::loading::{
    build_named, component_weights, identity_var_builder, load_component, read_source_config,
    read_source_json,
};
use splatforge_nn::rng;
use splatforge_nn::weights::{MappedBackend, NameMap, Source, TensorFile};

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{DiffusionError, Result};
use crate::loading::{
    diffusers_clip_text, diffusers_clip_tokenizer, diffusers_source, diffusers_vae,
    diffusers_vae_config, LoadOptions, ModelSource,
};
use crate::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::vae::{DecodedImages, Vae};
use transformer::FluxTransformer;

pub mod transformer;

/// FLUX.1-schnell on the hub.
pub const FLUX_SCHNELL_REPO: &str = "black-forest-labs/FLUX.1-schnell";

fn d64() -> usize {
    64
}
fn d4096() -> usize {
    4096
}
fn d768() -> usize {
    768
}
fn d128() -> usize {
    128
}
fn d24() -> usize {
    24
}
fn d19() -> usize {
    19
}
fn d38() -> usize {
    38
}
fn rope() -> Vec<usize> {
    vec![16, 56, 56]
}
fn one() -> usize {
    1
}

/// `transformer/config.json` (diffusers `FluxTransformer2DModel`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxTransformerConfig {
    #[serde(default = "one")]
    pub patch_size: usize,
    #[serde(default = "d64")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "d19")]
    pub num_layers: usize,
    #[serde(default = "d38")]
    pub num_single_layers: usize,
    #[serde(default = "d128")]
    pub attention_head_dim: usize,
    #[serde(default = "d24")]
    pub num_attention_heads: usize,
    #[serde(default = "d4096")]
    pub joint_attention_dim: usize,
    #[serde(default = "d768")]
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "rope")]
    pub axes_dims_rope: Vec<usize>,
}

impl FluxTransformerConfig {
    /// FLUX.1-schnell.
    pub fn schnell() -> Self {
        Self {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.attention_head_dim * self.num_attention_heads
    }

    /// candle-transformers' configuration (mlp ratio 4, θ = 10000, qkv bias: fixed in FLUX.1).
    pub fn to_candle(&self) -> std::result::Result<FluxConfig, String> {
        if self.patch_size != 1 {
            return Err(format!(
                "transformer: patch_size {} is not 1",
                self.patch_size
            ));
        }
        if self.out_channels.is_some_and(|o| o != self.in_channels) {
            return Err("transformer: out_channels differs from in_channels".into());
        }
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
        {
            return Err(format!(
                "transformer: axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.in_channels % 4 != 0 {
            return Err("transformer: in_channels must be 4 × the latent channels".into());
        }
        Ok(FluxConfig {
            in_channels: self.in_channels,
            vec_in_dim: self.pooled_projection_dim,
            context_in_dim: self.joint_attention_dim,
            hidden_size: self.hidden_size(),
            mlp_ratio: 4.0,
            num_heads: self.num_attention_heads,
            depth: self.num_layers,
            depth_single_blocks: self.num_single_layers,
            axes_dim: self.axes_dims_rope.clone(),
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: self.guidance_embeds,
        })
    }
}

/// Where the original BFL FLUX module tensor `name` (as [`FluxTransformer`]
/// and candle's `Flux` name it) is in a diffusers `FluxTransformer2DModel`
/// state dict (the inverse of diffusers' `convert_flux_to_diffusers.py`).
pub fn flux_diffusers_source(name: &str) -> Option<Source> {
    let key = |s: String| Some(Source::Key(s));
    let (head, w) = name.rsplit_once('.')?;
    let simple = |d: &str| key(format!("{d}.{w}"));
    match head {
        "img_in" => return simple("x_embedder"),
        "txt_in" => return simple("context_embedder"),
        "time_in.in_layer" => return simple("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => return simple("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => return simple("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => return simple("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => return simple("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => return simple("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => return simple("proj_out"),
        "final_layer.adaLN_modulation.1" => {
            return Some(Source::SwapHalves(format!("norm_out.linear.{w}")))
        }
        _ => {}
    }
    if let Some(rest) = head.strip_prefix("double_blocks.") {
        let (i, part) = rest.split_once('.')?;
        let p = format!("transformer_blocks.{i}.");
        let cat = |ks: [&str; 3]| {
            Some(Source::Concat(
                ks.iter().map(|k| format!("{p}attn.{k}.{w}")).collect(),
            ))
        };
        let m = |d: &str| key(format!("{p}{d}.{w}"));
        return match (part, w) {
            ("img_mod.lin", _) => m("norm1.linear"),
            ("txt_mod.lin", _) => m("norm1_context.linear"),
            ("img_attn.qkv", _) => cat(["to_q", "to_k", "to_v"]),
            ("txt_attn.qkv", _) => cat(["add_q_proj", "add_k_proj", "add_v_proj"]),
            ("img_attn.norm.query_norm", "scale") => key(format!("{p}attn.norm_q.weight")),
            ("img_attn.norm.key_norm", "scale") => key(format!("{p}attn.norm_k.weight")),
            ("txt_attn.norm.query_norm", "scale") => key(format!("{p}attn.norm_added_q.weight")),
            ("txt_attn.norm.key_norm", "scale") => key(format!("{p}attn.norm_added_k.weight")),
            ("img_attn.proj", _) => m("attn.to_out.0"),
            ("txt_attn.proj", _) => m("attn.to_add_out"),
            ("img_mlp.0", _) => m("ff.net.0.proj"),
            ("img_mlp.2", _) => m("ff.net.2"),
            ("txt_mlp.0", _) => m("ff_context.net.0.proj"),
            ("txt_mlp.2", _) => m("ff_context.net.2"),
            _ => None,
        };
    }
    if let Some(rest) = head.strip_prefix("single_blocks.") {
        let (i, part) = rest.split_once('.')?;
        let p = format!("single_transformer_blocks.{i}.");
        return match (part, w) {
            ("linear1", _) => Some(Source::Concat(vec![
                format!("{p}attn.to_q.{w}"),
                format!("{p}attn.to_k.{w}"),
                format!("{p}attn.to_v.{w}"),
                format!("{p}proj_mlp.{w}"),
            ])),
            ("linear2", _) => key(format!("{p}proj_out.{w}")),
            ("modulation.lin", _) => key(format!("{p}norm.linear.{w}")),
            ("norm.query_norm", "scale") => key(format!("{p}attn.norm_q.weight")),
            ("norm.key_norm", "scale") => key(format!("{p}attn.norm_k.weight")),
            _ => None,
        };
    }
    None
}

/// Builds the FLUX transformer from a weight file in diffusers names
/// (`transformer_blocks.0.attn.to_q.weight`, ...) or original BFL names
/// (`double_blocks.0.img_attn.qkv.weight`, ...), whichever the file has.
pub fn flux_transformer_from_file(
    file: Arc<TensorFile>,
    config: &FluxConfig,
    dtype: DType,
    device: &Device,
) -> Result<FluxTransformer> {
    let path = file.path().to_path_buf();
    let vb = if file.contains("img_in.weight") {
        identity_var_builder(file, "transformer", dtype, device)
    } else if file.contains("x_embedder.weight") {
        let map: NameMap = Arc::new(flux_diffusers_source);
        MappedBackend::new(file, map, "transformer").into_var_builder(dtype, device)
    } else {
        return Err(DiffusionError::bad_file(
            &path,
            "not a FLUX transformer: neither `x_embedder.weight` (diffusers) nor `img_in.weight` (original) is in it",
        ));
    };
    Ok(build_named(
        "FLUX transformer",
        &path,
        FluxTransformer::new(config, vb),
    )?)
}

fn f_one() -> f64 {
    1.0
}
fn f05() -> f64 {
    0.5
}
fn f115() -> f64 {
    1.15
}
fn d256() -> usize {
    256
}

/// `scheduler/scheduler_config.json` (`FlowMatchEulerDiscreteScheduler`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowMatchConfig {
    #[serde(default = "f_one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "f05")]
    pub base_shift: f64,
    #[serde(default = "f115")]
    pub max_shift: f64,
    #[serde(default = "d256")]
    pub base_image_seq_len: usize,
    #[serde(default = "d4096")]
    pub max_image_seq_len: usize,
}

impl Default for FlowMatchConfig {
    /// FLUX.1-schnell: no shift.
    fn default() -> Self {
        Self {
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
        }
    }
}

impl FlowMatchConfig {
    /// The `steps + 1` noise levels from 1 to 0 for an image of `seq_len` packed tokens.
    pub fn sigmas(&self, steps: usize, seq_len: usize) -> Vec<f64> {
        if self.use_dynamic_shifting {
            // candle's schedule uses the line through (256, base) and (4096, max).
            if self.base_image_seq_len == 256 && self.max_image_seq_len == 4096 {
                return sampling::get_schedule(
                    steps,
                    Some((seq_len, self.base_shift, self.max_shift)),
                );
            }
            let m = (self.max_shift - self.base_shift)
                / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
            let mu = self.base_shift + m * (seq_len as f64 - self.base_image_seq_len as f64);
            return sampling::get_schedule(steps, None)
                .into_iter()
                .map(|t| {
                    if t <= 0.0 {
                        0.0
                    } else {
                        mu.exp() / (mu.exp() + (1.0 / t - 1.0))
                    }
                })
                .collect();
        }
        let s = self.shift;
        sampling::get_schedule(steps, None)
            .into_iter()
            .map(|t| s * t / (1.0 + (s - 1.0) * t))
            .collect()
    }
}

/// What to generate. `Default` is FLUX.1-schnell's setting: 4 steps, 1024², 256 T5 tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxRequest {
    pub prompt: String,
    pub steps: usize,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// T5 sequence length (schnell: 256, dev: 512).
    pub max_sequence_length: usize,
    /// Distilled guidance, for transformers with `guidance_embeds` (dev); ignored by schnell.
    pub guidance: f64,
}

impl Default for FluxRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            steps: 4,
            seed: 0,
            width: 1024,
            height: 1024,
            max_sequence_length: 256,
            guidance: 3.5,
        }
    }
}

/// The generated image; its latents are the unpacked `[1, 16, H/8, W/8]`.
pub type FluxOutput = DecodedImages;

/// A prompt encoded for the transformer ([`FluxPipeline::encode_prompt`]).
#[derive(Debug, Clone)]
pub struct FluxText {
    /// T5 embeddings `[1, L, D]`.
    pub t5: Tensor,
    /// Pooled CLIP embedding `[1, C]`.
    pub pooled: Tensor,
}

/// The request's checks that need no model: image sides and steps.
fn check_request(req: &FluxRequest) -> Result<()> {
    if req.width == 0 || req.height == 0 || req.width % 16 != 0 || req.height % 16 != 0 {
        return Err(DiffusionError::InvalidArgument(format!(
            "FLUX image sides must be positive multiples of 16, got {}×{}",
            req.width, req.height
        )));
    }
    if req.steps == 0 {
        return Err(DiffusionError::InvalidArgument(
            "steps must be at least 1".into(),
        ));
    }
    Ok(())
}

/// A loaded FLUX pipeline. Build it with [`load_flux`].
#[derive(Debug)]
pub struct FluxPipeline {
    pub clip_tokenizer: ClipTokenizer,
    pub clip: ClipTextModel,
    pub t5_tokenizer: T5Tokenizer,
    /// candle's T5 encoder needs `&mut` to run.
    pub t5: Mutex<t5::T5EncoderModel>,
    pub transformer: FluxTransformer,
    pub transformer_config: FluxConfig,
    pub vae: Vae,
    pub scheduler: FlowMatchConfig,
    pub device: Device,
    /// Transformer and CLIP dtype.
    pub dtype: DType,
    /// T5 dtype (`dtype`, except f16 → f32: T5 overflows in f16).
    pub t5_dtype: DType,
    pub vae_dtype: DType,
    pub source: String,
}

impl FluxPipeline {
    /// Pooled CLIP embedding `[1, C]` (the final-layer-norm state at the first end-of-text token).
    pub fn encode_clip(&self, text: &str) -> Result<Tensor> {
        let ids = self.clip_tokenizer.encode(text)?;
        let eos = ids
            .iter()
            .position(|&i| i == self.clip_tokenizer.eos_id())
            .unwrap_or(ids.len() - 1);
        let n = ids.len();
        let ids = Tensor::from_vec(ids, (1, n), &self.device)?;
        let h = self.clip.forward(&ids)?;
        Ok(h.i((.., eos))?.contiguous()?)
    }

    /// T5 embeddings `[1, L, D]` of `text` padded to `max_len` tokens.
    pub fn encode_t5(&self, text: &str, max_len: usize) -> Result<Tensor> {
        let ids = self.t5_tokenizer.encode_to(text, max_len)?;
        let ids = Tensor::from_vec(ids, (1, max_len), &self.device)?;
        let mut t5 = self.t5.lock().expect("poisoned");
        Ok(t5.forward(&ids)?)
    }

    /// One transformer evaluation (the velocity) on packed latents
    /// `[B, N, 64]` at noise level `t ∈ [0, 1]`, f32. `txt` `[B, L, D]`,
    /// `pooled` `[B, C]`, `img_ids`/`txt_ids` as made by `sampling::State`.
    #[allow(clippy::too_many_arguments)]
    pub fn velocity(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        t: f64,
        pooled: &Tensor,
        guidance: Option<f64>,
    ) -> Result<Tensor> {
        let b = img.dim(0)?;
        let dt = self.dtype;
        let tv = Tensor::full(t as f32, b, &self.device)?.to_dtype(dt)?;
        let g = match guidance {
            Some(g) => Some(Tensor::full(g as f32, b, &self.device)?.to_dtype(dt)?),
            None => None,
        };
        Ok(self
            .transformer
            .forward(
                &img.to_dtype(dt)?,
                &img_ids.to_dtype(dt)?,
                &txt.to_dtype(dt)?,
                &txt_ids.to_dtype(dt)?,
                &tv,
                &pooled.to_dtype(dt)?,
                g.as_ref(),
            )?
            .to_dtype(DType::F32)?)
    }

    /// Scaled latents `[B, 16, h, w]` → images in [0, 1] (f32, CPU).
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self
            .vae
            .decode_to_images(latents, self.vae_dtype)?
            .to_device(&Device::Cpu)?)
    }

    /// Text → final unpacked latents `[1, 16, H/8, W/8]` (f32, device).
    pub fn generate_latents(
        &self,
        req: &FluxRequest,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        check_request(req)?;
        let text = self.encode_prompt(&req.prompt, req.max_sequence_length)?;
        self.sample_latents(&text, req, progress)
    }

    /// The prompt's T5 embeddings and pooled CLIP embedding, in the transformer's dtype:
    /// the text-encoder half of [`Self::generate_latents`], apart so that callers can time it.
    pub fn encode_prompt(&self, prompt: &str, max_sequence_length: usize) -> Result<FluxText> {
        Ok(FluxText {
            t5: self
                .encode_t5(prompt, max_sequence_length)?
                .to_dtype(self.dtype)?,
            pooled: self.encode_clip(prompt)?.to_dtype(self.dtype)?,
        })
    }

    /// The sampling half of [`Self::generate_latents`] on encoded `text` (`req.prompt` is
    /// not read); `progress(done, total)` after each step, `Break` cancels.
    pub fn sample_latents(
        &self,
        text: &FluxText,
        req: &FluxRequest,
        mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        check_request(req)?;
        let dt = self.dtype;
        let (txt, pooled) = (&text.t5, &text.pooled);
        let lc = self.transformer_config.in_channels / 4;
        let (h, w) = (req.height / 8, req.width / 8);
        let noise = rng::randn(req.seed, &[1, lc, h, w], dt, &self.device)?;
        let state = sampling::State::new(txt, pooled, &noise)?;
        let sigmas = self.scheduler.sigmas(req.steps, (h / 2) * (w / 2));
        let guidance = self
            .transformer_config
            .guidance_embed
            .then_some(req.guidance);
        let mut img = state.img.clone();
        let n = sigmas.len() - 1;
        for (i, win) in sigmas.windows(2).enumerate() {
            let v = self.velocity(
                &img,
                &state.img_ids,
                &state.txt,
                &state.txt_ids,
                win[0],
                &state.vec,
                guidance,
            )?;
            img = (img.to_dtype(DType::F32)? + (v * (win[1] - win[0]))?)?.to_dtype(dt)?;
            if progress(i + 1, n).is_break() {
                return Err(DiffusionError::Cancelled);
            }
        }
        Ok(sampling::unpack(
            &img.to_dtype(DType::F32)?,
            req.height,
            req.width,
        )?)
    }

    /// Text → image.
    pub fn generate(&self, req: &FluxRequest) -> Result<FluxOutput> {
        let latents = self.generate_latents(req, |_, _| ControlFlow::Continue(()))?;
        Ok(FluxOutput {
            images: self.decode_latents(&latents)?,
            latents: latents.to_device(&Device::Cpu)?,
        })
    }
}

/// Loads FLUX.1 from a diffusers-layout folder or hub repository.
pub fn load_flux(source: &ModelSource, opts: &LoadOptions) -> Result<FluxPipeline> {
    let hint = format!(
        "expected a diffusers-layout FLUX.1 folder such as a snapshot of {FLUX_SCHNELL_REPO} (`huggingface-cli download {FLUX_SCHNELL_REPO}`; the repository is gated: accept its license and log in first)"
    );
    let src = diffusers_source(source, opts, &hint, "FLUX")?;
    load_flux_from(src.as_ref(), opts)
}

/// [`load_flux`] from any file source.
pub fn load_flux_from(src: &dyn FileSource, opts: &LoadOptions) -> Result<FluxPipeline> {
    splatforge_nn::configure_device(&opts.device)?;
    let (tcfg, fcfg) = read_source_config(
        src,
        "transformer/config.json",
        FluxTransformerConfig::to_candle,
    )?;
    let clip_cfg: ClipTextConfig = read_source_json(src, "text_encoder/config.json")?;
    let t5_cfg: t5::Config = read_source_json(src, "text_encoder_2/config.json")?;
    let vae_cfg = diffusers_vae_config(src)?;
    if clip_cfg.hidden_size != tcfg.pooled_projection_dim
        || t5_cfg.d_model != tcfg.joint_attention_dim
    {
        return Err(DiffusionError::Config(format!(
            "text encoders (CLIP {}, T5 {}) do not match the transformer (pooled {}, joint {})",
            clip_cfg.hidden_size,
            t5_cfg.d_model,
            tcfg.pooled_projection_dim,
            tcfg.joint_attention_dim
        )));
    }
    if vae_cfg.latent_channels * 4 != tcfg.in_channels {
        return Err(DiffusionError::Config(format!(
            "the VAE's {} latent channels do not match the transformer's in_channels {}",
            vae_cfg.latent_channels, tcfg.in_channels
        )));
    }
    let scheduler: FlowMatchConfig = match src.find_optional(&["scheduler/scheduler_config.json"]) {
        Some(_) => read_source_json(src, "scheduler/scheduler_config.json")?,
        None => FlowMatchConfig::default(),
    };
    let clip_tokenizer = diffusers_clip_tokenizer(src, clip_cfg.max_position_embeddings)?;
    let t5_tokenizer =
        T5Tokenizer::from_tokenizer_json(&src.find(&["tokenizer_2/tokenizer.json"])?, 256)?;
    let dtype = opts.dtype;
    let t5_dtype = if dtype == DType::F16 {
        DType::F32
    } else {
        dtype
    };
    let vae_dtype = opts.vae_dtype.unwrap_or(dtype);

    let tfile = match src.find_optional(&[
        "transformer/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "transformer/diffusion_pytorch_model.fp16.safetensors",
        "transformer/diffusion_pytorch_model.fp16.safetensors.index.json",
    ]) {
        Some(_) => component_weights(src, "transformer", &["diffusion_pytorch_model"])?,
        None => match src.find_optional(&["flux1-schnell.safetensors", "flux1-dev.safetensors"]) {
            Some(p) => Arc::new(TensorFile::open(&p)?),
            None => component_weights(src, "transformer", &["diffusion_pytorch_model"])?,
        },
    };
    let transformer = flux_transformer_from_file(tfile, &fcfg, dtype, &opts.device)?;

    let clip = diffusers_clip_text(src, &clip_cfg, "CLIP text encoder", dtype, &opts.device)?;
    let t5 = load_component(
        src,
        "text_encoder_2",
        &["model", "pytorch_model"],
        "T5 encoder",
        t5_dtype,
        &opts.device,
        |vb| t5::T5EncoderModel::load(vb, &t5_cfg),
    )?;
    let vae = diffusers_vae(src, &vae_cfg, vae_dtype, &opts.device)?;
    Ok(FluxPipeline {
        clip_tokenizer,
        clip,
        t5_tokenizer,
        t5: Mutex::new(t5),
        transformer,
        transformer_config: fcfg,
        vae,
        scheduler,
        device: opts.device.clone(),
        dtype,
        t5_dtype,
        vae_dtype,
        source: src.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names() {
        let k = |s: &str| Some(Source::Key(s.to_string()));
        assert_eq!(
            flux_diffusers_source("img_in.weight"),
            k("x_embedder.weight")
        );
        assert_eq!(
            flux_diffusers_source("vector_in.out_layer.bias"),
            k("time_text_embed.text_embedder.linear_2.bias")
        );
        assert_eq!(
            flux_diffusers_source("double_blocks.3.img_attn.qkv.bias"),
            Some(Source::Concat(vec![
                "transformer_blocks.3.attn.to_q.bias".into(),
                "transformer_blocks.3.attn.to_k.bias".into(),
                "transformer_blocks.3.attn.to_v.bias".into()
            ]))
        );
        assert_eq!(
            flux_diffusers_source("double_blocks.0.txt_attn.norm.key_norm.scale"),
            k("transformer_blocks.0.attn.norm_added_k.weight")
        );
        assert_eq!(
            flux_diffusers_source("double_blocks.1.txt_mlp.2.weight"),
            k("transformer_blocks.1.ff_context.net.2.weight")
        );
        assert_eq!(
            flux_diffusers_source("single_blocks.7.linear1.weight"),
            Some(Source::Concat(vec![
                "single_transformer_blocks.7.attn.to_q.weight".into(),
                "single_transformer_blocks.7.attn.to_k.weight".into(),
                "single_transformer_blocks.7.attn.to_v.weight".into(),
                "single_transformer_blocks.7.proj_mlp.weight".into()
            ]))
        );
        assert_eq!(
            flux_diffusers_source("single_blocks.0.norm.query_norm.scale"),
            k("single_transformer_blocks.0.attn.norm_q.weight")
        );
        assert_eq!(
            flux_diffusers_source("final_layer.adaLN_modulation.1.weight"),
            Some(Source::SwapHalves("norm_out.linear.weight".into()))
        );
        assert_eq!(
            flux_diffusers_source("final_layer.linear.bias"),
            k("proj_out.bias")
        );
        assert_eq!(flux_diffusers_source("double_blocks.0.nope.weight"), None);
    }

    #[test]
    fn schedules() {
        let c = FlowMatchConfig::default();
        assert_eq!(c.sigmas(4, 4096), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        let shifted = FlowMatchConfig {
            shift: 3.0,
            ..Default::default()
        };
        let s = shifted.sigmas(2, 1);
        assert!((s[1] - 0.75).abs() < 1e-12, "{s:?}");
        let dynamic = FlowMatchConfig {
            use_dynamic_shifting: true,
            ..Default::default()
        };
        let s = dynamic.sigmas(4, 256);
        // mu = 0.5 at 256 tokens: sigma(0.5) = e^0.5 / (e^0.5 + 1).
        assert!((s[2] - 0.5f64.exp() / (0.5f64.exp() + 1.0)).abs() < 1e-12);
        assert_eq!(
            FluxTransformerConfig::schnell()
                .to_candle()
                .unwrap()
                .hidden_size,
            3072
        );
    }
}
