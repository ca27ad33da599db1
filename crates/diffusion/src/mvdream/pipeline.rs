//! MVDream text → 4 views: tokenizer, text encoder, multi-view UNet with
//! DDIM and classifier-free guidance, VAE decoder.

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use splatforge_nn::rng;

use super::camera;
use super::unet::MultiViewUNet;
use crate::clip_text::ClipTextModel;
use crate::error::{DiffusionError, Result};
use crate::schedulers::ddim::{DdimConfig, DdimScheduler};
use crate::tokenizer::ClipTokenizer;
use crate::vae::Vae;

/// What to generate. `Default` is MVDream's `t2i.py` setting (50 DDIM
/// steps, guidance 10, 4 views at 256², elevation 15°, azimuths 0/90/180/270).
#[derive(Debug, Clone, PartialEq)]
pub struct MvDreamRequest {
    pub prompt: String,
    /// Appended to the prompt (MVDream's scripts use ", 3d asset").
    pub prompt_suffix: String,
    /// The unconditional prompt of classifier-free guidance ("" = MVDream's default).
    pub negative_prompt: String,
    pub steps: usize,
    /// CFG scale; ≤ 1 disables guidance (one UNet pass per step, negative prompt unused).
    pub guidance_scale: f64,
    pub seed: u64,
    /// Output side in pixels (multiple of 8·2^(levels−1) of the UNet… in
    /// practice 256 for MVDream).
    pub image_size: usize,
    pub num_frames: usize,
    /// Degrees, positive = cameras above the object (MVDream's sign).
    pub elevation_deg: f64,
    pub azimuth_start_deg: f64,
    pub azimuth_span_deg: f64,
}

impl Default for MvDreamRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            prompt_suffix: ", 3d asset".into(),
            negative_prompt: String::new(),
            steps: 50,
            guidance_scale: 10.0,
            seed: 0,
            image_size: 256,
            num_frames: 4,
            elevation_deg: camera::DEFAULT_ELEVATION_DEG as f64,
            azimuth_start_deg: 0.0,
            azimuth_span_deg: 360.0,
        }
    }
}

/// The generated views.
#[derive(Debug, Clone)]
pub struct MvDreamOutput {
    /// `[num_frames, 3, size, size]`, f32 in [0, 1], on the CPU.
    pub images: Tensor,
    /// Final latents `[num_frames, 4, size/8, size/8]`, f32, on the CPU.
    pub latents: Tensor,
    /// The UNet's camera input for each view (MVDream `get_camera`).
    pub camera_embeddings: Vec<[f32; 16]>,
}

impl MvDreamOutput {
    /// The views as 8-bit RGB images.
    pub fn to_rgb_images(&self) -> Result<Vec<image::RgbImage>> {
        crate::vae::tensor_to_rgb_images(&self.images)
    }
}

/// A loaded MVDream model. Build it with [`crate::mvdream::load_mvdream`].
#[derive(Debug)]
pub struct MvDreamPipeline {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: MultiViewUNet,
    pub vae: Vae,
    pub scheduler: DdimConfig,
    pub device: Device,
    /// Dtype of the UNet and text encoder.
    pub dtype: DType,
    /// Dtype of the VAE.
    pub vae_dtype: DType,
    /// Where the weights came from (for messages).
    pub source: String,
}

impl MvDreamPipeline {
    /// Text embeddings `[1, max_length, context_dim]` of one prompt (model dtype).
    pub fn encode_prompt(&self, text: &str) -> Result<Tensor> {
        crate::clip_text::encode_clip_prompt(
            &self.tokenizer,
            &self.text_encoder,
            text,
            &self.device,
        )
    }

    /// UNet noise prediction for a batch (the SDS entry point).
    ///
    /// `latents [B, 4, h, w]` with `B = n·num_frames`, `timesteps` one per
    /// item, `context [B, T, C]`, `camera [B, 16]`. Returns f32 ε̂.
    pub fn predict_noise(
        &self,
        latents: &Tensor,
        timesteps: &[f64],
        context: &Tensor,
        camera: Option<&Tensor>,
        num_frames: usize,
    ) -> Result<Tensor> {
        let t = Tensor::from_vec(
            timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(),
            timesteps.len(),
            &self.device,
        )?;
        Ok(self
            .unet
            .forward(latents, &t, context, camera, num_frames)?
            .to_dtype(DType::F32)?)
    }

    /// The camera input tensor `[num_frames, 16]` for a request.
    pub fn camera_tensor(&self, req: &MvDreamRequest) -> Result<(Tensor, Vec<[f32; 16]>)> {
        let emb = camera::camera_embeddings(
            req.num_frames,
            req.elevation_deg,
            req.azimuth_start_deg,
            req.azimuth_span_deg,
        );
        let flat: Vec<f32> = emb.iter().flatten().copied().collect();
        Ok((
            Tensor::from_vec(flat, (req.num_frames, 16), &self.device)?,
            emb,
        ))
    }

    /// Scaled latents → images `[B, 3, H, W]` in [0, 1] (f32, on the CPU).
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self
            .vae
            .decode_to_images(latents, self.vae_dtype)?
            .to_device(&Device::Cpu)?)
    }

    /// Latent side for an image side.
    pub fn latent_size(&self, image_size: usize) -> Result<usize> {
        let f = self.vae.config().downscale();
        let unet_f = 1usize << (self.unet.config().channel_mult.len() - 1);
        if image_size == 0 || image_size % (f * unet_f) != 0 {
            return Err(DiffusionError::InvalidArgument(format!(
                "image size {image_size} must be a positive multiple of {}",
                f * unet_f
            )));
        }
        Ok(image_size / f)
    }

    /// Text → `num_frames` views.
    pub fn generate(&self, req: &MvDreamRequest) -> Result<MvDreamOutput> {
        self.generate_with_progress(req, |_, _| ControlFlow::Continue(()))
    }

    /// [`Self::generate`], calling `progress(step, total)` after each denoising step.
    pub fn generate_with_progress(
        &self,
        req: &MvDreamRequest,
        progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<MvDreamOutput> {
        let latents = self.generate_latents(req, progress)?;
        let images = self.decode_latents(&latents)?;
        let camera_embeddings = camera::camera_embeddings(
            req.num_frames,
            req.elevation_deg,
            req.azimuth_start_deg,
            req.azimuth_span_deg,
        );
        Ok(MvDreamOutput {
            images,
            latents: latents.to_device(&Device::Cpu)?,
            camera_embeddings,
        })
    }

    /// The denoising loop alone: final latents `[num_frames, 4, h, w]`
    /// (f32, on the model's device), not decoded.
    pub fn generate_latents(
        &self,
        req: &MvDreamRequest,
        mut progress: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor> {
        if req.num_frames == 0 {
            return Err(DiffusionError::InvalidArgument(
                "num_frames must be at least 1".into(),
            ));
        }
        if self.unet.config().camera_dim.is_some_and(|d| d != 16) {
            return Err(DiffusionError::Config(
                "the UNet's camera_dim is not 16".into(),
            ));
        }
        let hw = self.latent_size(req.image_size)?;
        let sched = DdimScheduler::new(&self.scheduler, req.steps)
            .map_err(DiffusionError::InvalidArgument)?;
        let f = req.num_frames;
        let cfg = req.guidance_scale > 1.0;

        let prompt = format!("{}{}", req.prompt, req.prompt_suffix);
        let pos = self.encode_prompt(&prompt)?;
        let (_, t_len, c_dim) = pos.dims3()?;
        let pos = pos.broadcast_as((f, t_len, c_dim))?;
        let context = if cfg {
            let neg = self
                .encode_prompt(&req.negative_prompt)?
                .broadcast_as((f, t_len, c_dim))?;
            Tensor::cat(&[&neg, &pos], 0)?
        } else {
            pos.contiguous()?
        };
        let (cam, _) = self.camera_tensor(req)?;
        let cam = if self.unet.config().camera_dim.is_some() {
            Some(if cfg {
                Tensor::cat(&[&cam, &cam], 0)?
            } else {
                cam
            })
        } else {
            None
        };

        let latent_ch = self.unet.config().in_channels;
        let mut latents =
            (rng::randn(req.seed, &[f, latent_ch, hw, hw], DType::F32, &self.device)?
                * sched.init_noise_sigma())?;
        let total = sched.timesteps().len();
        for (i, &t) in sched.timesteps().iter().enumerate() {
            let x_in = if cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let ts = vec![t as f64; x_in.dim(0)?];
            let eps = self.predict_noise(&x_in, &ts, &context, cam.as_ref(), f)?;
            let eps = if cfg {
                let uncond = eps.narrow(0, 0, f)?;
                let cond = eps.narrow(0, f, f)?;
                (&uncond + ((cond - &uncond)? * req.guidance_scale)?)?
            } else {
                eps
            };
            latents = sched.step(&eps, t, &latents)?;
            if progress(i + 1, total).is_break() {
                return Err(DiffusionError::Cancelled);
            }
        }
        Ok(latents)
    }
}
