//! Errors of the pipeline, and its stages.

use std::fmt;

use crate::config::ConfigError;

/// The pipeline's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// MVDream: prompt → views (denoising and VAE decoding).
    Diffusion,
    /// Foreground alpha of the views.
    Alpha,
    /// Initial Gaussians (carved or random).
    Init,
    /// Fitting to the views.
    Fit,
    /// SDS refinement.
    Sds,
    /// Top-up to the minimum count and normalisation.
    Normalize,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Diffusion,
        Stage::Alpha,
        Stage::Init,
        Stage::Fit,
        Stage::Sds,
        Stage::Normalize,
    ];

    /// A short identifier (`[a-z]`), as in timings and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Diffusion => "diffusion",
            Stage::Alpha => "alpha",
            Stage::Init => "init",
            Stage::Fit => "fit",
            Stage::Sds => "sds",
            Stage::Normalize => "normalize",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the pipeline did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The caller's cancellation fired.
    #[error("cancelled")]
    Cancelled,
    /// The device ran out of memory (CUDA allocation failure) in a stage.
    #[error("out of memory in the {stage} stage: {message}")]
    OutOfMemory { stage: Stage, message: String },
    /// A bad configuration (the message names the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Models could not be loaded, or the device opened.
    #[error("{0}")]
    Load(String),
    /// A bad request (e.g. an empty prompt).
    #[error("{0}")]
    Input(String),
    /// A stage failed.
    #[error("{stage} stage failed: {message}")]
    Stage { stage: Stage, message: String },
}

/// Whether an error message is a device out-of-memory error (cudarc's
/// `CUDA_ERROR_OUT_OF_MEMORY`, "out of memory" from the CUDA runtime,
/// cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out_of_memory") || m.contains("out of memory") || m.contains("alloc_failed")
}

impl PipelineError {
    /// A stage's failure, classified: out-of-memory errors become
    /// [`PipelineError::OutOfMemory`].
    pub fn stage(stage: Stage, error: impl fmt::Display) -> PipelineError {
        let message = error.to_string();
        if is_out_of_memory(&message) {
            PipelineError::OutOfMemory { stage, message }
        } else {
            PipelineError::Stage { stage, message }
        }
    }

    /// A loading failure, classified like [`Self::stage`] (as the diffusion stage).
    pub fn load(error: impl fmt::Display) -> PipelineError {
        let message = error.to_string();
        if is_out_of_memory(&message) {
            PipelineError::OutOfMemory {
                stage: Stage::Diffusion,
                message: format!("loading the models: {message}"),
            }
        } else {
            PipelineError::Load(format!("loading the models: {message}"))
        }
    }

    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, PipelineError::OutOfMemory { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_oom_is_classified() {
        let cudarc = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        let e = PipelineError::stage(Stage::Fit, cudarc);
        assert!(e.is_out_of_memory(), "{e}");
        assert!(e.to_string().contains("fit"), "{e}");
        let blas = PipelineError::stage(Stage::Diffusion, "cublas: CUBLAS_STATUS_ALLOC_FAILED");
        assert!(blas.is_out_of_memory());
        let other = PipelineError::stage(Stage::Sds, "shape mismatch in matmul");
        assert!(!other.is_out_of_memory());
        assert_eq!(
            other.to_string(),
            "sds stage failed: shape mismatch in matmul"
        );
        assert!(PipelineError::load("CUDA_ERROR_OUT_OF_MEMORY").is_out_of_memory());
        assert_eq!(
            Stage::ALL.map(|s| s.name()),
            ["diffusion", "alpha", "init", "fit", "sds", "normalize"]
        );
    }
}
