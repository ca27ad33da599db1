//! Errors of the diffusion models.

use splatforge_nn::NnError;

/// Everything that can go wrong while loading or running a diffusion model.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A model file is missing or unusable (see [`NnError`]).
    #[error(transparent)]
    Files(#[from] NnError),
    /// An unsupported or inconsistent configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid arguments to a call (shapes, sizes, counts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle (tensor ops, weight shapes).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// A denoising loop's progress callback returned `ControlFlow::Break`
    /// (the loop stops after that step).
    #[error("cancelled")]
    Cancelled,
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;

impl DiffusionError {
    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        NnError::io(path, source).into()
    }

    pub(crate) fn bad_file(
        path: impl Into<std::path::PathBuf>,
        message: impl Into<String>,
    ) -> Self {
        NnError::bad_file(path, message).into()
    }
}
