//! TRELLIS (microsoft/TRELLIS, `TRELLIS-image-large`) image → 3D Gaussians on candle.
//!
//! Data flows one way: image → DINOv2 tokens → sparse structure (stage 1: flow over a
//! 16³×8 latent, decoded to 64³ occupancy) → structured latent (stage 2: flow over the
//! occupied voxels) → Gaussian decoder → [`splatforge_splat::Gaussians`].
//!
//! | module | what |
//! |---|---|
//! | [`blocks`] | the shared transformer parts: attention with QK RMSNorm, MLP, adaLN-modulated blocks, timestep and position embedders |
//! | [`config`] | `pipeline.json` (with the TRELLIS-image-large preset), the `ckpts/<name>.json` + `.safetensors` checkpoints, local or Hugging Face sources |
//! | [`dinov2`] | DINOv2 ViT-L/14 with registers (torch-hub and Hugging Face weights), TRELLIS' image tokens |
//! | [`foreground`] | the `matte` stage: the image's alpha, else BiRefNet's or the plain-background threshold's |
//! | [`preprocess`] | image decoding with limits, TRELLIS' crop / 518² Lanczos / premultiply (Pillow-exact), DINOv2 input |
//! | [`sampler`] | flow-Euler sampling with classifier-free guidance inside an interval, rescaled time |
//! | [`ss_flow`] | stage 1: `SparseStructureFlowModel` |
//! | [`ss_decoder`] | stage 1: `SparseStructureDecoder` (dense 3D convolutions) and the occupied voxels |
//! | [`noise`] | both stages' initial noise from a file instead of the seed (parity runs against the official code), a run's latents written to one |
//! | [`structure`] | a sparse structure from a file instead of stage 1 (the official `run_detail_variation`) |
//! | [`pipeline`] | the whole `TrellisImageTo3DPipeline` for Gaussians: image → Gaussians with per-stage progress and timings; random-weight TRELLIS folders |
//! | [`stage1`] | image → occupied voxels (`preprocess_image`, `get_cond`, `sample_sparse_structure`), random-weight stage-1 folders |
//! | [`slat_flow`] | stage 2: the structured-latent flow model over sparse voxels (io res blocks with sparse convolutions and down/upsampling, modulated cross-attention blocks), undoing the latent's normalisation |
//! | [`sparse`] | sparse voxel tensors (batch-indexed coordinates + features) and the ops on them |
//! | [`gaussians`] | the Gaussian decoder's output → [`splatforge_splat::Gaussians`], as TRELLIS' `save_ply` writes them |
//! | [`gs_decoder`] | `SLatGaussianDecoder`: the Swin sparse transformer from the structured latent to Gaussian channels |
//! | [`error`] | errors of this crate |
//!
//! Stage 1 (image → occupied voxels) from the published model:
//! ```no_run
//! use splatforge_trellis::{config::TrellisSource, dinov2, preprocess, stage1::Stage1};
//! let hub = splatforge_nn::hub::HubConfig::from_env();
//! let roles = ["sparse_structure_flow_model", "sparse_structure_decoder"];
//! let dir = TrellisSource::parse("hf:microsoft/TRELLIS-image-large").resolve(&hub, &roles)?;
//! let dinov2 = dinov2::resolve_weights(None, &hub)?;
//! let stage1 = Stage1::load(&dir, &dinov2, candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! let image = preprocess::decode_image(&std::fs::read("ghost_rgba.png")?)?;
//! let voxels = stage1.run(&image, 42, |_, _| std::ops::ControlFlow::Continue(()))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The whole pipeline (image → Gaussians) from a folder `splatforge models make-random
//! --family trellis` wrote, DINOv2 inside it:
//! ```no_run
//! use splatforge_trellis::pipeline::{dinov2_in_folder, TrellisImageTo3d, TrellisRequest};
//! let dir = std::path::Path::new("/tmp/trellis-tiny");
//! let dinov2 = dinov2_in_folder(dir).expect("DINOv2 in the folder");
//! let device = candle_core::Device::Cpu;
//! let pipe = TrellisImageTo3d::load(dir, &dinov2, candle_core::DType::F32, &device)?;
//! let image = splatforge_trellis::preprocess::decode_image(&std::fs::read("ghost_rgba.png")?)?;
//! let request = TrellisRequest { seed: 42, ..Default::default() };
//! let matte = splatforge_trellis::foreground::ForegroundMatte::Threshold;
//! let out = pipe.run(&image, &request, &matte, |_| std::ops::ControlFlow::Continue(()))?;
//! for (stage, t) in &out.timings {
//!     println!("{stage:16} {:8.1} ms", t.as_secs_f64() * 1e3);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod blocks;
pub mod config;
pub mod dinov2;
pub mod error;
pub mod foreground;
pub mod gaussians;
pub mod gs_decoder;
pub mod noise;
pub mod pipeline;
pub mod preprocess;
pub mod sampler;
pub mod slat_flow;
pub mod sparse;
pub mod ss_decoder;
pub mod ss_flow;
pub mod stage1;
pub mod structure;

pub use error::{Result, TrellisError};
