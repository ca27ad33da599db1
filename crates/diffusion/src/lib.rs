//! Diffusion runtime on candle for splatforge's first stage: MVDream text →
//! 4 consistent views, SD 2.1 / SD-Turbo and FLUX.1-schnell text → image,
//! the VAE with gradients and tiling, and SDS.
//!
//! | module | what |
//! |---|---|
//! | [`mvdream`] | MVDream's multi-view UNet (cross-view self-attention, camera embedding) |
//! | [`clip_text`] | the CLIP / OpenCLIP ViT-H text encoder (penultimate layer) |
//! | [`tokenizer`] | CLIP BPE tokenizer (`tokenizer.json` or `vocab.json` + `merges.txt`) |
//! | [`vae`] | the SD / FLUX KL autoencoder: encoder with gradients, decoder, tiling |
//! | [`sds`] | score distillation (DreamGaussian's SDS with MVDream) |
//! | [`sd`], [`euler`] | SD 2.1 / SD-Turbo text → image on our UNet (MVDream's, one view, no camera) |
//! | [`flux`] | FLUX.1-schnell text → image: loading, T5 + CLIP, candle-transformers' `flux` sampling |
//! | [`flux_transformer`] | FLUX.1's transformer, ours (fused attention, linear epilogues and RMSNorm + RoPE, token-major layout) |
//! | [`ops`] | the hot operations: CUDA kernels (attention, GroupNorm, linear epilogue, RMSNorm + RoPE, upsampling) and cuDNN convolutions, with candle's composite path on the CPU as their reference |
//! | [`ddim`] | DDIM scheduler (SD 2.1-base schedule) |
//! | [`camera`] | MVDream camera inputs and our render cameras for the views |
//! | [`pipeline`] | text → views: CFG with a negative prompt, seeded noise |
//! | [`loading`], [`ldm`], [`hub`], [`weights`] | diffusers folders, LDM checkpoints, the HF cache |
//! | [`tiny`] | random-weight models with the real tensor names: tiny ones for tests, MVDream at full size for timing |
//!
//! Quick start:
//! ```no_run
//! use splatforge_diffusion::{load_mvdream, LoadOptions, ModelSource, MvDreamRequest};
//! let pipe = load_mvdream(&ModelSource::mvdream_hub(), &LoadOptions::default())?;
//! let out = pipe.generate(&MvDreamRequest { prompt: "a cute owl".into(), seed: 1, ..Default::default() })?;
//! assert_eq!(out.images.dims(), &[4, 3, 256, 256]);
//! # Ok::<(), splatforge_diffusion::DiffusionError>(())
//! ```

pub mod camera;
pub mod clip_text;
pub mod ddim;
pub mod error;
pub mod euler;
pub mod flux;
pub mod flux_transformer;
pub mod hub;
pub mod ldm;
pub mod loading;
pub mod mvdream;
pub mod ops;
pub mod pipeline;
pub mod rng;
pub mod sd;
pub mod sds;
pub mod tiny;
pub mod tokenizer;
pub mod vae;
pub mod weights;

#[cfg(test)]
mod test_util;

pub use candle_core::{DType, Device, Tensor};
pub use error::{DiffusionError, Result, StepControl};
pub use flux::{load_flux, FluxOutput, FluxPipeline, FluxRequest};
pub use hub::HubConfig;
pub use loading::{load_mvdream, LdmConfig, LoadOptions, ModelSource};
pub use pipeline::{MvDreamOutput, MvDreamPipeline, MvDreamRequest};
pub use sd::{load_sd, SdOutput, SdPipeline, SdRequest};
pub use sds::{sds_gradient, SdsConditioning, SdsOptions, SdsOutput, SdsTimestep, SdsWeighting};
pub use tiny::{make_random_mvdream, make_tiny, ModelSize, RandomMvDream, TinyModels, TinyOptions};
pub use vae::{TilingOptions, Vae, VaeConfig};

/// TF32 for f32 matrix products on CUDA (candle's cuBLAS compute type,
/// process-wide); no effect on the CPU or without the `cuda` feature.
pub fn set_tf32(enabled: bool) {
    candle_core::cuda::set_gemm_reduced_precision_f32(enabled)
}

/// `f32`, `f16` / `fp16`, `bf16` → the dtype.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(DiffusionError::InvalidArgument(format!(
            "unknown precision `{other}` (f32, f16, bf16)"
        ))),
    }
}

/// The best available device: CUDA GPU `ordinal` when built with the `cuda`
/// feature and a GPU is present, else the CPU.
pub fn best_device(ordinal: usize) -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(ordinal) {
        return d;
    }
    let _ = ordinal;
    Device::Cpu
}
