//! Errors of the TRELLIS runtime.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running TRELLIS.
#[derive(Debug, thiserror::Error)]
pub enum TrellisError {
    /// A file exists but cannot be used (bad JSON, unreadable checkpoint, wrong tensors).
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    /// An unsupported or inconsistent configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Invalid arguments to a call (shapes, sizes, counts).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The sparse structure stage found no occupied voxel: nothing to make Gaussians of.
    #[error("the sparse structure is empty (no occupied voxel): no object to make Gaussians of")]
    EmptyStructure,
    /// A progress callback asked a sampling loop to stop.
    #[error("cancelled")]
    Cancelled,
    /// The background-removal network failed (loading or running).
    #[error("matte: {0}")]
    Matte(#[from] splatforge_matte::MatteError),
    /// An error from candle (tensor ops, weight shapes).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrellisError>;
