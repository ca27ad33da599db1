//! Where a fit runs: the names of devices (`cpu`, `cuda`, `cuda:N`; the
//! `--device` flags of every command), and the fitting backend for a
//! device ([`backend_for`]: [`crate::CpuBackend`], or in builds with the
//! `cuda` feature `crate::cuda::CudaBackend`).

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Device;
use splatforge_splat::Gaussians;

use crate::backend::{BackendSettings, CpuBackend, FitBackend};
use crate::config::FitConfig;
use crate::dataset::Views;
use crate::error::{FitError, Result};
use crate::init::{initial_gaussians, Init};
use crate::trainer::{backend_settings, fit_with, FitResult, Progress};

/// The device `spec` names: `cpu`, `cuda` (GPU 0) or `cuda:N`, in any case.
/// A GPU that cannot be opened (no GPU, or a build without the `cuda`
/// feature) is an error that says so.
pub fn parse_device(spec: &str) -> Result<Device> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let unknown = || {
        FitError::Device(format!(
            "unknown device `{spec}`: expected cpu, cuda or cuda:N"
        ))
    };
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(unknown)?,
        None => return Err(unknown()),
    };
    Device::new_cuda(ordinal).map_err(|e| {
        FitError::Device(format!(
            "`{spec}`: {e} (CUDA needs a build with `--features cuda` and an NVIDIA driver)"
        ))
    })
}

/// The name [`parse_device`] reads back: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The fitting backend for `device`, starting from `g`: the CPU reference,
/// or the CUDA backend on that GPU (which then shares the device, its
/// stream and memory pool with whatever else runs there).
pub fn backend_for(
    device: &Device,
    g: Gaussians,
    settings: BackendSettings,
) -> Result<Box<dyn FitBackend>> {
    match device {
        Device::Cpu => Ok(Box::new(CpuBackend::new(g, settings)?)),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => Ok(Box::new(crate::cuda::CudaBackend::on_device(
            g, settings, device,
        )?)),
        other => Err(FitError::Device(format!(
            "no fitting backend for {} in this build (CUDA needs `--features cuda`)",
            device_name(other)
        ))),
    }
}

/// [`crate::fit`] on `device`. `progress` is called after every step (its
/// `ControlFlow::Break` stops the fit with [`FitError::Cancelled`]); on a
/// GPU its loss and PSNR are refreshed every
/// `CudaBackend::DEFAULT_STATS_INTERVAL` steps (and at densifications), not
/// at every step.
pub fn fit_on(
    device: &Device,
    views: &Views,
    config: &FitConfig,
    init: Init,
    mut progress: impl FnMut(&Progress) -> ControlFlow<()>,
) -> Result<FitResult> {
    let start = Instant::now();
    config.validate()?;
    let mut backend = backend_for(
        device,
        initial_gaussians(&init, config),
        backend_settings(config),
    )?;
    let mut result = fit_with(backend.as_mut(), views, config, &mut progress)?;
    result.timings.total = start.elapsed();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert_eq!(device_name(&parse_device("CPU").unwrap()), "cpu");
        assert_eq!(device_name(&Device::Cpu), "cpu");
        for bad in ["gpu", "cuda:x", "cuda0", "cuda:"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error() {
        assert!(parse_device("cuda:0")
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
        assert!(parse_device("cuda")
            .unwrap_err()
            .to_string()
            .contains("--features cuda"));
    }
}
