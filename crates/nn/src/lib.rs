//! The neural-network runtime every model family of splatforge builds on
//! (candle): the hot operations with their fused CUDA kernels, devices and
//! precision, and everything about a model's files.
//!
//! | module | what |
//! |---|---|
//! | [`ops`] | attention, linear with epilogue, GroupNorm (+ SiLU), RMSNorm + RoPE, upsampling, convolution: one entry point each, a fused CUDA kernel (`cuda/*.cu`, cuDNN for the convolution) where one applies, candle's composite path otherwise |
//! | [`device`] | the best device, one-time CUDA device settings (cuBLAS workspace, memory pool) |
//! | [`precision`] | [`Precision`]: fp32 / fp16 / bf16, parsed from profiles and flags |
//! | [`weights`] | weight files (safetensors, PyTorch zip checkpoints), name-mapping `VarBuilder`s, seeded random weights and streaming them into a file |
//! | [`hub`] | model sources: a local folder, the Hugging Face cache and hub (`hf:ORG/NAME[@REV][:FILE]`) |
//! | [`loading`] | a model source's JSON configs and per-component weight files |
//! | [`rng`] | seeded normal samples (the workspace's SplitMix64), random tensors |
//!
//! Model families (`splatforge-diffusion`, `splatforge-trellis`) depend on
//! this crate; it depends on none of them.

pub mod device;
pub mod error;
pub mod hub;
pub mod loading;
pub mod ops;
pub mod precision;
pub mod rng;
pub mod weights;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;

pub use device::{best_device, configure_device};
pub use error::{NnError, Result};
pub use precision::Precision;
