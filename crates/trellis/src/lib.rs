//! TRELLIS (microsoft/TRELLIS, `TRELLIS-image-large`) image → 3D Gaussians on candle.
//!
//! Data flows one way: image → DINOv2 tokens → sparse structure (stage 1: flow over a
//! 16³×8 latent, decoded to 64³ occupancy) → structured latent (stage 2: flow over the
//! occupied voxels) → Gaussian decoder → [`splatforge_splat::Gaussians`].
//!
//! | module | what |
//! |---|---|
//! | [`blocks`] | the shared transformer parts: attention with QK RMSNorm, MLP, adaLN-modulated blocks, timestep and position embedders |
//! | [`slat_flow`] | stage 2: the structured-latent flow model over sparse voxels (io res blocks with sparse convolutions and down/upsampling, modulated cross-attention blocks), the latent's normalisation |
//! | [`sparse`] | sparse voxel tensors (batch-indexed coordinates + features) and the ops on them |
//! | [`gaussians`] | the Gaussian decoder's output → [`splatforge_splat::Gaussians`], as TRELLIS' `save_ply` writes them |
//! | [`gs_decoder`] | `SLatGaussianDecoder`: the Swin sparse transformer from the structured latent to Gaussian channels |
//! | [`error`] | errors of this crate |

pub mod blocks;
pub mod error;
pub mod gaussians;
pub mod gs_decoder;
pub mod slat_flow;
pub mod sparse;

pub use error::{Result, TrellisError};
