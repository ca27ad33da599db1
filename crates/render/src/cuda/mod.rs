//! CUDA backend (cargo feature `cuda`): the same rasterizer as the CPU
//! reference, forward and backward, on candle tensors that stay on the GPU.
//!
//! # Pipeline
//! Kernels live in `crates/render/cuda/`, one file per stage, and are built
//! by `build.rs` with nvcc into a static library (sm_90 SASS + PTX, CUB for
//! the scan and the radix sort). They run on candle's CUDA stream:
//!
//! | stage | file | what |
//! |---|---|---|
//! | 1 | `projection_fwd.cu` | EWA projection, culling, SH colour, tiles per Gaussian, depth keys |
//! | 2 | `intersect.cu` | depth presort, prefix sum, (tile, Gaussian) pairs, CUB radix sort by tile, tile ranges |
//! | 3 | `rasterize_fwd.cu` | per-tile front-to-back compositing (lane-compacted) |
//! | 3′ | `rasterize_bwd.cu` | per-tile back-to-front gradients, warp reduce-scatter + atomics |
//! | 1′ | `projection_bwd.cu` | per-Gaussian chain rule to the parameters + densify stats |
//!
//! Semantics are the CPU path's (`crate::project`, `crate::tiles`,
//! `crate::rasterize`): same MAX_ALPHA 0.99, 1/255 cut-off, 1e-4 stop, radius
//! rule, Jacobian clamp, culling of bad values, tile order (depth, then
//! index). The kernels mirror the CPU expressions operation for operation,
//! are compiled without FMA contraction, and compute exp/log so that they
//! round like glibc's correctly rounded `expf`/`logf` (see
//! `cuda/common.cuh`): every alpha, and so every per-pixel decision (alpha
//! cut-off, clamp, early stop), is bitwise the CPU's; only the summation
//! order of the gradient atomics differs. `examples/gpu_raster.rs parity`
//! checks it (max relative error per tensor ≤ 1e-4; measured ≤ 5e-6, see
//! BENCHMARKS.md).
//!
//! # Use
//! ```ignore
//! use splatforge_render::cuda::{CudaRasterizer, GaussianTensors, ImageGradTensors};
//! let dev = candle_core::Device::new_cuda(0)?;
//! let gpu = CudaRasterizer::new(&dev)?;            // once; keeps scratch buffers
//! let g = GaussianTensors::from_params(&params, &dev)?; // or build the tensors yourself
//! let (img, state) = gpu.forward(&g, &cameras, &opts)?;  // img.rgb: [C,H,W,3]
//! let grads = ImageGradTensors { rgb: Some(dl_drgb), alpha: None, depth: None };
//! let gr = gpu.backward(&g, &cameras, &opts, &state, &grads)?; // gr.means: [N,3], gr.stats...
//! ```
//! All cameras of one call share one image size (the outputs are batched
//! tensors); CPU tensors, other dtypes or shapes are [`CudaRenderError::Tensor`].
//!
//! # Host synchronisation
//! [`CudaRasterizer::forward`] synchronises with the host exactly once: after
//! the projection and the prefix sum of tile counts it copies the number of
//! intersections per camera (8 bytes per camera) back to size the sort
//! buffers and enforce [`RenderOptions::max_intersections`] (gsplat does the
//! same). Everything else, and all of [`CudaRasterizer::backward`], is
//! enqueued asynchronously; the camera upload is a pageable host-to-device
//! copy, which the driver stages without waiting for the device.
//!
//! # Memory
//! Scratch buffers (tile counts, sort keys, CUB scratch, screen-space
//! gradients) live in the rasterizer and only grow. Per call, a forward
//! allocates three buffers (projected Gaussians, sorted lists, one frame
//! buffer holding the output images and the per-pixel backward state) and a
//! backward two (all float gradients and statistics, visible counts): the
//! output tensors are views of those. Allocation is stream-ordered
//! (cudarc's `cuMemAllocAsync`); [`CudaRasterizer::new`] raises the device's
//! default memory pool release threshold so that freed blocks are reused
//! instead of being returned to the driver at every synchronisation.
//!
//! # Threads
//! Use a [`CudaRasterizer`] from one thread at a time (candle's CUDA device
//! uses the per-thread default stream; the rasterizer's scratch buffers are
//! ordered on the stream of the thread that calls it).

mod ffi;
mod rasterizer;
mod tensors;

pub use rasterizer::{CudaRasterizer, DEFAULT_PIXELS_PER_THREAD};
pub use tensors::{
    CudaForwardState, DensifyStatTensors, GaussianTensors, GradientTensors, ImageGradTensors,
    RenderedTensors,
};

use std::ffi::{c_int, c_void};
use std::sync::Mutex;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{CudaDevice, DType, Device, Tensor};
use splatforge_cuda::{
    alloc, driver_error, slice_address, slice_address_mut, tensor_address, wrap_slice, CudaError,
    Scratch,
};
use splatforge_splat::sh::MAX_SH_DEGREE;
use splatforge_splat::sh_coeffs_per_channel;

use crate::camera::Camera;
use crate::error::RenderError;
use crate::project::CameraParams;
use crate::tiles::TileGrid;
use crate::types::check_cameras;
use crate::{
    DensifyStats, GaussianParams, Gradients, ImageGradients, RenderMode, RenderOptions,
    RenderedImage,
};

/// Why a CUDA render failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaRenderError {
    /// The same refusals as the CPU path (options, cameras, intersections...).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A tensor has the wrong device, dtype or shape.
    #[error("invalid tensor: {0}")]
    Tensor(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A CUDA call or kernel launch failed.
    #[error(transparent)]
    Cuda(CudaError),
}

impl From<CudaError> for CudaRenderError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Tensor(m) => CudaRenderError::Tensor(m),
            e => CudaRenderError::Cuda(e),
        }
    }
}

type Result<T> = std::result::Result<T, CudaRenderError>;

fn check(stage: &str, code: c_int) -> Result<()> {
    Ok(splatforge_cuda::check(stage, code)?)
}

fn driver<T, E: std::fmt::Debug>(stage: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| driver_error(stage, e).into())
}

fn bad(m: String) -> CudaRenderError {
    CudaRenderError::Tensor(m)
}
