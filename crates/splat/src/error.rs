//! One error type for every reader, writer and check of this crate.

use std::fmt;

/// What went wrong while reading, writing or checking a splat.
#[derive(Debug, thiserror::Error)]
pub enum SplatError {
    /// The bytes are not a valid file of the expected format.
    #[error("{format}: {message}")]
    Malformed {
        format: &'static str,
        message: String,
    },
    /// The file ended before the data its header announces.
    #[error("{format}: truncated: {message}")]
    Truncated {
        format: &'static str,
        message: String,
    },
    /// In-memory data that cannot be written or used as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SplatError {
    pub fn malformed(format: &'static str, message: impl fmt::Display) -> Self {
        SplatError::Malformed {
            format,
            message: message.to_string(),
        }
    }
    pub fn truncated(format: &'static str, message: impl fmt::Display) -> Self {
        SplatError::Truncated {
            format,
            message: message.to_string(),
        }
    }
    pub fn invalid(message: impl fmt::Display) -> Self {
        SplatError::Invalid(message.to_string())
    }
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        SplatError::Io {
            context: context.to_string(),
            source,
        }
    }
}
