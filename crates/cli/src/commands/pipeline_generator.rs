//! The text-to-3D pipeline as the service's [`Generator`]: models load once
//! per device, warm-up runs one tiny generation, errors map to the
//! service's outcomes (cancelled, out of memory → 500 and the worker goes
//! on, anything else → 500), and a CUDA device's memory comes from its
//! driver (none on the CPU).

use splatforge_pipeline::{Pipeline, PipelineError, Request};
use splatforge_server::{
    CancelToken, DeviceMemory, Generation, GenerationError, GenerationRequest, Generator,
};

pub struct PipelineGenerator {
    pipe: Pipeline,
    name: String,
}

impl PipelineGenerator {
    pub fn new(pipe: Pipeline) -> Self {
        let name = format!("pipeline:{}", pipe.profile());
        PipelineGenerator { pipe, name }
    }
}

/// The service's view of a pipeline error.
pub fn generation_error(e: PipelineError) -> GenerationError {
    match e {
        PipelineError::Cancelled => GenerationError::Cancelled,
        e @ PipelineError::OutOfMemory { .. } => GenerationError::OutOfMemory(e.to_string()),
        e => GenerationError::Failed(e.to_string()),
    }
}

impl Generator for PipelineGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let req = Request {
            prompt: request.prompt.clone(),
            seed: request.seed,
        };
        let out = self
            .pipe
            .generate(&req, &|| cancel.is_cancelled(), &mut ())
            .map_err(generation_error)?;
        Ok(Generation {
            gaussians: out.gaussians,
            stage_timings: out
                .timings
                .iter()
                .map(|(s, d)| (s.name().to_string(), *d))
                .collect(),
        })
    }

    fn warm_up(&self) -> Result<(), GenerationError> {
        self.pipe.warm_up().map(|_| ()).map_err(generation_error)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn concurrent(&self) -> bool {
        splatforge_nn::device::threads_may_share(self.pipe.device())
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.pipe.device_memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splatforge_pipeline::Stage;

    #[test]
    fn errors_map_to_the_service_outcomes() {
        assert_eq!(
            generation_error(PipelineError::Cancelled),
            GenerationError::Cancelled
        );
        let oom = PipelineError::stage(Stage::Fit, "CUDA_ERROR_OUT_OF_MEMORY");
        assert!(
            matches!(generation_error(oom), GenerationError::OutOfMemory(m) if m.contains("fit"))
        );
        let other = PipelineError::stage(Stage::Sds, "bad shape");
        assert_eq!(
            generation_error(other),
            GenerationError::Failed("sds stage failed: bad shape".into())
        );
    }
}
