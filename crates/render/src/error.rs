//! The error type of the rasterizer.

/// Why a render (forward or backward) was refused. Bad *values* inside the
/// Gaussians (NaN, zero quaternions, degenerate scales) are not errors: such
/// Gaussians are skipped. Errors are for inputs whose shape or camera makes
/// the request itself meaningless or unsafe.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// Parameter arrays disagree in length, or the SH degree is unsupported.
    #[error("invalid Gaussian parameters: {0}")]
    InvalidParams(String),
    /// A camera has non-finite or non-positive intrinsics, a non-finite pose,
    /// or bad clip planes.
    #[error("camera {index}: {reason}")]
    InvalidCamera { index: usize, reason: String },
    /// A camera's resolution is zero or beyond [`crate::MAX_IMAGE_SIDE`], or the
    /// call's cameras together exceed [`crate::MAX_PIXELS_PER_CALL`].
    #[error("resolution refused: {0}")]
    ResolutionTooLarge(String),
    /// Render options out of range (non-finite background, negative eps2d...).
    #[error("invalid render options: {0}")]
    InvalidOptions(String),
    /// The Gaussians overlap more tiles than `RenderOptions::max_intersections`.
    #[error("camera {camera}: {count} tile intersections exceed the limit of {limit}")]
    TooManyIntersections {
        camera: usize,
        count: u64,
        limit: usize,
    },
    /// Backward inputs do not match the forward pass they refer to.
    #[error("backward input mismatch: {0}")]
    GradientShape(String),
}
