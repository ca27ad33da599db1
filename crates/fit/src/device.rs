//! Where a fit runs: [`FitDevice`] (`cpu`, `cuda`, `cuda:N`) and [`fit_on`],
//! which picks [`crate::CpuBackend`] or, in builds with the `cuda` feature,
//! `crate::cuda::CudaBackend`.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use crate::config::FitConfig;
use crate::dataset::Views;
use crate::error::{FitError, Result};
use crate::init::Init;
use crate::trainer::{fit, FitResult, Progress};

/// The device a fit runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FitDevice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

impl FitDevice {
    /// Whether this build has the CUDA backend.
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");
}

impl FromStr for FitDevice {
    type Err = FitError;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(FitDevice::Cpu);
        }
        if s.eq_ignore_ascii_case("cuda") {
            return Ok(FitDevice::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            if let Ok(n) = n.parse() {
                return Ok(FitDevice::Cuda(n));
            }
        }
        Err(FitError::Device(format!(
            "unknown device '{s}': expected cpu, cuda or cuda:N"
        )))
    }
}

impl fmt::Display for FitDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitDevice::Cpu => write!(f, "cpu"),
            FitDevice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// [`fit`] on `device`. `progress` is called after every step; on a GPU its
/// loss and PSNR are refreshed every `CudaBackend::DEFAULT_STATS_INTERVAL`
/// steps (and at densifications), not at every step.
pub fn fit_on(
    device: FitDevice,
    views: &Views,
    config: &FitConfig,
    init: Init,
    mut progress: impl FnMut(&Progress),
) -> Result<FitResult> {
    match device {
        FitDevice::Cpu => fit(views, config, init, progress),
        FitDevice::Cuda(ordinal) => {
            #[cfg(feature = "cuda")]
            {
                let start = Instant::now();
                config.validate()?;
                let g = crate::init::initial_gaussians(&init, config);
                let mut backend = crate::cuda::CudaBackend::new(
                    g,
                    crate::trainer::backend_settings(config),
                    ordinal,
                )?;
                let mut result =
                    crate::trainer::fit_with(&mut backend, views, config, &mut progress)?;
                result.timings.total = start.elapsed();
                Ok(result)
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (ordinal, Instant::now(), &mut progress);
                Err(FitError::Device(
                    "this build has no CUDA backend (build with the `cuda` feature)".into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<FitDevice>().unwrap(), FitDevice::Cpu);
        assert_eq!("cuda".parse::<FitDevice>().unwrap(), FitDevice::Cuda(0));
        assert_eq!("cuda:3".parse::<FitDevice>().unwrap(), FitDevice::Cuda(3));
        assert!("gpu".parse::<FitDevice>().is_err());
        assert!("cuda:x".parse::<FitDevice>().is_err());
        assert_eq!(FitDevice::Cuda(1).to_string(), "cuda:1");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error() {
        let e = fit_on(
            FitDevice::Cuda(0),
            &Views::new(Vec::new()),
            &FitConfig::default(),
            Init::Random,
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("cuda"), "{e}");
    }
}
