//! Diffusion runtime on candle for splatforge's first stage: MVDream text →
//! 4 consistent views (and, later, SD 2.1 / SD-Turbo / FLUX and SDS).
//!
//! | module | what |
//! |---|---|
//! | [`mvdream`] | MVDream's multi-view UNet (cross-view self-attention, camera embedding) |
//! | [`clip_text`] | the CLIP / OpenCLIP ViT-H text encoder (penultimate layer) |
//! | [`tokenizer`] | CLIP BPE tokenizer (`tokenizer.json` or `vocab.json` + `merges.txt`) |
//! | [`vae`] | the SD KL autoencoder (candle-transformers' `AutoEncoderKL`) |
//! | [`ddim`] | DDIM scheduler (SD 2.1-base schedule) |
//! | [`camera`] | MVDream camera inputs and our render cameras for the views |
//! | [`pipeline`] | text → views: CFG with a negative prompt, seeded noise |
//! | [`loading`], [`ldm`], [`hub`], [`weights`] | diffusers folders, LDM checkpoints, the HF cache |
//! | [`tiny`] | tiny random-weight models with the real tensor names |
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
pub mod hub;
pub mod ldm;
pub mod loading;
pub mod mvdream;
pub mod pipeline;
pub mod rng;
pub mod tiny;
pub mod tokenizer;
pub mod vae;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use error::{DiffusionError, Result};
pub use hub::HubConfig;
pub use loading::{load_mvdream, LdmConfig, LoadOptions, ModelSource};
pub use pipeline::{MvDreamOutput, MvDreamPipeline, MvDreamRequest};
pub use tiny::{make_tiny, TinyModels, TinyOptions};

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
