//! Errors of the diffusion runtime.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a diffusion model.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A file the model needs is not there. `hint` says how to get it.
    #[error("missing file {}: {hint}", file.display())]
    MissingFile { file: PathBuf, hint: String },
    /// A file exists but cannot be used (bad JSON, unreadable checkpoint, wrong tensors).
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    /// An unsupported or inconsistent configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Hugging Face hub access failed (download, cache layout).
    #[error("hub: {0}")]
    Hub(String),
    /// Invalid arguments to a call (shapes, sizes, counts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from candle (tensor ops, weight shapes).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// A progress callback asked the denoising loop to stop.
    #[error("cancelled")]
    Cancelled,
    /// An I/O error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a denoising loop's progress callback returns: `()` (always go on),
/// or a [`ControlFlow`](std::ops::ControlFlow) whose `Break` stops the loop
/// after the current step with [`DiffusionError::Cancelled`].
pub trait StepControl {
    fn should_stop(&self) -> bool;
}

impl StepControl for () {
    fn should_stop(&self) -> bool {
        false
    }
}

impl StepControl for std::ops::ControlFlow<()> {
    fn should_stop(&self) -> bool {
        self.is_break()
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;

impl DiffusionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DiffusionError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DiffusionError::BadFile {
            path: path.into(),
            message: message.into(),
        }
    }
}
