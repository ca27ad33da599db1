//! Errors of the fitting engine.

use splatforge_render::RenderError;
use splatforge_splat::SplatError;

/// Everything that can go wrong while loading data or fitting.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Reading a file failed; `path` names it.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A dataset (transforms.json, an image) is malformed or unsupported.
    #[error("{0}")]
    Dataset(String),
    /// A configuration is malformed (unknown key, bad value).
    #[error("{0}")]
    Config(String),
    /// The views or the initial Gaussians cannot be fitted (e.g. no views).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The GPU backend failed, or was asked for in a build without it.
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Splat(#[from] SplatError),
    /// The progress callback stopped the fit (`ControlFlow::Break`).
    #[error("cancelled")]
    Cancelled,
    /// The guide of a [`crate::FitBackend::guided_step`] failed (its error,
    /// boxed: the caller can downcast it back to its own type).
    #[error("guidance: {0}")]
    Guide(crate::backend::GuideError),
}

impl From<candle_core::Error> for FitError {
    fn from(e: candle_core::Error) -> Self {
        FitError::Device(format!("candle: {e}"))
    }
}

impl FitError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        FitError::Io {
            path: path.to_string(),
            source,
        }
    }
}

pub type Result<T, E = FitError> = std::result::Result<T, E>;
