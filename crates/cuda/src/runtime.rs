//! The CUDA runtime's error messages and one-time device settings
//! (`cuda/runtime.cu`, cuBLAS).

use std::ffi::{c_char, c_int, c_void, CStr};

use candle_core::cuda_backend::cudarc::cublas::sys::{cublasSetWorkspace_v2, cublasStatus_t};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::CudaDevice;

extern "C" {
    fn sfc_error_string(err: c_int) -> *const c_char;
    fn sfc_keep_pool_memory(device: c_int) -> c_int;
}

/// Why a CUDA call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// A CUDA call or kernel launch failed.
    #[error("CUDA error {code} in {stage}: {message}")]
    Call {
        /// What was being done (a kernel, an allocation, a copy).
        stage: String,
        /// The `cudaError_t`, or −1 for an error of cudarc's driver API.
        code: i32,
        message: String,
    },
    /// A tensor handed to a kernel is not on the GPU, not contiguous or of
    /// another dtype.
    #[error("invalid tensor: {0}")]
    Tensor(String),
}

/// `Ok` for `cudaSuccess` (0), else the runtime's message for `code`.
pub fn check(stage: &str, code: c_int) -> Result<(), CudaError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString takes any code and returns a pointer to a
    // static NUL-terminated string ("unrecognized error code" for unknown ones).
    let message = unsafe { CStr::from_ptr(sfc_error_string(code)) }
        .to_string_lossy()
        .into_owned();
    Err(CudaError::Call {
        stage: stage.to_string(),
        code,
        message,
    })
}

/// An error of cudarc's driver API (which has no runtime error code).
pub fn driver_error(stage: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Call {
        stage: stage.to_string(),
        code: -1,
        message: format!("{e:?}"),
    }
}

/// The memory of `dev` from its driver (`cuMemGetInfo`); `None` when the
/// driver does not answer.
pub fn device_memory(dev: &CudaDevice) -> Option<crate::DeviceMemory> {
    let (free, total) = dev.cuda_stream().context().mem_get_info().ok()?;
    Some(crate::DeviceMemory {
        used_bytes: total.saturating_sub(free) as u64,
        total_bytes: total as u64,
    })
}

/// Raises the release threshold of the device's default memory pool to the
/// maximum, so that freed blocks are kept for the next allocation instead of
/// being returned to the driver at every host synchronisation (candle's
/// tensors, the rasterizer's buffers and cuDNN's workspaces are all
/// stream-ordered allocations from this pool). Process-wide for the device;
/// binds its context to the calling thread.
pub fn keep_pool_memory(dev: &CudaDevice) -> Result<(), CudaError> {
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| driver_error("bind context", e))?;
    // SAFETY: a runtime call on the ordinal of a live context; it touches no
    // memory of ours.
    check("memory pool", unsafe {
        sfc_keep_pool_memory(stream.context().ordinal() as c_int)
    })
}

/// Gives candle's cuBLAS handle of `dev` the buffer `workspace`, which the
/// caller must keep alive (and not use otherwise) for as long as the handle
/// runs products: cuBLAS keeps the address.
pub fn set_cublas_workspace(
    dev: &CudaDevice,
    workspace: &mut CudaSlice<u8>,
) -> Result<(), CudaError> {
    let stream = dev.cuda_stream();
    let bytes = workspace.len();
    let address = crate::memory::slice_address_mut(workspace, &stream);
    // SAFETY: the handle is candle's live cuBLAS handle of this device; the
    // address and size describe a device buffer the caller keeps for the
    // handle's lifetime (see above).
    let status = unsafe {
        cublasSetWorkspace_v2(*dev.cublas_handle().handle(), address as *mut c_void, bytes)
    };
    if status == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Call {
            stage: "cuBLAS workspace".into(),
            code: -1,
            message: format!("{status:?}"),
        })
    }
}
