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

use std::ffi::{c_int, c_void, CStr};
use std::sync::Mutex;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use splatforge_splat::sh::MAX_SH_DEGREE;
use splatforge_splat::sh_coeffs_per_channel;

use crate::camera::Camera;
use crate::error::RenderError;
use crate::project::CameraParams;
use crate::tiles::TileGrid;
use crate::{
    check_cameras, DensifyStats, GaussianParams, Gradients, ImageGradients, RenderMode,
    RenderOptions, RenderedImage,
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
    #[error("CUDA error {code} in {stage}: {message}")]
    Cuda {
        stage: &'static str,
        code: i32,
        message: String,
    },
}

type Result<T> = std::result::Result<T, CudaRenderError>;

fn check(stage: &'static str, code: c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString returns a static C string.
    let message = unsafe { CStr::from_ptr(ffi::sf_error_string(code)) }
        .to_string_lossy()
        .into_owned();
    Err(CudaRenderError::Cuda {
        stage,
        code,
        message,
    })
}

fn driver<T, E: std::fmt::Debug>(stage: &'static str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| CudaRenderError::Cuda {
        stage,
        code: -1,
        message: format!("{e:?}"),
    })
}

fn bad(m: String) -> CudaRenderError {
    CudaRenderError::Tensor(m)
}

/// Gaussian parameters as CUDA tensors, f32, pre-activation, laid out as
/// [`GaussianParams`]: `means [N,3]`, `quats [N,4]` (wxyz), `log_scales
/// [N,3]`, `opacity_logits [N]`, `sh [N,K,3]` with `K = (sh_degree+1)²`.
/// Non-contiguous tensors are accepted (copied to contiguous first).
#[derive(Debug, Clone)]
pub struct GaussianTensors {
    pub means: Tensor,
    pub quats: Tensor,
    pub log_scales: Tensor,
    pub opacity_logits: Tensor,
    pub sh: Tensor,
    pub sh_degree: u8,
}

impl GaussianTensors {
    /// Uploads host parameters to `device`.
    pub fn from_params(p: &GaussianParams<'_, f32>, device: &Device) -> Result<Self> {
        p.validate()?;
        let n = p.len();
        let k = sh_coeffs_per_channel(p.sh_degree);
        let flat3 = |v: &[[f32; 3]]| v.iter().flatten().copied().collect::<Vec<f32>>();
        Ok(GaussianTensors {
            means: Tensor::from_vec(flat3(p.means), (n, 3), device)?,
            quats: Tensor::from_vec(
                p.quats.iter().flatten().copied().collect::<Vec<f32>>(),
                (n, 4),
                device,
            )?,
            log_scales: Tensor::from_vec(flat3(p.log_scales), (n, 3), device)?,
            opacity_logits: Tensor::from_vec(p.opacity_logits.to_vec(), n, device)?,
            sh: Tensor::from_vec(p.sh.to_vec(), (n, k, 3), device)?,
            sh_degree: p.sh_degree,
        })
    }

    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.means.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn validate(&self, dev: &CudaDevice) -> Result<usize> {
        if self.sh_degree > MAX_SH_DEGREE {
            return Err(RenderError::InvalidParams(format!(
                "SH degree {} is not supported (0 to 3)",
                self.sh_degree
            ))
            .into());
        }
        let n = self.len();
        let k = sh_coeffs_per_channel(self.sh_degree);
        for (name, t, shape) in [
            ("means", &self.means, vec![n, 3]),
            ("quats", &self.quats, vec![n, 4]),
            ("log_scales", &self.log_scales, vec![n, 3]),
            ("opacity_logits", &self.opacity_logits, vec![n]),
            ("sh", &self.sh, vec![n, k, 3]),
        ] {
            check_tensor(name, t, &shape, DType::F32, dev)?;
        }
        Ok(n)
    }
}

fn check_tensor(
    name: &str,
    t: &Tensor,
    shape: &[usize],
    dtype: DType,
    dev: &CudaDevice,
) -> Result<()> {
    match t.device() {
        Device::Cuda(d) if d.same_device(dev) => {}
        Device::Cuda(_) => return Err(bad(format!("{name} is on another CUDA device"))),
        other => {
            return Err(bad(format!(
                "{name} must be a CUDA tensor, it is on {:?}",
                other.location()
            )))
        }
    }
    if t.dtype() != dtype {
        return Err(bad(format!(
            "{name} must be {dtype:?}, got {:?}",
            t.dtype()
        )));
    }
    if t.dims() != shape {
        return Err(bad(format!(
            "{name} has shape {:?}, expected {shape:?}",
            t.dims()
        )));
    }
    Ok(())
}

/// The images of one forward call, views of one device buffer:
/// `rgb [C,H,W,3]`, `alpha [C,H,W]`, `depth [C,H,W]` (see the crate docs for
/// their meaning).
#[derive(Debug, Clone)]
pub struct RenderedTensors {
    pub rgb: Tensor,
    pub alpha: Tensor,
    pub depth: Tensor,
}

impl RenderedTensors {
    /// Copies to the host, in the CPU path's layout.
    pub fn to_images(&self) -> Result<Vec<RenderedImage<f32>>> {
        let (c, h, w, _) = self.rgb.dims4()?;
        let rgb = self.rgb.flatten_all()?.to_vec1::<f32>()?;
        let alpha = self.alpha.flatten_all()?.to_vec1::<f32>()?;
        let depth = self.depth.flatten_all()?.to_vec1::<f32>()?;
        let p = h * w;
        Ok((0..c)
            .map(|i| RenderedImage {
                width: w as u32,
                height: h as u32,
                rgb: rgb[3 * p * i..3 * p * (i + 1)].to_vec(),
                alpha: alpha[p * i..p * (i + 1)].to_vec(),
                depth: depth[p * i..p * (i + 1)].to_vec(),
            })
            .collect())
    }
}

/// Per-pixel loss gradients for [`CudaRasterizer::backward`], shaped like
/// [`RenderedTensors`]; `None` means zero.
#[derive(Debug, Clone, Default)]
pub struct ImageGradTensors {
    pub rgb: Option<Tensor>,
    pub alpha: Option<Tensor>,
    pub depth: Option<Tensor>,
}

impl ImageGradTensors {
    /// Uploads the CPU path's per-camera gradients (all cameras must agree
    /// on which outputs have a gradient).
    pub fn from_host(
        grads: &[ImageGradients<'_, f32>],
        cameras: &[Camera],
        device: &Device,
    ) -> Result<Self> {
        let (w, h) = common_size(cameras)?;
        let c = cameras.len();
        let stack = |which: usize, ch: usize| -> Result<Option<Tensor>> {
            let get = |g: &ImageGradients<'_, f32>| -> Option<Vec<f32>> {
                [g.rgb, g.alpha, g.depth][which].map(|s| s.to_vec())
            };
            if grads.iter().all(|g| get(g).is_none()) {
                return Ok(None);
            }
            let mut v = Vec::with_capacity(c * h * w * ch);
            for g in grads {
                match get(g) {
                    Some(s) if s.len() == h * w * ch => v.extend_from_slice(&s),
                    Some(s) => {
                        return Err(RenderError::GradientShape(format!(
                            "gradient has {} values, expected {}",
                            s.len(),
                            h * w * ch
                        ))
                        .into())
                    }
                    None => v.extend(std::iter::repeat_n(0.0f32, h * w * ch)),
                }
            }
            let t = if ch == 3 {
                Tensor::from_vec(v, (c, h, w, 3), device)?
            } else {
                Tensor::from_vec(v, (c, h, w), device)?
            };
            Ok(Some(t))
        };
        Ok(ImageGradTensors {
            rgb: stack(0, 3)?,
            alpha: stack(1, 1)?,
            depth: stack(2, 1)?,
        })
    }
}

/// Densification statistics as tensors (see [`DensifyStats`]): `[N]` each.
#[derive(Debug, Clone)]
pub struct DensifyStatTensors {
    pub mean2d_grad_norm: Tensor,
    pub mean2d_absgrad_norm: Tensor,
    /// U32.
    pub visible_count: Tensor,
    pub max_radius_px: Tensor,
}

/// Gradients with the shapes of [`GaussianTensors`], plus the statistics.
#[derive(Debug, Clone)]
pub struct GradientTensors {
    pub means: Tensor,
    pub quats: Tensor,
    pub log_scales: Tensor,
    pub opacity_logits: Tensor,
    pub sh: Tensor,
    pub stats: DensifyStatTensors,
}

impl GradientTensors {
    /// Copies to the host, in the CPU path's layout.
    pub fn to_gradients(&self) -> Result<Gradients<f32>> {
        let v = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let a3 = |x: Vec<f32>| x.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
        Ok(Gradients {
            means: a3(v(&self.means)?),
            quats: v(&self.quats)?
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
            log_scales: a3(v(&self.log_scales)?),
            opacity_logits: v(&self.opacity_logits)?,
            sh: v(&self.sh)?,
            stats: DensifyStats {
                mean2d_grad_norm: v(&self.stats.mean2d_grad_norm)?,
                mean2d_absgrad_norm: v(&self.stats.mean2d_absgrad_norm)?,
                visible_count: self.stats.visible_count.to_vec1::<u32>()?,
                max_radius_px: v(&self.stats.max_radius_px)?,
            },
        })
    }
}

/// What [`CudaRasterizer::backward`] needs from the forward call, on the
/// device: the cameras, the projected Gaussians, the sorted tile lists and
/// the per-pixel final transmittance, last contributor and raw depth.
pub struct CudaForwardState {
    /// Cameras (SfCamera, 256-byte aligned) then the projected Gaussians.
    proj: CudaSlice<u8>,
    splat_offset: usize,
    /// vals[0] (M) | vals[1] (M) | tile_start (C·T + 1).
    isect: CudaSlice<u32>,
    sorted_offset: usize,
    tile_start_offset: usize,
    /// rgb 3P | alpha P | depth P | t_final P | raw_depth P | last P (u32 bits).
    frame: Tensor,
    intersections: Vec<u64>,
    cameras: Vec<Camera>,
    num_gaussians: usize,
    sh_degree: u8,
    options: RenderOptions,
}

impl std::fmt::Debug for CudaForwardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaForwardState")
            .field("cameras", &self.cameras.len())
            .field("num_gaussians", &self.num_gaussians)
            .field("intersections", &self.intersections)
            .finish()
    }
}

impl CudaForwardState {
    pub fn num_cameras(&self) -> usize {
        self.cameras.len()
    }

    /// Number of (tile, Gaussian) pairs of camera `cam` (known on the host:
    /// it is the forward's one readback).
    pub fn num_intersections(&self, cam: usize) -> usize {
        self.intersections[cam] as usize
    }
}

/// A grow-only device scratch buffer.
#[derive(Default)]
struct Scratch {
    buf: Option<CudaSlice<u8>>,
}

impl Scratch {
    /// Device address of at least `bytes` bytes (contents undefined).
    fn ensure(&mut self, stream: &std::sync::Arc<CudaStream>, bytes: usize) -> Result<u64> {
        let bytes = bytes.max(256);
        if self.buf.as_ref().is_none_or(|b| b.len() < bytes) {
            // Round up so that slowly growing scenes do not reallocate every call.
            let cap = bytes.next_power_of_two().max(bytes + bytes / 4);
            self.buf = None;
            self.buf = Some(driver("scratch alloc", unsafe { stream.alloc::<u8>(cap) })?);
        }
        let b = self.buf.as_ref().unwrap();
        let (p, _) = b.device_ptr(stream);
        Ok(p)
    }
}

#[derive(Default)]
struct Workspace {
    counts: Scratch,
    offsets: Scratch,
    dkeys0: Scratch,
    dkeys1: Scratch,
    dvals0: Scratch,
    dvals1: Scratch,
    totals: Scratch,
    scan_temp: Scratch,
    keys0: Scratch,
    keys1: Scratch,
    sort_temp: Scratch,
    screen: Scratch,
    totals_host: Vec<u64>,
}

/// The CUDA rasterizer: [`forward`](Self::forward) and
/// [`backward`](Self::backward) mirror [`crate::rasterize_forward`] and
/// [`crate::rasterize_backward`] on tensors.
pub struct CudaRasterizer {
    device: CudaDevice,
    ws: Mutex<Workspace>,
    variant: c_int,
}

/// Pixels per thread of the default backward rasterizer kernel.
pub const DEFAULT_PIXELS_PER_THREAD: u8 = 1;

impl std::fmt::Debug for CudaRasterizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaRasterizer({:?})", self.device)
    }
}

const CAM_FLOATS: usize = std::mem::size_of::<ffi::SfCamera>() / 4;
const SPLAT_BYTES: usize = 48;
const SCREEN_GRAD: usize = 12;

fn align256(x: usize) -> usize {
    x.div_ceil(256) * 256
}

fn common_size(cameras: &[Camera]) -> Result<(usize, usize)> {
    let first = cameras
        .first()
        .ok_or_else(|| bad("at least one camera is needed".into()))?;
    for (i, c) in cameras.iter().enumerate() {
        if (c.width, c.height) != (first.width, first.height) {
            return Err(bad(format!(
                "camera {i} is {}x{} but camera 0 is {}x{}: one call renders one image size",
                c.width, c.height, first.width, first.height
            )));
        }
    }
    Ok((first.width as usize, first.height as usize))
}

fn sf_camera(cam: &Camera) -> ffi::SfCamera {
    let p = CameraParams::<f32>::new(cam);
    let mut rot = [0.0f32; 9];
    for r in 0..3 {
        for k in 0..3 {
            rot[r * 3 + k] = p.rot[r][k];
        }
    }
    ffi::SfCamera {
        rot,
        trans: p.trans,
        fx: p.fx,
        fy: p.fy,
        cx: p.cx,
        cy: p.cy,
        width: p.width,
        height: p.height,
        near_plane: p.near,
        far_plane: p.far,
        position: p.position,
        lim_x_neg: p.lim_x_neg,
        lim_x_pos: p.lim_x_pos,
        lim_y_neg: p.lim_y_neg,
        lim_y_pos: p.lim_y_pos,
        pad: 0.0,
    }
}

/// Binds `$name` to the device address of a contiguous CUDA tensor's data,
/// keeping the storage guard alive to the end of the enclosing scope.
macro_rules! tensor_ptr {
    ($name:ident = $t:expr, $ty:ty, $stream:expr) => {
        let __t: &Tensor = &$t;
        let (__st, __layout) = __t.storage_and_layout();
        let __cs = match &*__st {
            Storage::Cuda(cs) => cs,
            _ => return Err(bad("expected a CUDA tensor".into())),
        };
        let __slice = __cs.as_cuda_slice::<$ty>()?;
        let (__p, __guard) = __slice.device_ptr($stream);
        let $name: u64 = __p + (__layout.start_offset() * std::mem::size_of::<$ty>()) as u64;
    };
}

/// Raises the release threshold of `dev`'s default memory pool (the one
/// candle's stream-ordered allocations use), so that freed blocks are kept
/// for the next allocation instead of being returned to the driver at every
/// host synchronisation. Process-wide for the device; binds its context to
/// the calling thread.
pub fn keep_pool_memory(dev: &CudaDevice) -> Result<()> {
    let stream = dev.cuda_stream();
    driver("bind context", stream.context().bind_to_thread())?;
    check("memory pool", unsafe {
        ffi::sf_keep_pool_memory(stream.context().ordinal() as c_int)
    })
}

fn wrap_f32(slice: CudaSlice<f32>, dev: &CudaDevice) -> Tensor {
    let n = slice.len();
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, n, BackpropOp::none(), false)
}

fn wrap_u32(slice: CudaSlice<u32>, dev: &CudaDevice) -> Tensor {
    let n = slice.len();
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, n, BackpropOp::none(), false)
}

impl CudaRasterizer {
    /// A rasterizer on `device` (a CUDA device).
    pub fn new(device: &Device) -> Result<Self> {
        Self::with_kernel_variant(device, DEFAULT_PIXELS_PER_THREAD, false, false)
    }

    /// Benchmarking knobs: `pixels_per_thread` (1 or 2) of the backward
    /// rasterizer kernel; `fast_exp` uses `__expf` in the rasterizer, which
    /// is faster but no longer bitwise equal to the CPU path at decision
    /// boundaries (see `cuda/common.cuh`); `full_sort` sorts 64-bit
    /// (tile | depth) keys in one go instead of presorting by depth (see
    /// `cuda/intersect.cu`).
    #[doc(hidden)]
    pub fn with_kernel_variant(
        device: &Device,
        pixels_per_thread: u8,
        fast_exp: bool,
        full_sort: bool,
    ) -> Result<Self> {
        let mut variant = 0;
        match pixels_per_thread {
            1 => {}
            2 => variant |= ffi::SF_VARIANT_PPT2,
            p => return Err(bad(format!("pixels_per_thread must be 1 or 2, got {p}"))),
        }
        if fast_exp {
            variant |= ffi::SF_VARIANT_FAST_EXP;
        }
        if full_sort {
            variant |= ffi::SF_VARIANT_FULL_SORT;
        }
        let dev = match device {
            Device::Cuda(d) => d.clone(),
            other => {
                return Err(bad(format!(
                    "CudaRasterizer needs a CUDA device, got {:?}",
                    other.location()
                )))
            }
        };
        keep_pool_memory(&dev)?;
        Ok(CudaRasterizer {
            device: dev,
            ws: Mutex::new(Workspace::default()),
            variant,
        })
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.device.clone())
    }

    fn check_call(
        &self,
        g: &GaussianTensors,
        cameras: &[Camera],
        opts: &RenderOptions,
    ) -> Result<(usize, usize, usize)> {
        opts.validate()?;
        let n = g.validate(&self.device)?;
        let (w, h) = common_size(cameras)?;
        check_cameras(cameras)?;
        if (cameras.len() as u64) * (n as u64) > i32::MAX as u64 {
            return Err(RenderError::InvalidParams(format!(
                "{n} Gaussians x {} cameras exceed the CUDA path's 2^31 limit per call",
                cameras.len()
            ))
            .into());
        }
        Ok((n, w, h))
    }

    /// Renders every camera (all cameras of one call share one image size).
    /// Returns the images and the state for [`backward`](Self::backward).
    /// One host synchronisation (see the module docs).
    pub fn forward(
        &self,
        g: &GaussianTensors,
        cameras: &[Camera],
        opts: &RenderOptions,
    ) -> Result<(RenderedTensors, CudaForwardState)> {
        let (n, w, h) = self.check_call(g, cameras, opts)?;
        let c = cameras.len();
        let dev = &self.device;
        let stream = dev.cuda_stream();
        driver("bind context", stream.context().bind_to_thread())?;
        let cs = stream.cu_stream() as *mut c_void;
        let grid = TileGrid::new(w as u32, h as u32);
        let (tiles_x, tiles_y) = (grid.tiles_x as usize, grid.tiles_y as usize);
        let num_tiles = c * tiles_x * tiles_y;
        let sh_degree = opts.sh_degree.map_or(g.sh_degree, |d| d.min(g.sh_degree));
        let k = sh_coeffs_per_channel(g.sh_degree);
        let means = g.means.contiguous()?;
        let quats = g.quats.contiguous()?;
        let log_scales = g.log_scales.contiguous()?;
        let opacity = g.opacity_logits.contiguous()?;
        let sh = g.sh.contiguous()?;

        let mut ws = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let ws = &mut *ws;

        // Cameras + projected Gaussians, one allocation.
        let splat_offset = align256(c * CAM_FLOATS * 4);
        let mut proj = driver("alloc", unsafe {
            stream.alloc::<u8>(splat_offset + (c * n).max(1) * SPLAT_BYTES)
        })?;
        let cam_data: Vec<f32> = cameras
            .iter()
            .flat_map(|cam| {
                let s = sf_camera(cam);
                // SAFETY: SfCamera is repr(C) and made of f32 only.
                unsafe { std::slice::from_raw_parts(&s as *const _ as *const f32, CAM_FLOATS) }
                    .to_vec()
            })
            .collect();
        {
            let bytes: &[u8] = unsafe {
                std::slice::from_raw_parts(cam_data.as_ptr() as *const u8, cam_data.len() * 4)
            };
            let mut view = proj.slice_mut(0..bytes.len());
            driver("camera upload", stream.memcpy_htod(bytes, &mut view))?;
        }
        let (proj_ptr, _) = proj.device_ptr_mut(&stream);
        let cams_ptr = proj_ptr;
        let splats_ptr = proj_ptr + splat_offset as u64;

        let presort = self.variant & ffi::SF_VARIANT_FULL_SORT == 0;
        let cn = (c * n).max(1);
        let counts = ws.counts.ensure(&stream, cn * 8)?;
        let offsets = ws.offsets.ensure(&stream, cn * 8)?;
        let totals = ws.totals.ensure(&stream, c * 8)?;
        let (dkeys, dvals) = if presort {
            (
                [
                    ws.dkeys0.ensure(&stream, cn * 8)?,
                    ws.dkeys1.ensure(&stream, cn * 8)?,
                ],
                [
                    ws.dvals0.ensure(&stream, cn * 4)?,
                    ws.dvals1.ensure(&stream, cn * 4)?,
                ],
            )
        } else {
            ([0, 0], [0, 0])
        };
        {
            tensor_ptr!(p_means = means, f32, &stream);
            tensor_ptr!(p_quats = quats, f32, &stream);
            tensor_ptr!(p_scales = log_scales, f32, &stream);
            tensor_ptr!(p_opac = opacity, f32, &stream);
            tensor_ptr!(p_sh = sh, f32, &stream);
            let a = ffi::SfProjectArgs {
                means: p_means,
                quats: p_quats,
                log_scales: p_scales,
                opacity_logits: p_opac,
                sh: p_sh,
                cams: cams_ptr,
                num_cams: c as c_int,
                num_gauss: n as c_int,
                sh_coeffs: k as c_int,
                sh_degree: sh_degree as c_int,
                antialiased: (opts.mode == RenderMode::Antialiased) as c_int,
                eps2d: opts.eps2d,
                radius_clip: opts.radius_clip,
                width: w as c_int,
                height: h as c_int,
                tiles_x: tiles_x as c_int,
                tiles_y: tiles_y as c_int,
                splats: splats_ptr,
                tile_counts: counts,
                depth_keys: dkeys[0],
                depth_ids: dvals[0],
            };
            check("projection", unsafe { ffi::sf_project_fwd(&a, cs) })?;
        }
        let cam_bits = if c <= 1 {
            0
        } else {
            32 - ((c - 1) as u32).leading_zeros() as c_int
        };
        let scan_bytes =
            unsafe { ffi::sf_scan_temp_bytes((c * n) as i64, presort as c_int, cam_bits) };
        let scan_temp = ws.scan_temp.ensure(&stream, scan_bytes)?;
        let mut dsel: c_int = 0;
        let sa = ffi::SfScanArgs {
            counts,
            offsets,
            totals,
            temp: scan_temp,
            temp_bytes: scan_bytes,
            num_cams: c as c_int,
            num_gauss: n as c_int,
            presort: presort as c_int,
            cam_bits,
            dkeys,
            dvals,
            out_selector: &mut dsel,
        };
        check("tile count scan", unsafe { ffi::sf_scan_counts(&sa, cs) })?;
        let order = if presort { dvals[dsel as usize] } else { 0 };
        // The one host synchronisation of the call.
        ws.totals_host.resize(c, 0);
        check("intersection count readback", unsafe {
            ffi::sf_read_totals(totals, ws.totals_host.as_mut_ptr(), c as c_int, cs)
        })?;
        let intersections = ws.totals_host.clone();
        for (ci, &count) in intersections.iter().enumerate() {
            if count > opts.max_intersections as u64 {
                return Err(RenderError::TooManyIntersections {
                    camera: ci,
                    count,
                    limit: opts.max_intersections,
                }
                .into());
            }
        }
        let m: u64 = intersections.iter().sum();
        if m > u32::MAX as u64 {
            return Err(RenderError::TooManyIntersections {
                camera: 0,
                count: m,
                limit: u32::MAX as usize,
            }
            .into());
        }
        let m = m as usize;

        // Sorted lists.
        let key_bits = if num_tiles <= 1 {
            1
        } else {
            32 - ((num_tiles - 1) as u32).leading_zeros() as c_int
        };
        let tile_start_offset = 2 * m;
        let mut isect = driver("alloc", unsafe {
            stream.alloc::<u32>(tile_start_offset + num_tiles + 1)
        })?;
        let key_size = if presort { 4 } else { 8 };
        let keys0 = ws.keys0.ensure(&stream, m * key_size)?;
        let keys1 = ws.keys1.ensure(&stream, m * key_size)?;
        let sort_bytes = unsafe { ffi::sf_sort_temp_bytes(m as u64, key_bits, presort as c_int) };
        let sort_temp = ws.sort_temp.ensure(&stream, sort_bytes)?;
        let mut selector: c_int = 0;
        let (isect_ptr, _) = isect.device_ptr_mut(&stream);
        {
            let ia = ffi::SfIsectArgs {
                splats: splats_ptr,
                offsets,
                order,
                num_cams: c as c_int,
                num_gauss: n as c_int,
                tiles_x: tiles_x as c_int,
                tiles_y: tiles_y as c_int,
                num_isect: m as u64,
                key_bits,
                keys: [keys0, keys1],
                vals: [isect_ptr, isect_ptr + 4 * m as u64],
                temp: sort_temp,
                temp_bytes: sort_bytes,
                tile_start: isect_ptr + 4 * tile_start_offset as u64,
                out_selector: &mut selector,
            };
            check("tile intersection", unsafe { ffi::sf_intersect(&ia, cs) })?;
        }
        let sorted_offset = if selector == 0 { 0 } else { m };

        // Images and per-pixel state, one allocation.
        let p = c * h * w;
        let mut frame = driver("alloc", unsafe { stream.alloc::<f32>(8 * p) })?;
        {
            let (fp, _) = frame.device_ptr_mut(&stream);
            let at = |i: usize| fp + (i * p * 4) as u64;
            let ra = ffi::SfRasterFwdArgs {
                splats: splats_ptr,
                sorted_ids: isect_ptr + 4 * sorted_offset as u64,
                tile_start: isect_ptr + 4 * tile_start_offset as u64,
                num_cams: c as c_int,
                width: w as c_int,
                height: h as c_int,
                tiles_x: tiles_x as c_int,
                tiles_y: tiles_y as c_int,
                bg: opts.background,
                normalize_depth: opts.normalize_depth as c_int,
                rgb: at(0),
                alpha: at(3),
                depth: at(4),
                t_final: at(5),
                raw_depth: at(6),
                last: at(7),
                variant: self.variant,
            };
            check("rasterize forward", unsafe {
                ffi::sf_rasterize_fwd(&ra, cs)
            })?;
        }
        let frame = wrap_f32(frame, dev);
        let images = RenderedTensors {
            rgb: frame.narrow(0, 0, 3 * p)?.reshape((c, h, w, 3))?,
            alpha: frame.narrow(0, 3 * p, p)?.reshape((c, h, w))?,
            depth: frame.narrow(0, 4 * p, p)?.reshape((c, h, w))?,
        };
        let state = CudaForwardState {
            proj,
            splat_offset,
            isect,
            sorted_offset,
            tile_start_offset,
            frame,
            intersections,
            cameras: cameras.to_vec(),
            num_gaussians: n,
            sh_degree: g.sh_degree,
            options: *opts,
        };
        Ok((images, state))
    }

    /// Gradients of a loss with respect to the Gaussian parameters, given
    /// the loss's gradients with respect to the images of the forward call
    /// that produced `state` (same Gaussians, cameras and options).
    /// Fully asynchronous.
    pub fn backward(
        &self,
        g: &GaussianTensors,
        cameras: &[Camera],
        opts: &RenderOptions,
        state: &CudaForwardState,
        grads: &ImageGradTensors,
    ) -> Result<GradientTensors> {
        let (n, w, h) = self.check_call(g, cameras, opts)?;
        let shape = |m: String| -> CudaRenderError { RenderError::GradientShape(m).into() };
        if state.cameras.as_slice() != cameras {
            return Err(shape("cameras differ from the forward call".into()));
        }
        if state.num_gaussians != n || state.sh_degree != g.sh_degree {
            return Err(shape(format!(
                "forward saw {} Gaussians of SH degree {}, backward got {n} of degree {}",
                state.num_gaussians, state.sh_degree, g.sh_degree
            )));
        }
        if state.options != *opts {
            return Err(shape("render options differ from the forward call".into()));
        }
        let c = cameras.len();
        let dev = &self.device;
        let stream = dev.cuda_stream();
        driver("bind context", stream.context().bind_to_thread())?;
        let cs = stream.cu_stream() as *mut c_void;
        let grid = TileGrid::new(w as u32, h as u32);
        let (tiles_x, tiles_y) = (grid.tiles_x as usize, grid.tiles_y as usize);
        let sh_degree = opts.sh_degree.map_or(g.sh_degree, |d| d.min(g.sh_degree));
        let k = sh_coeffs_per_channel(g.sh_degree);
        let p = c * h * w;
        let g_rgb = grads.rgb.as_ref().map(|t| t.contiguous()).transpose()?;
        let g_alpha = grads.alpha.as_ref().map(|t| t.contiguous()).transpose()?;
        let g_depth = grads.depth.as_ref().map(|t| t.contiguous()).transpose()?;
        if let Some(t) = &g_rgb {
            check_tensor("rgb gradient", t, &[c, h, w, 3], DType::F32, dev)?;
        }
        if let Some(t) = &g_alpha {
            check_tensor("alpha gradient", t, &[c, h, w], DType::F32, dev)?;
        }
        if let Some(t) = &g_depth {
            check_tensor("depth gradient", t, &[c, h, w], DType::F32, dev)?;
        }
        let means = g.means.contiguous()?;
        let quats = g.quats.contiguous()?;
        let log_scales = g.log_scales.contiguous()?;
        let opacity = g.opacity_logits.contiguous()?;
        let sh = g.sh.contiguous()?;

        let mut ws = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let ws = &mut *ws;
        let screen_len = (c * n).max(1) * SCREEN_GRAD;
        let screen = ws.screen.ensure(&stream, screen_len * 4)?;

        let (proj_ptr, _) = state.proj.device_ptr(&stream);
        let splats_ptr = proj_ptr + state.splat_offset as u64;
        let (isect_ptr, _) = state.isect.device_ptr(&stream);
        tensor_ptr!(frame_ptr = state.frame, f32, &stream);
        let at = |i: usize| frame_ptr + (i * p * 4) as u64;
        {
            tensor_ptr!(
                p_grgb = g_rgb.as_ref().unwrap_or(&state.frame),
                f32,
                &stream
            );
            tensor_ptr!(
                p_galpha = g_alpha.as_ref().unwrap_or(&state.frame),
                f32,
                &stream
            );
            tensor_ptr!(
                p_gdepth = g_depth.as_ref().unwrap_or(&state.frame),
                f32,
                &stream
            );
            let ba = ffi::SfRasterBwdArgs {
                splats: splats_ptr,
                sorted_ids: isect_ptr + 4 * state.sorted_offset as u64,
                tile_start: isect_ptr + 4 * state.tile_start_offset as u64,
                num_cams: c as c_int,
                width: w as c_int,
                height: h as c_int,
                tiles_x: tiles_x as c_int,
                tiles_y: tiles_y as c_int,
                bg: opts.background,
                normalize_depth: opts.normalize_depth as c_int,
                t_final: at(5),
                raw_depth: at(6),
                last: at(7),
                g_rgb: if g_rgb.is_some() { p_grgb } else { 0 },
                g_alpha: if g_alpha.is_some() { p_galpha } else { 0 },
                g_depth: if g_depth.is_some() { p_gdepth } else { 0 },
                screen_grads: screen,
                screen_grads_len: screen_len as u64,
                variant: self.variant,
            };
            check("rasterize backward", unsafe {
                ffi::sf_rasterize_bwd(&ba, cs)
            })?;
        }

        // All float outputs in one allocation: means 3N | quats 4N |
        // log_scales 3N | opacity N | sh 3KN | norm N | absnorm N | radius N.
        let nf = n * (3 + 4 + 3 + 1 + 3 * k + 3);
        let mut out = driver("alloc", unsafe { stream.alloc::<f32>(nf.max(1)) })?;
        let mut vis = driver("alloc", unsafe { stream.alloc::<u32>(n.max(1)) })?;
        let offs = {
            let mut o = [0usize; 9];
            let sizes = [3 * n, 4 * n, 3 * n, n, 3 * k * n, n, n, n];
            for i in 0..8 {
                o[i + 1] = o[i] + sizes[i];
            }
            o
        };
        {
            let (op, _g1) = out.device_ptr_mut(&stream);
            let (vp, _g2) = vis.device_ptr_mut(&stream);
            let at = |i: usize| op + (offs[i] * 4) as u64;
            tensor_ptr!(p_means = means, f32, &stream);
            tensor_ptr!(p_quats = quats, f32, &stream);
            tensor_ptr!(p_scales = log_scales, f32, &stream);
            tensor_ptr!(p_opac = opacity, f32, &stream);
            tensor_ptr!(p_sh = sh, f32, &stream);
            let pa = ffi::SfProjectBwdArgs {
                means: p_means,
                quats: p_quats,
                log_scales: p_scales,
                opacity_logits: p_opac,
                sh: p_sh,
                cams: proj_ptr,
                num_cams: c as c_int,
                num_gauss: n as c_int,
                sh_coeffs: k as c_int,
                sh_degree: sh_degree as c_int,
                antialiased: (opts.mode == RenderMode::Antialiased) as c_int,
                eps2d: opts.eps2d,
                splats: splats_ptr,
                screen_grads: screen,
                v_means: at(0),
                v_quats: at(1),
                v_log_scales: at(2),
                v_opacity_logits: at(3),
                v_sh: at(4),
                grad_norm: at(5),
                absgrad_norm: at(6),
                max_radius: at(7),
                visible_count: vp,
            };
            check("projection backward", unsafe {
                ffi::sf_project_bwd(&pa, cs)
            })?;
        }
        let out = wrap_f32(out, dev);
        let vis = wrap_u32(vis, dev).narrow(0, 0, n)?;
        let view = |i: usize| out.narrow(0, offs[i], offs[i + 1] - offs[i]);
        Ok(GradientTensors {
            means: view(0)?.reshape((n, 3))?,
            quats: view(1)?.reshape((n, 4))?,
            log_scales: view(2)?.reshape((n, 3))?,
            opacity_logits: view(3)?,
            sh: view(4)?.reshape((n, k, 3))?,
            stats: DensifyStatTensors {
                mean2d_grad_norm: view(5)?,
                mean2d_absgrad_norm: view(6)?,
                visible_count: vis,
                max_radius_px: view(7)?,
            },
        })
    }
}
