//! The CUDA fitting backend (cargo feature `cuda`): [`CudaBackend`], a
//! [`FitBackend`] whose state lives on the GPU.
//!
//! # Design
//! Everything runs on candle's CUDA stream of the chosen device, through the
//! rasterizer of `splatforge_render::cuda` and this crate's kernels
//! (`crates/fit/cuda/`, built by `build.rs` with nvcc, one file per concern):
//!
//! | file | what |
//! |---|---|
//! | `adam.cu` | fused Adam: one launch updates all six groups (per-group step size and bias correction as kernel arguments, eps 1e-15) |
//! | `loss.cu` | `(1 − λ)·L1 + λ·(1 − SSIM)` (11×11 Gaussian window) plus the alpha term, and the gradient with respect to the rendered image |
//! | `densify.cu` | statistics accumulation, opacity reset, clone / split / prune by classification + prefix sum (CUB) + scatter |
//!
//! State on the device: one parameter buffer laid out as the rasterizer's
//! gradient buffer (`means 3N | quats 4N | log_scales 3N | opacity N |
//! sh 3KN`, SH `[N][K][3]` with DC first), Adam's `m` and `v` in the same
//! layout, the densification statistics (`grad_accum`, `denom`,
//! `max_radii`), the training targets (uploaded once per view and
//! background), and a ring of per-step loss sums. The rasterizer reads the
//! parameters through tensor views of that buffer (no copies).
//!
//! Semantics are the CPU reference's ([`crate::CpuBackend`]): the kernels
//! mirror `adam.rs`, `loss.rs` and `densify.rs` operation for operation and
//! are compiled without FMA contraction, the split samples are drawn on the
//! host by the same generator in the same order, and new rows are laid out as
//! the CPU appends and retains them, with their optimiser state following
//! (`examples/gpu_fit.rs parity` checks it).
//!
//! Guided steps ([`FitBackend::guided_step`], SDS refinement) run the same
//! forward, loss, backward and Adam kernels. The guide receives the guide
//! cameras' renders as a candle tensor on this device (a channel-first copy
//! of the rasterizer's output) and returns its gradient there; candle ops on
//! the same stream zero its non-finite entries, permute it back to the
//! rasterizer's layout and stack it with the views' loss gradients
//! (`examples/gpu_fit.rs guided` checks the step against the CPU's).
//!
//! # Host synchronisation points
//! 1. [`splatforge_render::cuda::CudaRasterizer::forward`]: the number of
//!    tile intersections per camera (8 bytes each), every step: the
//!    rasterizer sizes its sort buffers with it (gsplat does the same). It is
//!    the only per-step synchronisation, and it belongs to the rasterizer.
//!    A guided step whose views differ in size from its guide cameras
//!    renders them in a second call, with a second readback; whatever the
//!    guide itself synchronises is the caller's.
//! 2. Loss statistics: every [`stats_interval`](CudaBackend::set_stats_interval)
//!    steps (default [`DEFAULT_STATS_INTERVAL`](CudaBackend::DEFAULT_STATS_INTERVAL)),
//!    the ring of per-step loss sums is copied back (a few KiB). In between,
//!    [`FitBackend::step`] returns the latest statistics read, and
//!    [`FitBackend::latest_stats`] reads the final ones.
//! 3. Densification: the counts of kept originals / clones / children and
//!    splits (32 bytes), which size the new buffers and the host-drawn split
//!    samples; the loss ring is read at the same time.
//! 4. [`FitBackend::gaussians`] (download of the result).
//! 5. First use of a training view (per background): its upload.
//!
//! Nothing else synchronises: Adam, the loss, the statistics, the opacity
//! reset and every allocation are stream-ordered.
//!
//! CUDA graphs are not used: the rasterizer's per-step readback (1) and its
//! data-dependent sort sizes make the step's launch sequence change from step
//! to step, so there is no fixed-shape segment long enough to capture.
//!
//! # Limits
//! All views of one step must share one image size (one rasterizer call);
//! so must the guide cameras of a guided step. [`StageTimings`] are
//! host-side times (the GPU runs asynchronously, so they measure enqueueing
//! plus the waits at the sync points above).

mod ffi;

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use splatforge_render::cuda::{
    CudaRasterizer, GaussianTensors, GradientTensors, ImageGradTensors, RenderedTensors,
};
use splatforge_render::{pack_sh, split_sh, Camera, RenderOptions};
use splatforge_splat::{logit, sh_coeffs_per_channel, Gaussians};

use crate::adam::{adam_step_constants, Adam, Group};
use crate::backend::{
    check_guide_gradient, guide_size, BackendSettings, BatchView, FitBackend, Guide, GuidedParams,
    StageTimings, StepParams, StepStats,
};
use crate::densify::{ndc_scale, DensifyParams, DensifyReport, DensifyState};
use crate::error::{FitError, Result};
use crate::loss::{gaussian_kernel, psnr, SSIM_SIGMA, SSIM_WINDOW};
use crate::rng::Rng;
use crate::schedule::LearningRates;

fn dev_err(stage: &str, e: impl std::fmt::Display) -> FitError {
    FitError::Device(format!("{stage}: {e}"))
}

fn check(stage: &str, code: c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString returns a static C string.
    let msg = unsafe { CStr::from_ptr(ffi::sff_error_string(code)) }
        .to_string_lossy()
        .into_owned();
    Err(FitError::Device(format!(
        "CUDA error {code} in {stage}: {msg}"
    )))
}

impl From<splatforge_render::cuda::CudaRenderError> for FitError {
    fn from(e: splatforge_render::cuda::CudaRenderError) -> Self {
        match e {
            splatforge_render::cuda::CudaRenderError::Render(r) => FitError::Render(r),
            e => FitError::Device(e.to_string()),
        }
    }
}

/// Device address (with the layout's start offset) of a contiguous CUDA
/// tensor of `T`.
fn tensor_ptr<T: candle_core::cuda_backend::CudaDType>(
    t: &Tensor,
    stream: &Arc<CudaStream>,
) -> Result<u64> {
    let (st, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        return Err(FitError::Device("internal: non-contiguous tensor".into()));
    }
    let cs = match &*st {
        Storage::Cuda(cs) => cs,
        _ => return Err(FitError::Device("internal: expected a CUDA tensor".into())),
    };
    let slice = cs.as_cuda_slice::<T>()?;
    let (p, _guard) = slice.device_ptr(stream);
    Ok(p + (layout.start_offset() * std::mem::size_of::<T>()) as u64)
}

fn slice_ptr<T>(s: &CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _guard) = s.device_ptr(stream);
    p
}

fn slice_ptr_mut<T>(s: &mut CudaSlice<T>, stream: &Arc<CudaStream>) -> u64 {
    let (p, _guard) = s.device_ptr_mut(stream);
    p
}

fn wrap_f32(slice: CudaSlice<f32>, dev: &CudaDevice) -> Tensor {
    let n = slice.len();
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, n, BackpropOp::none(), false)
}

/// Floats per Gaussian in the parameter layout for `k` SH coefficients.
fn row_floats(k: usize) -> usize {
    11 + 3 * k
}

/// Packs `g` into the device layout (see the module docs).
fn pack_params(g: &Gaussians) -> Vec<f32> {
    let n = g.len();
    let sh = pack_sh(g);
    let k = sh_coeffs_per_channel(g.sh_degree);
    let mut out = Vec::with_capacity(n * row_floats(k));
    out.extend(g.means.iter().flatten());
    out.extend(g.rotations.iter().flatten());
    out.extend(g.log_scales.iter().flatten());
    out.extend_from_slice(&g.opacity_logits);
    out.extend_from_slice(&sh);
    out
}

/// Inverse of [`pack_params`].
fn unpack_params(p: &[f32], n: usize, sh_degree: u8) -> Gaussians {
    let k = sh_coeffs_per_channel(sh_degree);
    assert_eq!(p.len(), n * row_floats(k));
    let a3 = |s: &[f32]| {
        s.chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect::<Vec<_>>()
    };
    let (sh_dc, sh_rest) = split_sh(&p[11 * n..], sh_degree);
    Gaussians {
        means: a3(&p[..3 * n]),
        rotations: p[3 * n..7 * n]
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
        log_scales: a3(&p[7 * n..10 * n]),
        opacity_logits: p[10 * n..11 * n].to_vec(),
        sh_dc,
        sh_rest,
        sh_degree,
    }
}

/// A grow-only device scratch buffer of f32.
#[derive(Default)]
struct Scratch {
    buf: Option<CudaSlice<f32>>,
}

impl Scratch {
    fn ensure(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<u64> {
        let len = len.max(64);
        if self.buf.as_ref().is_none_or(|b| b.len() < len) {
            self.buf = None;
            let cap = len + len / 4;
            self.buf =
                Some(unsafe { stream.alloc::<f32>(cap) }.map_err(|e| dev_err("scratch alloc", e))?);
        }
        Ok(slice_ptr(self.buf.as_ref().unwrap(), stream))
    }
}

/// Gradients of the parameter groups, shaped as [`GaussianTensors`] and
/// contiguous (what the fused Adam reads).
struct ParamGrads {
    means: Tensor,
    quats: Tensor,
    log_scales: Tensor,
    opacity_logits: Tensor,
    sh: Tensor,
}

impl ParamGrads {
    fn of(g: GradientTensors) -> Self {
        ParamGrads {
            means: g.means,
            quats: g.quats,
            log_scales: g.log_scales,
            opacity_logits: g.opacity_logits,
            sh: g.sh,
        }
    }

    /// The element-wise sum (the gradients of two rasterizer calls).
    fn add(&self, o: &ParamGrads) -> Result<ParamGrads> {
        Ok(ParamGrads {
            means: (&self.means + &o.means)?,
            quats: (&self.quats + &o.quats)?,
            log_scales: (&self.log_scales + &o.log_scales)?,
            opacity_logits: (&self.opacity_logits + &o.opacity_logits)?,
            sh: (&self.sh + &o.sh)?,
        })
    }
}

/// Per-view loss sums of one step, as the loss kernels leave them.
#[derive(Debug, Clone, Copy)]
struct PendingStep {
    slot: usize,
    views: usize,
    /// 3·H·W values, H·W pixels.
    pixels: usize,
    has_alpha: [bool; MAX_VIEWS_PER_SLOT],
}

const MAX_VIEWS_PER_SLOT: usize = 16;
const SUMS_PER_VIEW: usize = 4;

/// The CUDA fitting backend (see the module docs).
pub struct CudaBackend {
    dev: CudaDevice,
    stream: Arc<CudaStream>,
    raster: CudaRasterizer,
    n: usize,
    sh_degree: u8,
    /// Parameters, 1-D, `n · (11 + 3K)` floats.
    params: Tensor,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    grad_accum: CudaSlice<f32>,
    denom: CudaSlice<f32>,
    max_radii: CudaSlice<f32>,
    adam_steps: [u32; 6],
    settings: BackendSettings,
    rng: Rng,
    targets: HashMap<(usize, [u32; 3]), (Tensor, Option<Tensor>)>,
    loss_scratch: Scratch,
    ring: CudaSlice<f64>,
    ring_slots: usize,
    pending: Vec<PendingStep>,
    steps: u32,
    stats_interval: u32,
    last_stats: StepStats,
    history: Vec<StepStats>,
    timings: StageTimings,
    deferred: Option<FitError>,
    syncs: SyncCounts,
}

/// How often the backend synchronised with the host, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// Rasterizer forward calls (one intersection-count readback each).
    pub forward: u64,
    pub stats_readbacks: u64,
    pub densify_readbacks: u64,
    pub downloads: u64,
}

impl CudaBackend {
    /// Loss statistics are read back every this many steps by default.
    pub const DEFAULT_STATS_INTERVAL: u32 = 50;

    /// Uploads `g` to CUDA device `ordinal` with zero optimiser state.
    pub fn new(g: Gaussians, settings: BackendSettings, ordinal: usize) -> Result<Self> {
        let device =
            Device::new_cuda(ordinal).map_err(|e| dev_err(&format!("CUDA device {ordinal}"), e))?;
        Self::on_device(g, settings, &device)
    }

    /// As [`new`](Self::new), on an existing candle CUDA device.
    pub fn on_device(g: Gaussians, settings: BackendSettings, device: &Device) -> Result<Self> {
        g.check_consistent()
            .map_err(|e| FitError::Input(format!("initial Gaussians: {e}")))?;
        let dev = match device {
            Device::Cuda(d) => d.clone(),
            other => {
                return Err(FitError::Device(format!(
                    "not a CUDA device: {:?}",
                    other.location()
                )))
            }
        };
        let raster = CudaRasterizer::new(device)?;
        let stream = dev.cuda_stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        let n = g.len();
        let host = pack_params(&g);
        let params = wrap_f32(
            stream.clone_htod(&host).map_err(|e| dev_err("upload", e))?,
            &dev,
        );
        let zeros = |len: usize| {
            stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(|e| dev_err("alloc", e))
        };
        let ring_slots = (Self::DEFAULT_STATS_INTERVAL as usize + 1).max(64);
        let mut b = CudaBackend {
            m: zeros(host.len())?,
            v: zeros(host.len())?,
            grad_accum: zeros(n)?,
            denom: zeros(n)?,
            max_radii: zeros(n)?,
            ring: stream
                .alloc_zeros::<f64>(ring_slots * MAX_VIEWS_PER_SLOT * SUMS_PER_VIEW)
                .map_err(|e| dev_err("alloc", e))?,
            ring_slots,
            dev,
            stream,
            raster,
            n,
            sh_degree: g.sh_degree,
            params,
            adam_steps: [0; 6],
            settings,
            rng: Rng::fork(settings.seed, 4),
            targets: HashMap::new(),
            loss_scratch: Scratch::default(),
            pending: Vec::new(),
            steps: 0,
            stats_interval: Self::DEFAULT_STATS_INTERVAL,
            last_stats: StepStats::default(),
            history: Vec::new(),
            timings: StageTimings::default(),
            deferred: None,
            syncs: SyncCounts::default(),
        };
        b.set_stats_interval(Self::DEFAULT_STATS_INTERVAL);
        Ok(b)
    }

    /// Reads the loss statistics back every `every` steps (≥ 1; 1 = every
    /// step, for tests).
    pub fn set_stats_interval(&mut self, every: u32) {
        self.stats_interval = every.max(1);
        let want = (self.stats_interval as usize + 1).max(64);
        if want > self.ring_slots {
            // Flush first so that no pending slot is lost.
            let _ = self.read_stats();
            if let Ok(r) = self
                .stream
                .alloc_zeros::<f64>(want * MAX_VIEWS_PER_SLOT * SUMS_PER_VIEW)
            {
                self.ring = r;
                self.ring_slots = want;
            }
        }
    }

    /// Statistics of every step so far (complete after a readback, e.g.
    /// after [`FitBackend::latest_stats`]).
    pub fn history(&self) -> &[StepStats] {
        &self.history
    }

    pub fn sync_counts(&self) -> SyncCounts {
        self.syncs
    }

    /// The generator of the split samples (to replay a densification on the CPU).
    pub fn split_rng(&self) -> &Rng {
        &self.rng
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.dev.clone())
    }

    /// Downloads the Gaussians, the optimiser state and the densification
    /// statistics in the CPU backend's types.
    pub fn download_state(&mut self) -> Result<(Gaussians, Adam, DensifyState)> {
        self.check_deferred()?;
        let g = self.try_gaussians()?;
        let n = self.n;
        let rest = g.rest_coeffs() * 3;
        let mut adam = Adam::new(n, rest, self.settings.adam);
        let m = self
            .stream
            .clone_dtoh(&self.m)
            .map_err(|e| dev_err("download", e))?;
        let v = self
            .stream
            .clone_dtoh(&self.v)
            .map_err(|e| dev_err("download", e))?;
        let gm = unpack_params(
            &m[..n * row_floats(sh_coeffs_per_channel(self.sh_degree))],
            n,
            self.sh_degree,
        );
        let gv = unpack_params(
            &v[..n * row_floats(sh_coeffs_per_channel(self.sh_degree))],
            n,
            self.sh_degree,
        );
        for (grp, step) in Group::ALL.iter().zip(self.adam_steps) {
            let pick = |x: &Gaussians| -> Vec<f32> {
                match grp {
                    Group::Xyz => x.means.as_flattened().to_vec(),
                    Group::FDc => x.sh_dc.as_flattened().to_vec(),
                    Group::FRest => x.sh_rest.clone(),
                    Group::Opacity => x.opacity_logits.clone(),
                    Group::Scaling => x.log_scales.as_flattened().to_vec(),
                    Group::Rotation => x.rotations.as_flattened().to_vec(),
                }
            };
            let mm = adam.group_mut(*grp);
            mm.m = pick(&gm);
            mm.v = pick(&gv);
            mm.step = step;
        }
        let dl = |s: &CudaSlice<f32>| -> Result<Vec<f32>> {
            let mut v = self
                .stream
                .clone_dtoh(s)
                .map_err(|e| dev_err("download", e))?;
            v.truncate(n);
            Ok(v)
        };
        let state = DensifyState {
            grad_accum: dl(&self.grad_accum)?,
            denom: dl(&self.denom)?,
            max_radii: dl(&self.max_radii)?,
        };
        Ok((g, adam, state))
    }

    /// The Gaussians, or the device error.
    pub fn try_gaussians(&self) -> Result<Gaussians> {
        let host = self.params.to_vec1::<f32>()?;
        Ok(unpack_params(&host, self.n, self.sh_degree))
    }

    fn check_deferred(&mut self) -> Result<()> {
        match self.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn k(&self) -> usize {
        sh_coeffs_per_channel(self.sh_degree)
    }

    fn gaussian_tensors(&self) -> Result<GaussianTensors> {
        let n = self.n;
        let k = self.k();
        let p = &self.params;
        Ok(GaussianTensors {
            means: p.narrow(0, 0, 3 * n)?.reshape((n, 3))?,
            quats: p.narrow(0, 3 * n, 4 * n)?.reshape((n, 4))?,
            log_scales: p.narrow(0, 7 * n, 3 * n)?.reshape((n, 3))?,
            opacity_logits: p.narrow(0, 10 * n, n)?,
            sh: p.narrow(0, 11 * n, 3 * k * n)?.reshape((n, k, 3))?,
            sh_degree: self.sh_degree,
        })
    }

    fn target(&mut self, v: &BatchView<'_>, bg: [f32; 3]) -> Result<(u64, Option<u64>)> {
        let key = (v.id, bg.map(f32::to_bits));
        let (h, w) = (v.camera.height as usize, v.camera.width as usize);
        if !self.targets.contains_key(&key) {
            let dev = Device::Cuda(self.dev.clone());
            if v.target_rgb.len() != 3 * h * w || v.target_alpha.is_some_and(|a| a.len() != h * w) {
                return Err(FitError::Input(format!(
                    "view {}: image size does not match its camera",
                    v.id
                )));
            }
            let rgb = Tensor::from_slice(v.target_rgb, 3 * h * w, &dev)?;
            let alpha = v
                .target_alpha
                .map(|a| Tensor::from_slice(a, h * w, &dev))
                .transpose()?;
            self.targets.insert(key, (rgb, alpha));
        }
        let (rgb, alpha) = &self.targets[&key];
        Ok((
            tensor_ptr::<f32>(rgb, &self.stream)?,
            alpha
                .as_ref()
                .map(|a| tensor_ptr::<f32>(a, &self.stream))
                .transpose()?,
        ))
    }

    /// Copies the loss ring back and turns the pending steps into statistics.
    fn read_stats(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sums = self
            .stream
            .clone_dtoh(&self.ring)
            .map_err(|e| dev_err("stats readback", e))?;
        self.syncs.stats_readbacks += 1;
        let w = self.settings.weights;
        let lam = w.lambda_ssim as f64;
        for p in self.pending.drain(..) {
            let mut out = StepStats::default();
            let nv = p.views as f64;
            for vi in 0..p.views {
                let s =
                    &sums[(p.slot * MAX_VIEWS_PER_SLOT + vi) * SUMS_PER_VIEW..][..SUMS_PER_VIEW];
                let count = (3 * p.pixels) as f64;
                let l1 = s[0] / count;
                let mse = s[1] / count;
                let ssim = s[2] / count;
                let mut loss = (1.0 - lam) * l1 + lam * (1.0 - ssim);
                if p.has_alpha[vi] {
                    loss += w.lambda_alpha as f64 * (s[3] / p.pixels as f64);
                }
                out.loss += loss / nv;
                out.l1 += l1 / nv;
                out.ssim += ssim / nv;
                out.psnr += psnr(mse) / nv;
            }
            self.history.push(out);
            self.last_stats = out;
        }
        Ok(())
    }

    fn bound_stream(&self) -> Result<Arc<CudaStream>> {
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        Ok(stream)
    }

    fn render_options(&self, background: [f32; 3], sh_degree: u8) -> RenderOptions {
        RenderOptions {
            background,
            mode: self.settings.mode,
            sh_degree: Some(sh_degree.min(self.sh_degree)),
            ..Default::default()
        }
    }

    /// Enqueues the loss kernels of `views`, whose renders are images
    /// `first..first + views.len()` of `images`, each view's gradient
    /// multiplied by `grad_scale`, and records their sums as one pending
    /// step. Returns the gradients with respect to those renders: RGB
    /// `[V, H, W, 3]` and, when some view has an alpha term, alpha
    /// `[V, H, W]` (zero for the others).
    fn enqueue_view_losses(
        &mut self,
        images: &RenderedTensors,
        first: usize,
        views: &[BatchView<'_>],
        background: [f32; 3],
        grad_scale: f32,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let (_, h, w, _) = images.rgb.dims4()?;
        let c = views.len();
        let px = h * w;
        let weights = self.settings.weights;
        let want_alpha =
            weights.lambda_alpha > 0.0 && views.iter().any(|v| v.target_alpha.is_some());
        // Every view's kernel writes all of its RGB gradient.
        let mut grad_rgb =
            unsafe { stream.alloc::<f32>(c * 3 * px) }.map_err(|e| dev_err("alloc", e))?;
        let mut grad_alpha = if want_alpha {
            Some(
                stream
                    .alloc_zeros::<f32>(c * px)
                    .map_err(|e| dev_err("alloc", e))?,
            )
        } else {
            None
        };
        let scratch = self.loss_scratch.ensure(&stream, 11 * 3 * px)?;
        let rgb_ptr = tensor_ptr::<f32>(&images.rgb, &stream)? + (first * 3 * px * 4) as u64;
        let alpha_ptr = tensor_ptr::<f32>(&images.alpha, &stream)? + (first * px * 4) as u64;
        let grad_rgb_ptr = slice_ptr_mut(&mut grad_rgb, &stream);
        let grad_alpha_ptr = grad_alpha.as_mut().map(|g| slice_ptr_mut(g, &stream));
        if self.pending.len() >= self.ring_slots {
            self.read_stats()?;
        }
        let slot = self.steps as usize % self.ring_slots;
        let ring_ptr = slice_ptr_mut(&mut self.ring, &stream);
        let taps: Vec<f32> = gaussian_kernel::<f32>(SSIM_WINDOW, SSIM_SIGMA);
        let mut pend = PendingStep {
            slot,
            views: c,
            pixels: px,
            has_alpha: [false; MAX_VIEWS_PER_SLOT],
        };
        for (ci, v) in views.iter().enumerate() {
            let (trgb, talpha) = self.target(v, background)?;
            pend.has_alpha[ci] = talpha.is_some();
            let a = ffi::SffLossArgs {
                render_rgb: rgb_ptr + (ci * 3 * px * 4) as u64,
                render_alpha: alpha_ptr + (ci * px * 4) as u64,
                target_rgb: trgb,
                target_alpha: talpha.unwrap_or(0),
                width: w as c_int,
                height: h as c_int,
                lambda_ssim: weights.lambda_ssim,
                // As view_loss: lambda_alpha * grad_scale / n.
                alpha_grad: weights.lambda_alpha * grad_scale / px as f32,
                want_alpha_grad: (talpha.is_some() && grad_alpha_ptr.is_some()) as c_int,
                grad_scale,
                l1_inv: 1.0 / (3 * px) as f32,
                ssim_inv: (1.0 / (px * 3) as f64) as f32,
                c1: (0.01f64 * 0.01) as f32,
                c2: (0.03f64 * 0.03) as f32,
                taps: taps.clone().try_into().expect("11 taps"),
                grad_rgb: grad_rgb_ptr + (ci * 3 * px * 4) as u64,
                grad_alpha: grad_alpha_ptr.map_or(0, |g| g + (ci * px * 4) as u64),
                sums: ring_ptr + ((slot * MAX_VIEWS_PER_SLOT + ci) * SUMS_PER_VIEW * 8) as u64,
                scratch,
            };
            check("loss", unsafe { ffi::sff_view_loss(&a, cs) })?;
        }
        self.pending.push(pend);
        Ok((
            wrap_f32(grad_rgb, &self.dev).reshape((c, h, w, 3))?,
            grad_alpha
                .map(|g| wrap_f32(g, &self.dev).reshape((c, h, w)))
                .transpose()?,
        ))
    }

    /// Enqueues the fused Adam step over the six groups at `lrs`.
    fn enqueue_adam(&mut self, grads: &ParamGrads, lrs: &LearningRates) -> Result<()> {
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let cfg = self.settings.adam;
        let mut group = [ffi::SffAdamGroup::default(); 6];
        for (i, grp) in Group::ALL.iter().enumerate() {
            self.adam_steps[i] += 1;
            let (step_size, bc2_sqrt) = adam_step_constants(grp.lr(lrs), self.adam_steps[i], &cfg);
            group[i] = ffi::SffAdamGroup {
                step_size,
                bc2_sqrt,
            };
        }
        let params_ptr = tensor_ptr::<f32>(&self.params, &stream)?;
        let a = ffi::SffAdamArgs {
            params: params_ptr,
            m: slice_ptr_mut(&mut self.m, &stream),
            v: slice_ptr_mut(&mut self.v, &stream),
            grad_means: tensor_ptr::<f32>(&grads.means, &stream)?,
            grad_quats: tensor_ptr::<f32>(&grads.quats, &stream)?,
            grad_scales: tensor_ptr::<f32>(&grads.log_scales, &stream)?,
            grad_opacity: tensor_ptr::<f32>(&grads.opacity_logits, &stream)?,
            grad_sh: tensor_ptr::<f32>(&grads.sh, &stream)?,
            n: self.n as i64,
            sh_coeffs: self.k() as c_int,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            group,
        };
        check("adam", unsafe { ffi::sff_adam(&a, cs) })
    }

    /// Counts a finished step; reads the statistics back every
    /// `stats_interval` steps.
    fn finish_step(&mut self) -> Result<()> {
        self.steps += 1;
        #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87
        if self.steps % self.stats_interval == 0 {
            self.read_stats()?;
        }
        Ok(())
    }

    fn try_step(&mut self, views: &[BatchView<'_>], p: &StepParams) -> Result<StepStats> {
        self.check_deferred()?;
        if views.is_empty() {
            return Err(FitError::Input("a step needs at least one view".into()));
        }
        if views.len() > MAX_VIEWS_PER_SLOT {
            return Err(FitError::Input(format!(
                "the CUDA backend takes at most {MAX_VIEWS_PER_SLOT} views per step, got {}",
                views.len()
            )));
        }
        let stream = self.bound_stream()?;
        let cs = stream.cu_stream() as *mut c_void;
        let t0 = Instant::now();
        let n = self.n;
        let cameras: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
        let (w, h) = (cameras[0].width as usize, cameras[0].height as usize);
        if cameras
            .iter()
            .any(|c| (c.width as usize, c.height as usize) != (w, h))
        {
            return Err(FitError::Input(
                "the CUDA backend renders the views of one step in one call: they must share one size".into(),
            ));
        }
        let opts = self.render_options(p.background, p.sh_degree);
        let gt = self.gaussian_tensors()?;
        let (images, state) = self.raster.forward(&gt, &cameras, &opts)?;
        self.syncs.forward += 1;
        let t1 = Instant::now();

        // Loss and its image gradient, per view.
        let c = views.len();
        let (grad_rgb, grad_alpha) =
            self.enqueue_view_losses(&images, 0, views, p.background, 1.0 / c as f32)?;
        let image_grads = ImageGradTensors {
            rgb: Some(grad_rgb),
            alpha: grad_alpha,
            depth: None,
        };
        let t2 = Instant::now();

        let grads: GradientTensors =
            self.raster
                .backward(&gt, &cameras, &opts, &state, &image_grads)?;
        drop(state);
        let t3 = Instant::now();

        if p.accumulate_stats {
            let a = ffi::SffAccumArgs {
                grad_norm: tensor_ptr::<f32>(&grads.stats.mean2d_grad_norm, &stream)?,
                visible: tensor_ptr::<u32>(&grads.stats.visible_count, &stream)?,
                max_radius: tensor_ptr::<f32>(&grads.stats.max_radius_px, &stream)?,
                grad_accum: slice_ptr_mut(&mut self.grad_accum, &stream),
                denom: slice_ptr_mut(&mut self.denom, &stream),
                max_radii: slice_ptr_mut(&mut self.max_radii, &stream),
                n: n as i64,
                scale: ndc_scale(w as u32, h as u32) * c as f32,
            };
            check("statistics", unsafe { ffi::sff_accumulate_stats(&a, cs) })?;
        }

        self.enqueue_adam(&ParamGrads::of(grads), &p.lrs)?;
        self.finish_step()?;
        let t4 = Instant::now();
        self.timings.forward += t1 - t0;
        self.timings.loss += t2 - t1;
        self.timings.backward += t3 - t2;
        self.timings.optimizer += t4 - t3;
        Ok(self.last_stats)
    }

    /// See [`FitBackend::guided_step`]. The guide cameras and the views are
    /// rendered in one rasterizer call when they share one size, else in
    /// one call each (one more host synchronisation) with the two gradients
    /// summed.
    fn try_guided_step(
        &mut self,
        guide_cameras: &[Camera],
        views: &[BatchView<'_>],
        p: &GuidedParams,
        guide: &mut Guide<'_>,
    ) -> Result<Option<StepStats>> {
        self.check_deferred()?;
        let (w, h) = guide_size(guide_cameras)?;
        if views.len() > MAX_VIEWS_PER_SLOT {
            return Err(FitError::Input(format!(
                "the CUDA backend takes at most {MAX_VIEWS_PER_SLOT} views per step, got {}",
                views.len()
            )));
        }
        let view_size = views
            .first()
            .map(|v| (v.camera.width as usize, v.camera.height as usize));
        if views
            .iter()
            .any(|v| Some((v.camera.width as usize, v.camera.height as usize)) != view_size)
        {
            return Err(FitError::Input(
                "the CUDA backend renders the views of one step in one call: they must share one size".into(),
            ));
        }
        self.bound_stream()?;
        let t0 = Instant::now();
        let opts = self.render_options(p.background, p.sh_degree);
        let gt = self.gaussian_tensors()?;
        let ng = guide_cameras.len();
        let shared = view_size.is_none_or(|s| s == (w, h));
        let mut cameras = guide_cameras.to_vec();
        if shared {
            cameras.extend(views.iter().map(|v| *v.camera));
        }
        let (images, state) = self.raster.forward(&gt, &cameras, &opts)?;
        self.syncs.forward += 1;
        let separate = if shared {
            None
        } else {
            let vc: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
            let (vi, vs) = self.raster.forward(&gt, &vc, &opts)?;
            self.syncs.forward += 1;
            Some((vc, vi, vs))
        };
        // [C, H, W, 3] → the guide's [n, 3, H, W]: a copy, so the guide's
        // graph holds no view of the frame buffer the backward reads.
        let renders = images
            .rgb
            .narrow(0, 0, ng)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let t1 = Instant::now();

        let grad = guide(&renders).map_err(FitError::Guide)?;
        drop(renders);
        let t_guide = Instant::now();
        check_guide_gradient(&grad, ng, w, h)?;
        // Non-finite entries become 0 (NaN fails `|x| < ∞` as well), then the
        // rasterizer's [C, H, W, 3] layout.
        let grad = grad.to_device(&self.device())?.to_dtype(DType::F32)?;
        let finite = grad.abs()?.lt(f64::INFINITY)?;
        let grad = finite
            .where_cond(&grad, &grad.zeros_like()?)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        // The views' losses only once the guide has succeeded: a failed guide
        // leaves no pending statistics behind.
        let view_grads = match &separate {
            _ if views.is_empty() => None,
            None => Some(self.enqueue_view_losses(
                &images,
                ng,
                views,
                p.background,
                p.view_grad_scale,
            )?),
            Some((_, vi, _)) => {
                Some(self.enqueue_view_losses(vi, 0, views, p.background, p.view_grad_scale)?)
            }
        };
        let t3 = Instant::now();

        let grads = match (separate, view_grads) {
            (Some((vc, _, vs)), Some((vrgb, valpha))) => {
                let only_rgb = ImageGradTensors {
                    rgb: Some(grad),
                    alpha: None,
                    depth: None,
                };
                let a = self
                    .raster
                    .backward(&gt, &cameras, &opts, &state, &only_rgb)?;
                drop(state);
                let view_image_grads = ImageGradTensors {
                    rgb: Some(vrgb),
                    alpha: valpha,
                    depth: None,
                };
                let b = self
                    .raster
                    .backward(&gt, &vc, &opts, &vs, &view_image_grads)?;
                ParamGrads::of(a).add(&ParamGrads::of(b))?
            }
            (_, view_grads) => {
                // One call: the guide's rows first, then the views'; the
                // guide cameras have no alpha gradient.
                let (rgb, alpha) = match view_grads {
                    Some((vrgb, valpha)) => {
                        let alpha = match valpha {
                            Some(a) => Some(Tensor::cat(
                                &[&Tensor::zeros((ng, h, w), DType::F32, &self.device())?, &a],
                                0,
                            )?),
                            None => None,
                        };
                        (Tensor::cat(&[&grad, &vrgb], 0)?, alpha)
                    }
                    None => (grad, None),
                };
                let image_grads = ImageGradTensors {
                    rgb: Some(rgb),
                    alpha,
                    depth: None,
                };
                let g = self
                    .raster
                    .backward(&gt, &cameras, &opts, &state, &image_grads)?;
                drop(state);
                ParamGrads::of(g)
            }
        };
        let t4 = Instant::now();

        self.enqueue_adam(&grads, &p.lrs)?;
        drop(grads);
        self.finish_step()?;
        let t5 = Instant::now();
        self.timings.forward += t1 - t0;
        // The guide's time counts towards no stage.
        self.timings.loss += t3 - t_guide;
        self.timings.backward += t4 - t3;
        self.timings.optimizer += t5 - t4;
        Ok((!views.is_empty()).then_some(self.last_stats))
    }

    fn try_densify(&mut self, p: &DensifyParams) -> Result<DensifyReport> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        let cs = stream.cu_stream() as *mut c_void;
        let n0 = self.n;
        let k = self.k();
        if n0 == 0 {
            return Ok(DensifyReport::default());
        }
        const SPLIT_N: usize = 2;
        let shrink = (0.8 * SPLIT_N as f32).ln();
        let mut flags = unsafe { stream.alloc::<i32>(4 * n0) }.map_err(|e| dev_err("alloc", e))?;
        let mut offsets =
            unsafe { stream.alloc::<i32>(4 * n0) }.map_err(|e| dev_err("alloc", e))?;
        let mut totals = stream
            .alloc_zeros::<i32>(8)
            .map_err(|e| dev_err("alloc", e))?;
        let mut host = [0i32; 8];
        let params_ptr = tensor_ptr::<f32>(&self.params, &stream)?;
        let a = ffi::SffClassifyArgs {
            params: params_ptr,
            grad_accum: slice_ptr(&self.grad_accum, &stream),
            denom: slice_ptr(&self.denom, &stream),
            max_radii: slice_ptr(&self.max_radii, &stream),
            n: n0 as i64,
            sh_coeffs: k as c_int,
            grad_threshold: p.grad_threshold,
            size_limit: p.percent_dense * p.extent,
            min_opacity: p.min_opacity,
            use_screen_size: p.max_screen_size.is_some() as c_int,
            max_screen_size: p.max_screen_size.unwrap_or(0.0),
            max_world: 0.1 * p.extent,
            shrink,
            flags: slice_ptr_mut(&mut flags, &stream),
            offsets: slice_ptr_mut(&mut offsets, &stream),
            totals: slice_ptr_mut(&mut totals, &stream),
            totals_host: host.as_mut_ptr(),
        };
        check("densify classify", unsafe {
            ffi::sff_densify_classify(&a, cs)
        })?;
        self.syncs.densify_readbacks += 1;
        // The stream is idle here: read the loss ring too.
        self.read_stats()?;
        let [kept_orig, kept_clone, kept_child, splits, clones, ..] = host.map(|x| x as usize);
        let after = kept_orig + kept_clone + 2 * kept_child;
        // The CPU's split samples, drawn in its order.
        let normals: Vec<f32> = (0..SPLIT_N * splits * 3)
            .map(|_| self.rng.normal() as f32)
            .collect();
        let normals_dev = stream
            .clone_htod(if normals.is_empty() {
                &[0.0f32][..]
            } else {
                &normals[..]
            })
            .map_err(|e| dev_err("upload", e))?;
        let rf = row_floats(k);
        let mut params_new =
            unsafe { stream.alloc::<f32>((after * rf).max(1)) }.map_err(|e| dev_err("alloc", e))?;
        let mut m_new = stream
            .alloc_zeros::<f32>((after * rf).max(1))
            .map_err(|e| dev_err("alloc", e))?;
        let mut v_new = stream
            .alloc_zeros::<f32>((after * rf).max(1))
            .map_err(|e| dev_err("alloc", e))?;
        let sa = ffi::SffScatterArgs {
            params: params_ptr,
            m: slice_ptr(&self.m, &stream),
            v: slice_ptr(&self.v, &stream),
            flags: slice_ptr(&flags, &stream),
            offsets: slice_ptr(&offsets, &stream),
            normals: slice_ptr(&normals_dev, &stream),
            n: n0 as i64,
            n_new: after as i64,
            sh_coeffs: k as c_int,
            kept_orig: kept_orig as c_int,
            kept_clone: kept_clone as c_int,
            kept_child: kept_child as c_int,
            splits: splits as c_int,
            shrink,
            params_new: slice_ptr_mut(&mut params_new, &stream),
            m_new: slice_ptr_mut(&mut m_new, &stream),
            v_new: slice_ptr_mut(&mut v_new, &stream),
        };
        check("densify scatter", unsafe {
            ffi::sff_densify_scatter(&sa, cs)
        })?;
        let params = wrap_f32(params_new, &self.dev);
        self.params = if after == 0 {
            params.narrow(0, 0, 0)?
        } else {
            params
        };
        self.m = m_new;
        self.v = v_new;
        let zeros = |len: usize| {
            stream
                .alloc_zeros::<f32>(len.max(1))
                .map_err(|e| dev_err("alloc", e))
        };
        self.grad_accum = zeros(after)?;
        self.denom = zeros(after)?;
        self.max_radii = zeros(after)?;
        self.n = after;
        let total = n0 + clones + SPLIT_N * splits;
        Ok(DensifyReport {
            before: n0,
            cloned: clones,
            split: splits,
            pruned: total - after - splits,
            after,
        })
    }

    fn try_reset_optimizer(&mut self) -> Result<()> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        stream
            .memset_zeros(&mut self.m)
            .map_err(|e| dev_err("reset optimizer", e))?;
        stream
            .memset_zeros(&mut self.v)
            .map_err(|e| dev_err("reset optimizer", e))?;
        self.adam_steps = [0; 6];
        Ok(())
    }

    fn try_reset_opacity(&mut self) -> Result<()> {
        self.check_deferred()?;
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let n = self.n;
        if n == 0 {
            return Ok(());
        }
        let params_ptr = tensor_ptr::<f32>(&self.params, &stream)?;
        let off = (10 * n * 4) as u64;
        let a = ffi::SffResetOpacityArgs {
            opacity: params_ptr + off,
            m: slice_ptr_mut(&mut self.m, &stream) + off,
            v: slice_ptr_mut(&mut self.v, &stream) + off,
            n: n as i64,
            cap: logit(0.01),
        };
        check("reset opacity", unsafe { ffi::sff_reset_opacity(&a, cs) })
    }
}

impl FitBackend for CudaBackend {
    fn num_gaussians(&self) -> usize {
        self.n
    }

    fn step(&mut self, views: &[BatchView<'_>], params: &StepParams) -> Result<StepStats> {
        self.try_step(views, params)
    }

    fn guided_step(
        &mut self,
        guide_cameras: &[Camera],
        views: &[BatchView<'_>],
        params: &GuidedParams,
        guide: &mut Guide<'_>,
    ) -> Result<Option<StepStats>> {
        self.try_guided_step(guide_cameras, views, params, guide)
    }

    /// Errors (of the device) are deferred to the next step.
    fn reset_optimizer(&mut self) {
        if let Err(e) = self.try_reset_optimizer() {
            self.deferred = Some(e);
        }
    }

    /// Errors (of the device) are deferred to the next [`step`](Self::step).
    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport {
        let t0 = Instant::now();
        let r = match self.try_densify(params) {
            Ok(r) => r,
            Err(e) => {
                self.deferred = Some(e);
                DensifyReport {
                    before: self.n,
                    after: self.n,
                    ..Default::default()
                }
            }
        };
        self.timings.densify += t0.elapsed();
        r
    }

    fn reset_opacity(&mut self) {
        if let Err(e) = self.try_reset_opacity() {
            self.deferred = Some(e);
        }
    }

    /// Panics on a device error (use [`CudaBackend::try_gaussians`] to handle it).
    fn gaussians(&self) -> Gaussians {
        self.try_gaussians()
            .expect("downloading the Gaussians from the GPU")
    }

    fn timings(&self) -> StageTimings {
        self.timings
    }

    fn latest_stats(&mut self) -> Option<StepStats> {
        self.read_stats().ok()?;
        Some(self.last_stats)
    }
}

/// One view's loss and image gradient on the GPU, from host images (for
/// parity checks against [`crate::loss::view_loss`]): `(loss terms as
/// (l1, ssim, mse, alpha_l1), grad_rgb, grad_alpha)`.
#[doc(hidden)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn view_loss_on_gpu(
    device: &Device,
    render_rgb: &[f32],
    render_alpha: &[f32],
    gt_rgb: &[f32],
    gt_alpha: Option<&[f32]>,
    width: usize,
    height: usize,
    weights: &crate::loss::LossWeights,
    grad_scale: f32,
) -> Result<((f64, f64, f64, f64), Vec<f32>, Option<Vec<f32>>)> {
    let dev = match device {
        Device::Cuda(d) => d.clone(),
        _ => return Err(FitError::Device("not a CUDA device".into())),
    };
    let stream = dev.cuda_stream();
    let cs = stream.cu_stream() as *mut c_void;
    let px = width * height;
    let up = |v: &[f32]| stream.clone_htod(v).map_err(|e| dev_err("upload", e));
    let rr = up(render_rgb)?;
    let ra = up(render_alpha)?;
    let tr = up(gt_rgb)?;
    let ta = gt_alpha.map(up).transpose()?;
    let want_alpha = gt_alpha.is_some() && weights.lambda_alpha > 0.0;
    let mut g_rgb = stream
        .alloc_zeros::<f32>(3 * px)
        .map_err(|e| dev_err("alloc", e))?;
    let mut g_alpha = stream
        .alloc_zeros::<f32>(px)
        .map_err(|e| dev_err("alloc", e))?;
    let mut sums = stream
        .alloc_zeros::<f64>(4)
        .map_err(|e| dev_err("alloc", e))?;
    let mut scratch = Scratch::default();
    let a = ffi::SffLossArgs {
        render_rgb: slice_ptr(&rr, &stream),
        render_alpha: slice_ptr(&ra, &stream),
        target_rgb: slice_ptr(&tr, &stream),
        target_alpha: ta.as_ref().map_or(0, |t| slice_ptr(t, &stream)),
        width: width as c_int,
        height: height as c_int,
        lambda_ssim: weights.lambda_ssim,
        alpha_grad: weights.lambda_alpha * grad_scale / px as f32,
        want_alpha_grad: want_alpha as c_int,
        grad_scale,
        l1_inv: 1.0 / (3 * px) as f32,
        ssim_inv: (1.0 / (px * 3) as f64) as f32,
        c1: (0.01f64 * 0.01) as f32,
        c2: (0.03f64 * 0.03) as f32,
        taps: gaussian_kernel::<f32>(SSIM_WINDOW, SSIM_SIGMA)
            .try_into()
            .expect("11 taps"),
        grad_rgb: slice_ptr_mut(&mut g_rgb, &stream),
        grad_alpha: if want_alpha {
            slice_ptr_mut(&mut g_alpha, &stream)
        } else {
            0
        },
        sums: slice_ptr_mut(&mut sums, &stream),
        scratch: scratch.ensure(&stream, 11 * 3 * px)?,
    };
    check("loss", unsafe { ffi::sff_view_loss(&a, cs) })?;
    let s = stream
        .clone_dtoh(&sums)
        .map_err(|e| dev_err("download", e))?;
    let g = stream
        .clone_dtoh(&g_rgb)
        .map_err(|e| dev_err("download", e))?;
    let ga = if want_alpha {
        Some(
            stream
                .clone_dtoh(&g_alpha)
                .map_err(|e| dev_err("download", e))?,
        )
    } else {
        None
    };
    let count = (3 * px) as f64;
    Ok((
        (s[0] / count, s[2] / count, s[1] / count, s[3] / px as f64),
        g,
        ga,
    ))
}
