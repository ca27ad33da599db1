//! Errors of the matte runtime.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running BiRefNet.
#[derive(Debug, thiserror::Error)]
pub enum MatteError {
    /// A file exists but cannot be used (unreadable checkpoint, missing or misshapen tensors).
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    /// The weights could not be found or fetched (local path, Hugging Face cache or hub).
    #[error("weights: {0}")]
    Source(#[from] splatforge_nn::NnError),
    /// An unsupported or inconsistent configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Invalid arguments to a call (empty images, shapes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle (tensor ops).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, MatteError>;

pub(crate) fn bad_file(path: &std::path::Path, message: impl std::fmt::Display) -> MatteError {
    MatteError::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}
