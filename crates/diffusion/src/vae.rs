//! The Stable Diffusion KL autoencoder (VAE), built on candle-transformers'
//! `AutoEncoderKL` with diffusers tensor names.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::{Deserialize, Serialize};

/// `vae/config.json` (diffusers `AutoencoderKL`), the fields we use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding (SD: 0.18215).
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// SD 2.1 (and MVDream) VAE: `ch 128, ch_mult [1, 2, 4, 4], num_res_blocks 2`.
    pub fn sd21() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
        }
    }

    /// Image pixels per latent pixel (2^(levels−1); 8 for SD).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("vae: block_out_channels is empty".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "vae: {c} channels are not divisible into {} groups",
                self.norm_num_groups
            ));
        }
        Ok(())
    }
}

/// The VAE, with the latent scaling factor.
#[derive(Debug)]
pub struct Vae {
    inner: AutoEncoderKL,
    config: VaeConfig,
}

impl Vae {
    /// `vb` at the VAE root (`encoder.…`, `decoder.…`, `quant_conv.…`).
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::Msg)?;
        let c = AutoEncoderKLConfig {
            block_out_channels: config.block_out_channels.clone(),
            layers_per_block: config.layers_per_block,
            latent_channels: config.latent_channels,
            norm_num_groups: config.norm_num_groups,
            use_quant_conv: config.use_quant_conv,
            use_post_quant_conv: config.use_post_quant_conv,
        };
        let inner = AutoEncoderKL::new(vb, config.in_channels, config.out_channels, c)?;
        Ok(Self {
            inner,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Scaled latents `[B, 4, h, w]` (as the diffusion model sees them) →
    /// images `[B, 3, 8h, 8w]` in [0, 1], f32.
    pub fn decode_to_images(&self, latents: &Tensor, dtype: DType) -> Result<Tensor> {
        let z = (latents.to_dtype(dtype)? / self.config.scaling_factor)?;
        let x = self.inner.decode(&z)?.to_dtype(DType::F32)?;
        ((x + 1.0)? / 2.0)?.clamp(0f32, 1f32)
    }

    /// Raw decoder: unscaled latents → images in [−1, 1].
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        self.inner.decode(z)
    }
}
