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

mod buffers;
mod densify;
mod ffi;
mod step;

pub use step::view_loss_on_gpu;

use buffers::{pack_params, row_floats, ParamGrads};

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Arc;
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream};
use candle_core::{CudaDevice, DType, Device, Tensor};
use splatforge_cuda::{
    alloc, slice_address, slice_address_mut, tensor_address, wrap_slice, Scratch,
};
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
    Ok(splatforge_cuda::check(stage, code)?)
}

impl From<splatforge_cuda::CudaError> for FitError {
    fn from(e: splatforge_cuda::CudaError) -> Self {
        FitError::Device(e.to_string())
    }
}

impl From<splatforge_render::cuda::CudaRenderError> for FitError {
    fn from(e: splatforge_render::cuda::CudaRenderError) -> Self {
        match e {
            splatforge_render::cuda::CudaRenderError::Render(r) => FitError::Render(r),
            e => FitError::Device(e.to_string()),
        }
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
        let params = wrap_slice(
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

    pub(super) fn check_deferred(&mut self) -> Result<()> {
        match self.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(super) fn k(&self) -> usize {
        sh_coeffs_per_channel(self.sh_degree)
    }

    pub(super) fn bound_stream(&self) -> Result<Arc<CudaStream>> {
        let stream = self.stream.clone();
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| dev_err("bind context", e))?;
        Ok(stream)
    }

    pub(super) fn render_options(&self, background: [f32; 3], sh_degree: u8) -> RenderOptions {
        RenderOptions {
            background,
            mode: self.settings.mode,
            sh_degree: Some(sh_degree.min(self.sh_degree)),
            ..Default::default()
        }
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
