//! Devices: which one to run on, the one-time settings of a CUDA device,
//! and its memory.

use candle_core::{Device, Result};
pub use splatforge_cuda::DeviceMemory;

/// The best available device: CUDA GPU `ordinal` when built with the `cuda`
/// feature and a GPU is present, else the CPU.
pub fn best_device(ordinal: usize) -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(ordinal) {
        return d;
    }
    let _ = ordinal;
    Device::Cpu
}

/// The memory of `device` from its driver (`cuMemGetInfo`); `None` on the
/// CPU, in a build without CUDA, or when the driver does not answer.
pub fn device_memory(device: &Device) -> Option<DeviceMemory> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return splatforge_cuda::device_memory(d);
    }
    let _ = device;
    None
}

/// Whether several threads may run models on `device` at the same time. The CPU:
/// yes. A CUDA device: no. On an H100, 2 and 4 server workers sharing one TRELLIS
/// model turned every answer into an empty structure or an empty matte, while 1
/// worker was right. The likely cause (not isolated on the GPU): candle gives each
/// thread its own stream (the per-thread default stream) but every thread the
/// device's one cuBLAS handle, with the one workspace [`configure_device`] sets, so
/// two threads' matrix products can race on it.
pub fn threads_may_share(device: &Device) -> bool {
    !device.is_cuda()
}

/// One-time settings of a CUDA device for the models (a cuBLAS workspace,
/// freed memory kept in the device's pool); nothing on the CPU. Called by the
/// model loaders.
pub fn configure_device(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        configure_cuda(d)?;
    }
    let _ = device;
    Ok(())
}

#[cfg(feature = "cuda")]
/// Bytes of the cuBLAS workspace [`configure_device`] gives each device.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Once per device: gives candle's cuBLAS handle a 32 MiB workspace (kept for
/// the life of the process; without one, cuBLAS picks among fewer GEMM
/// kernels on Hopper, and torch gives it the same amount), and keeps freed
/// memory in the device's pool (cuDNN's workspaces and every candle tensor
/// are stream-ordered allocations; the rasterizer does the same).
#[cfg(feature = "cuda")]
fn configure_cuda(dev: &candle_core::CudaDevice) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static WORKSPACES: Mutex<
        Option<
            HashMap<
                candle_core::cuda_backend::DeviceId,
                candle_core::cuda_backend::cudarc::driver::CudaSlice<u8>,
            >,
        >,
    > = Mutex::new(None);
    let mut guard = WORKSPACES.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.contains_key(&dev.id()) {
        return Ok(());
    }
    splatforge_cuda::keep_pool_memory(dev).map_err(candle_core::Error::wrap)?;
    let mut ws = dev.alloc_zeros::<u8>(CUBLAS_WORKSPACE_BYTES)?;
    splatforge_cuda::set_cublas_workspace(dev, &mut ws).map_err(candle_core::Error::wrap)?;
    map.insert(dev.id(), ws);
    Ok(())
}
