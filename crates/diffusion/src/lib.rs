//! Diffusion models on candle for splatforge's first stage, one folder per
//! model family (as candle-transformers): MVDream text → 4 consistent views,
//! SD 2.1 / SD-Turbo and FLUX.1-schnell text → image, and the parts they
//! share: the VAE with gradients and tiling, the CLIP text encoder and
//! tokenizers, the schedulers, and the SDS gradient. The operations, weight
//! files and the hub are `splatforge_nn`'s.
//!
//! | module | what |
//! |---|---|
//! | [`mvdream`] | MVDream: the multi-view UNet, its camera rig, text → views, loading (diffusers, LDM checkpoints) |
//! | [`sd`] | SD 2.1 / SD-Turbo text → image on MVDream's UNet (one view, no camera) |
//! | [`flux`] | FLUX.1-schnell text → image: our transformer, T5 + CLIP, candle-transformers' sampling |
//! | [`vae`] | the SD / FLUX KL autoencoder: encoder with gradients, decoder, tiling |
//! | [`clip_text`] | the CLIP / OpenCLIP ViT-H text encoder (penultimate layer) |
//! | [`tokenizer`] | CLIP BPE and T5 tokenizers |
//! | [`schedulers`] | DDIM, Euler |
//! | [`sds`] | the score-distillation gradient (DreamGaussian's SDS with MVDream) |
//! | [`loading`] | where a model is ([`ModelSource`]), device and precision, the shared diffusers components |
//! | [`random_models`] | random-weight models with the real tensor names: tiny ones for tests, MVDream at full size for timing |
//!
//! Quick start:
//! ```no_run
//! use splatforge_diffusion::{load_mvdream, LoadOptions, ModelSource, MvDreamRequest};
//! let pipe = load_mvdream(&ModelSource::mvdream_hub(), &LoadOptions::default())?;
//! let out = pipe.generate(&MvDreamRequest { prompt: "a cute owl".into(), seed: 1, ..Default::default() })?;
//! assert_eq!(out.images.dims(), &[4, 3, 256, 256]);
//! # Ok::<(), splatforge_diffusion::DiffusionError>(())
//! ```

pub mod clip_text;
pub mod error;
pub mod flux;
pub mod loading;
pub mod mvdream;
pub mod random_models;
pub mod schedulers;
pub mod sd;
pub mod sds;
pub mod tokenizer;
pub mod vae;

pub use candle_core::{DType, Device, Tensor};
pub use error::{DiffusionError, Result};
pub use flux::{load_flux, FluxOutput, FluxPipeline, FluxRequest, FluxText};
pub use loading::{LoadOptions, ModelSource};
pub use mvdream::{load_mvdream, LdmConfig, MvDreamOutput, MvDreamPipeline, MvDreamRequest};
pub use random_models::{
    make_random_flux, make_random_mvdream, make_tiny, ModelSize, RandomFlux, RandomMvDream,
    TinyModels, TinyOptions,
};
pub use sd::{load_sd, SdOutput, SdPipeline, SdRequest};
pub use sds::{sds_gradient, SdsConditioning, SdsOptions, SdsOutput, SdsTimestep, SdsWeighting};
pub use splatforge_nn::hub::HubConfig;
pub use vae::{TilingOptions, Vae, VaeConfig};
