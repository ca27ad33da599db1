//! TSDF fusion on the GPU (cargo feature `cuda`): [`fuse_cuda`] computes
//! what [`crate::tsdf::fuse`] computes, one thread per voxel sample, from
//! alpha and depth images already on the device (e.g. the CUDA
//! rasterizer's output), so the renders never travel to the host for it;
//! [`mesh_splat_cuda`] is [`crate::mesh_splat`] with rendering and fusion on
//! the GPU (what `splatforge mesh` runs in a CUDA build on a GPU).
//! The kernel is `cuda/tsdf.cu`; `examples/gpu_mesh.rs` checks it against
//! the CPU path and times [`mesh_splat_cuda`].

use std::ffi::{c_int, c_void};

use candle_core::{DType, Device, Tensor};
use splatforge_cuda::{alloc, driver_error, slice_address, slice_address_mut, tensor_address};
use splatforge_render::cuda::{CudaRasterizer, GaussianTensors};
use splatforge_render::{Camera, GaussianBuffers, RenderOptions};
use splatforge_splat::Gaussians;

use crate::depth::{ViewRender, SURFACE_ALPHA};
use crate::tsdf::{GridSpec, Volume};
use crate::{surface_from_volume, FusionPlan, Mesh, MeshError, MeshOptions, StageTimings};

/// [`crate::mesh_splat`] with the views rendered by the CUDA rasterizer and fused by
/// [`fuse_cuda`] on `device` (a CUDA device); the renders then come to the host for the
/// colours, and the later stages run on the CPU. Stage times are taken after a device
/// synchronisation, so each is the stage's own.
pub fn mesh_splat_cuda(
    g: &Gaussians,
    options: &MeshOptions,
    device: &Device,
) -> Result<(Mesh, StageTimings), MeshError> {
    let mut timings = StageTimings::default();
    let plan = timings.time("views", || FusionPlan::new(g, options))?;
    let sync = || device.synchronize().map_err(cuda_error);
    let (rasterizer, tensors) = timings.time("upload", || {
        let rasterizer = CudaRasterizer::new(device).map_err(cuda_error)?;
        let tensors = GaussianTensors::from_params(&GaussianBuffers::from(g).params(), device)
            .map_err(cuda_error)?;
        sync()?;
        Ok::<_, MeshError>((rasterizer, tensors))
    })?;
    // As `depth::render_views`: black background, expected depth normalised by alpha,
    // the colour of SH degree 0.
    let render_options = RenderOptions {
        background: [0.0; 3],
        normalize_depth: true,
        sh_degree: Some(0),
        ..Default::default()
    };
    let images = timings.time("render", || {
        let (images, _) = rasterizer
            .forward(&tensors, &plan.cameras, &render_options)
            .map_err(cuda_error)?;
        sync()?;
        Ok::<_, MeshError>(images)
    })?;
    let volume = timings.time("tsdf", || {
        fuse_cuda(&plan.grid, &plan.cameras, &images.alpha, &images.depth)
    })?;
    let renders: Vec<ViewRender> = timings.time("download renders", || {
        Ok::<_, MeshError>(
            images
                .to_images()
                .map_err(cuda_error)?
                .into_iter()
                .map(ViewRender::from)
                .collect(),
        )
    })?;
    let mesh = surface_from_volume(&volume, &plan, &renders, options, &mut timings)?;
    Ok((mesh, timings))
}

/// `#[repr(C)]` mirror of `SmView` in `cuda/api.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SmView {
    rows: [f32; 12],
    fx: f32,
    fy: f32,
    cx: f32,
    cy: f32,
    near_plane: f32,
}

/// `#[repr(C)]` mirror of `SmFuseArgs` in `cuda/api.h`.
#[repr(C)]
struct SmFuseArgs {
    views: u64,
    alpha: u64,
    depth: u64,
    num_views: c_int,
    width: c_int,
    height: c_int,
    origin: [f32; 3],
    voxel: f32,
    dims: [c_int; 3],
    truncation: f32,
    surface_alpha: f32,
    sdf: u64,
}

extern "C" {
    fn sm_tsdf_fuse(args: *const SmFuseArgs, stream: *mut c_void) -> c_int;
}

fn cuda_error(e: impl std::fmt::Display) -> MeshError {
    MeshError::Cuda(e.to_string())
}

/// Fuses `alpha` and `depth` (`[views, height, width]` f32 tensors on one
/// CUDA device, contiguous; expected depth as [`crate::depth`] renders it)
/// of `cameras` into `grid`, and downloads the field.
pub fn fuse_cuda(
    grid: &GridSpec,
    cameras: &[Camera],
    alpha: &Tensor,
    depth: &Tensor,
) -> Result<Volume, MeshError> {
    let (v, h, w) = alpha.dims3().map_err(cuda_error)?;
    if depth.dims() != alpha.dims() || v != cameras.len() {
        return Err(MeshError::invalid(format!(
            "alpha {:?} and depth {:?} for {} cameras",
            alpha.dims(),
            depth.dims(),
            cameras.len()
        )));
    }
    if alpha.dtype() != DType::F32 || depth.dtype() != DType::F32 {
        return Err(MeshError::invalid("alpha and depth must be f32"));
    }
    if let Some(c) = cameras
        .iter()
        .find(|c| (c.width as usize, c.height as usize) != (w, h))
    {
        return Err(MeshError::invalid(format!(
            "a {}x{} camera for {w}x{h} images",
            c.width, c.height
        )));
    }
    let dims: [c_int; 3] = grid.dims.map(|d| c_int::try_from(d).unwrap_or(c_int::MAX));
    if dims.contains(&c_int::MAX) || grid.len() > u32::MAX as usize * 256 {
        return Err(MeshError::invalid(format!(
            "grid {:?} is too large",
            grid.dims
        )));
    }
    let dev = alpha.device().as_cuda_device().map_err(cuda_error)?;
    let stream = dev.cuda_stream();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| cuda_error(driver_error("bind context", e)))?;
    let views: Vec<f32> = cameras
        .iter()
        .flat_map(|c| {
            let m = &c.world_to_camera;
            let mut f: Vec<f32> = m[..3].iter().flatten().copied().collect();
            f.extend([c.fx, c.fy, c.cx, c.cy, c.near]);
            f
        })
        .collect();
    debug_assert_eq!(
        views.len(),
        cameras.len() * std::mem::size_of::<SmView>() / 4
    );
    let views_dev = stream
        .clone_htod(&views)
        .map_err(|e| cuda_error(driver_error("view upload", e)))?;
    let mut sdf = alloc::<f32>(&stream, grid.len()).map_err(cuda_error)?;
    let args = SmFuseArgs {
        views: slice_address(&views_dev, &stream),
        alpha: tensor_address::<f32>(alpha, &stream).map_err(cuda_error)?,
        depth: tensor_address::<f32>(depth, &stream).map_err(cuda_error)?,
        num_views: v as c_int,
        width: w as c_int,
        height: h as c_int,
        origin: grid.origin,
        voxel: grid.voxel,
        dims,
        truncation: grid.truncation,
        surface_alpha: SURFACE_ALPHA,
        sdf: slice_address_mut(&mut sdf, &stream),
    };
    // SAFETY: every address in `args` is of a buffer held until the end of
    // this function (`views_dev`, `sdf`, the tensors' storage), on `stream`,
    // and at least as large as the counts passed: `views` has `v` SmViews,
    // `alpha` and `depth` `v·h·w` f32 (checked above), `sdf` the grid's
    // samples. The launcher only enqueues the kernel on `stream`.
    let code = unsafe { sm_tsdf_fuse(&args, stream.cu_stream() as *mut c_void) };
    splatforge_cuda::check("TSDF fusion", code).map_err(cuda_error)?;
    let sdf = stream
        .clone_dtoh(&sdf)
        .map_err(|e| cuda_error(driver_error("download", e)))?;
    Ok(Volume { sdf })
}
