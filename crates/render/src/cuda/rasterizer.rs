//! [`CudaRasterizer`]: the kernel launches of the forward and backward
//! passes (stages 1–3 and 3′–1′ of the module docs) and their scratch
//! buffers.

use super::tensors::check_tensor;
use super::*;

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

const CAM_FLOATS: usize = ffi::SfCamera::FLOATS;
const SPLAT_BYTES: usize = 48;
const SCREEN_GRAD: usize = 12;

fn align256(x: usize) -> usize {
    x.div_ceil(256) * 256
}

pub(super) fn common_size(cameras: &[Camera]) -> Result<(usize, usize)> {
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
        splatforge_cuda::keep_pool_memory(&dev)?;
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
        let mut proj = alloc::<u8>(&stream, splat_offset + (c * n).max(1) * SPLAT_BYTES)?;
        let cam_bytes: Vec<u8> = cameras
            .iter()
            .flat_map(|cam| sf_camera(cam).to_floats())
            .flat_map(f32::to_ne_bytes)
            .collect();
        {
            let mut view = proj.slice_mut(0..cam_bytes.len());
            driver("camera upload", stream.memcpy_htod(&cam_bytes, &mut view))?;
        }
        let proj_ptr = slice_address_mut(&mut proj, &stream);
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
            let p_means = tensor_address::<f32>(&means, &stream)?;
            let p_quats = tensor_address::<f32>(&quats, &stream)?;
            let p_scales = tensor_address::<f32>(&log_scales, &stream)?;
            let p_opac = tensor_address::<f32>(&opacity, &stream)?;
            let p_sh = tensor_address::<f32>(&sh, &stream)?;
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
            // SAFETY: every pointer in `a` is a live device buffer of this
            // stream sized for `c` cameras × `n` Gaussians above.
            check("projection", unsafe { ffi::sf_project_fwd(&a, cs) })?;
        }
        let cam_bits = if c <= 1 {
            0
        } else {
            32 - ((c - 1) as u32).leading_zeros() as c_int
        };
        // SAFETY: a size query; no memory is touched.
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
        // SAFETY: `sa`'s buffers are live on this stream; the temporary has
        // the size the query above returned.
        check("tile count scan", unsafe { ffi::sf_scan_counts(&sa, cs) })?;
        let order = if presort { dvals[dsel as usize] } else { 0 };
        // The one host synchronisation of the call.
        ws.totals_host.resize(c, 0);
        // SAFETY: `totals` holds `c` device counts and the host vector was
        // just resized to `c`; the call synchronises the stream.
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
        let mut isect = alloc::<u32>(&stream, tile_start_offset + num_tiles + 1)?;
        let key_size = if presort { 4 } else { 8 };
        let keys0 = ws.keys0.ensure(&stream, m * key_size)?;
        let keys1 = ws.keys1.ensure(&stream, m * key_size)?;
        // SAFETY: a size query; no memory is touched.
        let sort_bytes = unsafe { ffi::sf_sort_temp_bytes(m as u64, key_bits, presort as c_int) };
        let sort_temp = ws.sort_temp.ensure(&stream, sort_bytes)?;
        let mut selector: c_int = 0;
        let isect_ptr = slice_address_mut(&mut isect, &stream);
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
            // SAFETY: `ia`'s key, id and temporary buffers hold `m`
            // intersections (the readback's total) and live on this stream.
            check("tile intersection", unsafe { ffi::sf_intersect(&ia, cs) })?;
        }
        let sorted_offset = if selector == 0 { 0 } else { m };

        // Images and per-pixel state, one allocation.
        let p = c * h * w;
        let mut frame = alloc::<f32>(&stream, 8 * p)?;
        {
            let fp = slice_address_mut(&mut frame, &stream);
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
            // SAFETY: `ra`'s images and per-pixel state were allocated for
            // `c` cameras at this size; its inputs are the buffers above.
            check("rasterize forward", unsafe {
                ffi::sf_rasterize_fwd(&ra, cs)
            })?;
        }
        let frame = wrap_slice(frame, dev);
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

        let proj_ptr = slice_address(&state.proj, &stream);
        let splats_ptr = proj_ptr + state.splat_offset as u64;
        let isect_ptr = slice_address(&state.isect, &stream);
        let frame_ptr = tensor_address::<f32>(&state.frame, &stream)?;
        let at = |i: usize| frame_ptr + (i * p * 4) as u64;
        {
            let p_grgb = tensor_address::<f32>(g_rgb.as_ref().unwrap_or(&state.frame), &stream)?;
            let p_galpha =
                tensor_address::<f32>(g_alpha.as_ref().unwrap_or(&state.frame), &stream)?;
            let p_gdepth =
                tensor_address::<f32>(g_depth.as_ref().unwrap_or(&state.frame), &stream)?;
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
            // SAFETY: `ba` points at the forward pass's state (kept alive by
            // `state`) and at gradient buffers sized like it.
            check("rasterize backward", unsafe {
                ffi::sf_rasterize_bwd(&ba, cs)
            })?;
        }

        // All float outputs in one allocation: means 3N | quats 4N |
        // log_scales 3N | opacity N | sh 3KN | norm N | absnorm N | radius N.
        let nf = n * (3 + 4 + 3 + 1 + 3 * k + 3);
        let mut out = alloc::<f32>(&stream, nf.max(1))?;
        let mut vis = alloc::<u32>(&stream, n.max(1))?;
        let offs = {
            let mut o = [0usize; 9];
            let sizes = [3 * n, 4 * n, 3 * n, n, 3 * k * n, n, n, n];
            for i in 0..8 {
                o[i + 1] = o[i] + sizes[i];
            }
            o
        };
        {
            let op = slice_address_mut(&mut out, &stream);
            let vp = slice_address_mut(&mut vis, &stream);
            let at = |i: usize| op + (offs[i] * 4) as u64;
            let p_means = tensor_address::<f32>(&means, &stream)?;
            let p_quats = tensor_address::<f32>(&quats, &stream)?;
            let p_scales = tensor_address::<f32>(&log_scales, &stream)?;
            let p_opac = tensor_address::<f32>(&opacity, &stream)?;
            let p_sh = tensor_address::<f32>(&sh, &stream)?;
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
            // SAFETY: `pa`'s gradient outputs are `n`-sized device buffers
            // allocated above; its inputs are the forward pass's.
            check("projection backward", unsafe {
                ffi::sf_project_bwd(&pa, cs)
            })?;
        }
        let out = wrap_slice(out, dev);
        let vis = wrap_slice(vis, dev).narrow(0, 0, n)?;
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
