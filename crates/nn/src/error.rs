//! Errors of weight files, model folders and the hub.

use std::path::PathBuf;

/// Everything that can go wrong while finding or reading a model's files.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A file the model needs is not there. `hint` says how to get it.
    #[error("missing file {}: {hint}", file.display())]
    MissingFile { file: PathBuf, hint: String },
    /// A file exists but cannot be used (bad JSON, unreadable checkpoint, wrong tensors).
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    /// Invalid arguments to a call (dtypes, names, sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle (tensor ops, weight shapes).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// An I/O error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io {
            path: path.into(),
            source,
        }
    }

    /// `path` exists but cannot be used, because of `message`.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        NnError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}
