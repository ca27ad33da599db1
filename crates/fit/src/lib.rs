//! Fits 3D Gaussian splats to posed images: the engine behind
//! `splatforge fit`, the fast generation path (fitting the views a
//! multi-view diffusion model generates) and SDS refinement (its guided
//! steps, [`FitBackend::guided_step`]).
//!
//! It follows DreamGaussian / 3DGS: random-ball or file initialisation
//! ([`init`]), per-group Adam with eps 1e-15 ([`adam`]), the exponential
//! position learning rate, SH warm-up and render-size schedules
//! ([`schedule`]), clone / split / prune / opacity reset ([`densify`]),
//! `(1 − λ)·L1 + λ·(1 − SSIM)` plus an alpha term ([`loss`]), with
//! DreamGaussian's config keys ([`config`]). Data comes as in-memory
//! [`Views`] or from a `transforms.json` ([`dataset`]).
//!
//! ```no_run
//! use splatforge_fit::{fit, load_transforms, FitConfig, Init, LoadOptions};
//! let data = load_transforms("data/shapes/transforms_train.json".as_ref(), &LoadOptions::default())?;
//! let config = FitConfig::default();
//! let result = fit(&data.train, &config, Init::Random, |p| {
//!     if p.iteration % 100 == 0 {
//!         eprintln!("{} loss {:.4} psnr {:.2}", p.iteration, p.loss, p.psnr);
//!     }
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! let metrics = splatforge_fit::evaluate(&result.gaussians, &data.test, [1.0; 3], Default::default())?;
//! println!("held-out PSNR {:.2} dB", metrics.psnr);
//! # Ok::<(), splatforge_fit::FitError>(())
//! ```
//!
//! The per-step maths sits behind [`FitBackend`] ([`backend`]); the CPU
//! reference is [`CpuBackend`]; with the `cuda` feature, `cuda::CudaBackend`
//! implements the same trait on the GPU ([`backend_for`] picks one for a
//! device).

pub mod adam;
pub mod backend;
pub mod config;
pub mod dataset;
pub mod densify;
pub mod device;
pub mod error;
pub mod eval;
pub mod init;
pub mod loss;
pub mod rng;
pub mod schedule;
pub mod trainer;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use backend::{CpuBackend, FitBackend, Guide, GuideError, GuidedParams, StageTimings};
pub use config::FitConfig;
pub use dataset::{load_transforms, Dataset, LoadOptions, View, Views};
pub use device::{backend_for, device_name, fit_on, parse_device};
pub use error::{FitError, Result};
pub use eval::{evaluate, Metrics};
pub use init::{initial_gaussians, Init};
pub use trainer::{background, fit, fit_with, render_mode, FitResult, Progress, Timings};
