//! CPU reference differentiable rasterizer for 3D Gaussian splats, forward
//! and backward, following gsplat's pipeline stage by stage:
//!
//! | stage | module | what |
//! |---|---|---|
//! | 0 | [`camera`] | pinhole cameras, orbit rigs (validator, MVDream) |
//! | 1 | [`project`] (+ [`sh`]) | EWA projection, culling, SH colour |
//! | 2 | [`tiles`] | 16×16 tile binning, per-tile depth sort |
//! | 3 | [`rasterize`] | front-to-back alpha compositing |
//!
//! The entry points are [`rasterize_forward`] and [`rasterize_backward`]
//! (also behind the [`Rasterizer`] trait, so that a GPU backend can offer the
//! same API). Everything is generic over the scalar ([`Real`]: `f32` for
//! production, `f64` for gradient checks).
//!
//! # Conventions
//! - Inputs are **pre-activation**, exactly as [`splatforge_splat::Gaussians`]:
//!   world-space means; wxyz quaternions (normalised inside, gradients are for
//!   the raw values); natural-log scales; opacity logits; SH coefficients laid
//!   out `[gaussian][coefficient][channel]`, DC first (see [`pack_sh`]).
//! - Cameras: OpenCV axes, world Y-up, pixel centres at `+0.5` (see [`camera`]).
//! - Images are row-major: `rgb[(y·W + x)·3 + c]`, `alpha[y·W + x]`,
//!   `depth[y·W + x]`. `rgb = Σ wᵢ·rgbᵢ + T·background` is not clamped
//!   (it stays in [0, 1] when colours and background do). `alpha = 1 − T`.
//!   `depth` is the accumulated camera-space depth `Σ wᵢ·zᵢ` in scene units,
//!   or with [`RenderOptions::normalize_depth`] the expected depth
//!   `Σ wᵢ·zᵢ / max(alpha, 1e-10)` (0 where nothing was drawn).
//! - Gradients returned have the shapes of the inputs; each is the gradient
//!   of the scalar loss whose per-pixel gradients were passed in.
//!
//! # Bad input
//! Wrong shapes, unusable cameras, resolutions beyond [`MAX_IMAGE_SIDE`] per
//! side or [`MAX_PIXELS_PER_CALL`] per call, and too many tile intersections
//! are [`RenderError`]s. Bad *values* in individual Gaussians (NaN or infinite
//! means, zero/NaN quaternions, NaN opacity, NaN/`+inf` log-scales, NaN SH)
//! only cull those Gaussians, which then get zero gradient; a Gaussian whose
//! centre is nearer than the camera's `near` plane (e.g. the camera is inside
//! it) is culled for that camera. Images are always finite.

// Index loops mirror the maths in the numeric kernels; negated comparisons
// are deliberate so that NaN takes the rejecting branch.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

pub mod camera;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod project;
pub mod rasterize;
pub mod real;
pub mod sh;
pub mod tiles;

use rayon::prelude::*;
use splatforge_splat::sh::MAX_SH_DEGREE;
use splatforge_splat::{sh_coeffs_per_channel, Gaussians};

pub use camera::{Camera, MAX_IMAGE_SIDE};
pub use error::RenderError;
use project::{
    project_gaussian, project_gaussian_backward, CameraParams, GaussianRef, ParamGrad,
    ProjectSettings, Projected,
};
use rasterize::{rasterize_backward_image, rasterize_forward_image, PixelGrads, RasterState};
pub use real::Real;
use tiles::{bin_gaussians, TileBins, TileGrid};

/// Largest total number of pixels over all cameras of one call (16384²).
pub const MAX_PIXELS_PER_CALL: usize = 16384 * 16384;
/// Default cap on (tile, Gaussian) pairs per camera (≈ 3 GiB of sort keys).
pub const DEFAULT_MAX_INTERSECTIONS: usize = 1 << 28;

/// How screen-space footprints are filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RenderMode {
    /// 3DGS: `cov2d + eps2d·I`, opacity unchanged.
    #[default]
    Classic,
    /// gsplat "antialiased": as classic, and the opacity is multiplied by
    /// `sqrt(det(cov2d) / det(cov2d + eps2d·I))` so that a splat's total
    /// energy does not grow when it shrinks below a pixel.
    Antialiased,
}

/// Options of one render call (shared by forward and backward).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Colour composited behind the splats (`rgb += T_final · background`).
    pub background: [f32; 3],
    pub mode: RenderMode,
    /// Low-pass filter added to the 2D covariance diagonal, pixels² (0.3).
    pub eps2d: f32,
    /// Divide the depth output by alpha (expected depth) instead of
    /// returning the accumulated depth.
    pub normalize_depth: bool,
    /// Evaluate SH only up to this degree (≤ the stored degree); `None` =
    /// all stored. Gradients of unused coefficients are zero.
    pub sh_degree: Option<u8>,
    /// Gaussians whose screen radius is ≤ this (pixels) are culled (0).
    pub radius_clip: f32,
    /// Per-camera cap on tile intersections; beyond it the call fails.
    pub max_intersections: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            background: [0.0; 3],
            mode: RenderMode::Classic,
            eps2d: 0.3,
            normalize_depth: false,
            sh_degree: None,
            radius_clip: 0.0,
            max_intersections: DEFAULT_MAX_INTERSECTIONS,
        }
    }
}

impl RenderOptions {
    fn validate(&self) -> Result<(), RenderError> {
        let bad = |m: String| Err(RenderError::InvalidOptions(m));
        if !self.background.iter().all(|v| v.is_finite()) {
            return bad(format!(
                "background must be finite, got {:?}",
                self.background
            ));
        }
        if !(self.eps2d.is_finite() && self.eps2d >= 0.0) {
            return bad(format!("eps2d must be finite and ≥ 0, got {}", self.eps2d));
        }
        if !self.radius_clip.is_finite() {
            return bad(format!(
                "radius_clip must be finite, got {}",
                self.radius_clip
            ));
        }
        if let Some(d) = self.sh_degree {
            if d > MAX_SH_DEGREE {
                return bad(format!("sh_degree {d} is not supported (0 to 3)"));
            }
        }
        Ok(())
    }
}

/// Borrowed Gaussian parameters (pre-activation; see the crate docs).
#[derive(Debug, Clone, Copy)]
pub struct GaussianParams<'a, F = f32> {
    /// World-space centres.
    pub means: &'a [[F; 3]],
    /// Rotations, wxyz, any non-zero norm.
    pub quats: &'a [[F; 4]],
    /// Natural logs of the three standard deviations (scene units).
    pub log_scales: &'a [[F; 3]],
    /// `sigmoid(logit)` is the opacity.
    pub opacity_logits: &'a [F],
    /// `[gaussian][coefficient][channel]`, `sh_coeffs_per_channel(sh_degree)`
    /// coefficients per Gaussian, DC first.
    pub sh: &'a [F],
    /// 0 to 3.
    pub sh_degree: u8,
}

impl<'a, F: Real> GaussianParams<'a, F> {
    /// Number of Gaussians.
    pub fn len(&self) -> usize {
        self.means.len()
    }

    pub fn is_empty(&self) -> bool {
        self.means.is_empty()
    }

    /// SH values per Gaussian (`3 · sh_coeffs_per_channel(sh_degree)`).
    pub fn sh_stride(&self) -> usize {
        sh_coeffs_per_channel(self.sh_degree) * 3
    }

    /// Checks that the arrays agree and the degree is supported.
    pub fn validate(&self) -> Result<(), RenderError> {
        let bad = |m: String| Err(RenderError::InvalidParams(m));
        if self.sh_degree > MAX_SH_DEGREE {
            return bad(format!(
                "SH degree {} is not supported (0 to 3)",
                self.sh_degree
            ));
        }
        let n = self.len();
        if n > u32::MAX as usize {
            return bad(format!("{n} Gaussians exceed the 2^32 limit"));
        }
        for (name, len) in [
            ("quats", self.quats.len()),
            ("log_scales", self.log_scales.len()),
            ("opacity_logits", self.opacity_logits.len()),
        ] {
            if len != n {
                return bad(format!("{name} has {len} entries but there are {n} means"));
            }
        }
        if self.sh.len() != n * self.sh_stride() {
            return bad(format!(
                "sh has {} values, expected {} for {n} Gaussians of degree {}",
                self.sh.len(),
                n * self.sh_stride(),
                self.sh_degree
            ));
        }
        Ok(())
    }

    /// Gaussian `i`.
    pub fn gaussian(&self, i: usize) -> GaussianRef<'a, F> {
        let k = self.sh_stride();
        GaussianRef {
            mean: self.means[i],
            quat: self.quats[i],
            log_scale: self.log_scales[i],
            opacity_logit: self.opacity_logits[i],
            sh: &self.sh[i * k..(i + 1) * k],
        }
    }
}

impl<'a> GaussianParams<'a, f32> {
    /// Borrows a [`Gaussians`]; `sh` must be [`pack_sh`]`(g)`.
    pub fn from_gaussians(g: &'a Gaussians, sh: &'a [f32]) -> Self {
        GaussianParams {
            means: &g.means,
            quats: &g.rotations,
            log_scales: &g.log_scales,
            opacity_logits: &g.opacity_logits,
            sh,
            sh_degree: g.sh_degree,
        }
    }
}

/// Concatenates a [`Gaussians`]' `sh_dc` and `sh_rest` into the
/// `[gaussian][coefficient][channel]` layout of [`GaussianParams::sh`].
pub fn pack_sh(g: &Gaussians) -> Vec<f32> {
    let rest = g.rest_coeffs() * 3;
    let mut out = Vec::with_capacity(g.len() * (rest + 3));
    for i in 0..g.len() {
        out.extend_from_slice(&g.sh_dc[i]);
        if rest > 0 {
            out.extend_from_slice(&g.sh_rest[i * rest..(i + 1) * rest]);
        }
    }
    out
}

/// Inverse of [`pack_sh`]: splits packed SH (values or gradients) into the
/// DC term and the rest, as [`Gaussians`] stores them.
pub fn split_sh<F: Real>(sh: &[F], sh_degree: u8) -> (Vec<[F; 3]>, Vec<F>) {
    let k = sh_coeffs_per_channel(sh_degree) * 3;
    let n = sh.len() / k;
    let mut dc = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(n * (k - 3));
    for chunk in sh.chunks_exact(k) {
        dc.push([chunk[0], chunk[1], chunk[2]]);
        rest.extend_from_slice(&chunk[3..]);
    }
    (dc, rest)
}

/// Owned parameter buffers, e.g. a trainer's state or a test scene.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GaussianBuffers<F = f32> {
    pub means: Vec<[F; 3]>,
    pub quats: Vec<[F; 4]>,
    pub log_scales: Vec<[F; 3]>,
    pub opacity_logits: Vec<F>,
    /// Packed as [`GaussianParams::sh`].
    pub sh: Vec<F>,
    pub sh_degree: u8,
}

impl<F: Real> GaussianBuffers<F> {
    /// Borrows the buffers as [`GaussianParams`].
    pub fn params(&self) -> GaussianParams<'_, F> {
        GaussianParams {
            means: &self.means,
            quats: &self.quats,
            log_scales: &self.log_scales,
            opacity_logits: &self.opacity_logits,
            sh: &self.sh,
            sh_degree: self.sh_degree,
        }
    }

    /// Converts the scalar type.
    pub fn cast<G: Real>(&self) -> GaussianBuffers<G> {
        let cv = |v: F| G::from_f64(v.to_f64());
        GaussianBuffers {
            means: self.means.iter().map(|m| m.map(cv)).collect(),
            quats: self.quats.iter().map(|m| m.map(cv)).collect(),
            log_scales: self.log_scales.iter().map(|m| m.map(cv)).collect(),
            opacity_logits: self.opacity_logits.iter().map(|&v| cv(v)).collect(),
            sh: self.sh.iter().map(|&v| cv(v)).collect(),
            sh_degree: self.sh_degree,
        }
    }
}

impl From<&Gaussians> for GaussianBuffers<f32> {
    fn from(g: &Gaussians) -> Self {
        GaussianBuffers {
            means: g.means.clone(),
            quats: g.rotations.clone(),
            log_scales: g.log_scales.clone(),
            opacity_logits: g.opacity_logits.clone(),
            sh: pack_sh(g),
            sh_degree: g.sh_degree,
        }
    }
}

impl GaussianBuffers<f32> {
    /// Back to the data model.
    pub fn to_gaussians(&self) -> Gaussians {
        let (sh_dc, sh_rest) = split_sh(&self.sh, self.sh_degree);
        Gaussians {
            means: self.means.clone(),
            log_scales: self.log_scales.clone(),
            rotations: self.quats.clone(),
            opacity_logits: self.opacity_logits.clone(),
            sh_dc,
            sh_rest,
            sh_degree: self.sh_degree,
        }
    }
}

/// One camera's render (see the crate docs for layout and meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedImage<F = f32> {
    pub width: u32,
    pub height: u32,
    /// `[y][x][channel]`, linear, not clamped.
    pub rgb: Vec<F>,
    /// `[y][x]`, `1 − final transmittance`.
    pub alpha: Vec<F>,
    /// `[y][x]`, accumulated or expected camera-space depth (scene units).
    pub depth: Vec<F>,
}

impl<F: Real> RenderedImage<F> {
    /// RGB of pixel `(x, y)`.
    pub fn pixel(&self, x: u32, y: u32) -> [F; 3] {
        let p = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[p], self.rgb[p + 1], self.rgb[p + 2]]
    }

    /// 8-bit sRGB-agnostic quantisation: `round(clamp(v, 0, 1) · 255)`.
    pub fn rgb8(&self) -> Vec<u8> {
        self.rgb
            .iter()
            .map(|v| (v.to_f64().clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }
}

/// Per-pixel gradients of the loss for one camera, in the layout of
/// [`RenderedImage`]; `None` means zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageGradients<'a, F = f32> {
    pub rgb: Option<&'a [F]>,
    pub alpha: Option<&'a [F]>,
    pub depth: Option<&'a [F]>,
}

/// Per-Gaussian statistics for adaptive density control, over the cameras
/// of one backward call (only cameras where the Gaussian was visible count).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DensifyStats<F = f32> {
    /// `Σ_cameras ‖∂L/∂mean2d‖`, in **pixel** units. 3DGS's default
    /// threshold (0.0002) is for NDC units: multiply component-wise by
    /// `(W/2, H/2)` first, as gsplat does, to compare with it.
    pub mean2d_grad_norm: Vec<F>,
    /// gsplat's "absgrad": `Σ_cameras ‖Σ_pixels |∂L_pixel/∂mean2d|‖`
    /// (component-wise absolute values summed over pixels), pixel units.
    pub mean2d_absgrad_norm: Vec<F>,
    /// Number of cameras in which the Gaussian survived culling.
    pub visible_count: Vec<u32>,
    /// Largest screen radius over the cameras, in pixels (0 if never visible).
    pub max_radius_px: Vec<F>,
}

/// Gradients of the loss with respect to [`GaussianParams`] (same shapes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gradients<F = f32> {
    pub means: Vec<[F; 3]>,
    /// With respect to the raw (un-normalised) quaternion.
    pub quats: Vec<[F; 4]>,
    pub log_scales: Vec<[F; 3]>,
    pub opacity_logits: Vec<F>,
    /// Packed like [`GaussianParams::sh`]; [`split_sh`] gives dc/rest.
    pub sh: Vec<F>,
    pub stats: DensifyStats<F>,
}

#[derive(Debug, Clone)]
struct CameraState<F> {
    projected: Vec<Projected<F>>,
    bins: TileBins,
    raster: RasterState<F>,
}

/// What [`rasterize_backward`] needs from [`rasterize_forward`]: per camera,
/// the projected Gaussians, the tile lists, and per-pixel final
/// transmittance / last contributor / raw depth.
#[derive(Debug, Clone)]
pub struct ForwardState<F = f32> {
    cameras: Vec<CameraState<F>>,
    num_gaussians: usize,
    sh_degree: u8,
    options: RenderOptions,
}

impl<F: Real> ForwardState<F> {
    pub fn num_cameras(&self) -> usize {
        self.cameras.len()
    }

    /// The projected Gaussians of camera `cam` (`radius == 0` = culled).
    pub fn projected(&self, cam: usize) -> &[Projected<F>] {
        &self.cameras[cam].projected
    }

    /// Number of (tile, Gaussian) pairs of camera `cam`.
    pub fn num_intersections(&self, cam: usize) -> usize {
        self.cameras[cam].bins.num_intersections()
    }

    /// Number of Gaussians that survived culling in camera `cam`.
    pub fn num_visible(&self, cam: usize) -> usize {
        self.cameras[cam]
            .projected
            .iter()
            .filter(|p| p.is_visible())
            .count()
    }
}

fn settings<F: Real>(params: &GaussianParams<'_, F>, opts: &RenderOptions) -> ProjectSettings<F> {
    ProjectSettings {
        eps2d: F::from_f32(opts.eps2d),
        mode: opts.mode,
        sh_degree: opts
            .sh_degree
            .map_or(params.sh_degree, |d| d.min(params.sh_degree)),
        radius_clip: F::from_f32(opts.radius_clip),
    }
}

fn check_call<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<(), RenderError> {
    params.validate()?;
    opts.validate()?;
    check_cameras(cameras)
}

/// Validates each camera (errors name it by its index in `cameras`) and the
/// call's total pixel count against [`MAX_PIXELS_PER_CALL`]; the CPU and
/// CUDA paths refuse the same calls.
pub(crate) fn check_cameras(cameras: &[Camera]) -> Result<(), RenderError> {
    let mut total = 0usize;
    for (i, cam) in cameras.iter().enumerate() {
        cam.validate(i)?;
        total += cam.num_pixels();
    }
    if total > MAX_PIXELS_PER_CALL {
        return Err(RenderError::ResolutionTooLarge(format!(
            "{total} pixels over {} cameras exceed the per-call limit of {MAX_PIXELS_PER_CALL}",
            cameras.len()
        )));
    }
    Ok(())
}

/// Renders every camera. Returns the images and the state for
/// [`rasterize_backward`]. Cameras run in parallel, and tiles within each.
pub fn rasterize_forward<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<(Vec<RenderedImage<F>>, ForwardState<F>), RenderError> {
    check_call(params, cameras, opts)?;
    let s = settings(params, opts);
    let background = opts.background.map(F::from_f32);
    let results: Vec<(RenderedImage<F>, CameraState<F>)> = cameras
        .par_iter()
        .enumerate()
        .map(|(ci, cam)| {
            let cp = CameraParams::<F>::new(cam);
            let projected: Vec<Projected<F>> = (0..params.len())
                .into_par_iter()
                .map(|i| project_gaussian(&params.gaussian(i), &cp, &s))
                .collect();
            let grid = TileGrid::new(cam.width, cam.height);
            let bins = bin_gaussians(&projected, &grid, opts.max_intersections, ci)?;
            let (img, raster) =
                rasterize_forward_image(&projected, &bins, &grid, background, opts.normalize_depth);
            let image = RenderedImage {
                width: cam.width,
                height: cam.height,
                rgb: img.rgb,
                alpha: img.alpha,
                depth: img.depth,
            };
            Ok((
                image,
                CameraState {
                    projected,
                    bins,
                    raster,
                },
            ))
        })
        .collect::<Result<_, RenderError>>()?;
    let (images, states) = results.into_iter().unzip();
    Ok((
        images,
        ForwardState {
            cameras: states,
            num_gaussians: params.len(),
            sh_degree: params.sh_degree,
            options: *opts,
        },
    ))
}

/// Forward only, dropping the backward state.
pub fn render<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<Vec<RenderedImage<F>>, RenderError> {
    rasterize_forward(params, cameras, opts).map(|(images, _)| images)
}

/// Gradients of a loss with respect to the parameters, given the loss's
/// per-pixel gradients for each camera's outputs. `params`, `cameras` and
/// `opts` must be those of the forward call that produced `state`.
/// Deterministic: the same inputs give bitwise the same gradients.
pub fn rasterize_backward<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
    state: &ForwardState<F>,
    grads: &[ImageGradients<'_, F>],
) -> Result<Gradients<F>, RenderError> {
    check_call(params, cameras, opts)?;
    let shape = |m: String| Err(RenderError::GradientShape(m));
    if state.cameras.len() != cameras.len() || grads.len() != cameras.len() {
        return shape(format!(
            "{} cameras, {} forward states, {} image gradients",
            cameras.len(),
            state.cameras.len(),
            grads.len()
        ));
    }
    if state.num_gaussians != params.len() || state.sh_degree != params.sh_degree {
        return shape(format!(
            "forward saw {} Gaussians of SH degree {}, backward got {} of degree {}",
            state.num_gaussians,
            state.sh_degree,
            params.len(),
            params.sh_degree
        ));
    }
    if state.options != *opts {
        return shape("render options differ from the forward call".into());
    }
    for (ci, (g, cam)) in grads.iter().zip(cameras).enumerate() {
        let npix = cam.num_pixels();
        for (name, len, want) in [
            ("rgb", g.rgb.map(|v| v.len()), 3 * npix),
            ("alpha", g.alpha.map(|v| v.len()), npix),
            ("depth", g.depth.map(|v| v.len()), npix),
        ] {
            if let Some(len) = len {
                if len != want {
                    return shape(format!(
                        "camera {ci}: {name} gradient has {len} values, expected {want}"
                    ));
                }
            }
        }
    }

    let s = settings(params, opts);
    let background = opts.background.map(F::from_f32);
    let cam_params: Vec<CameraParams<F>> = cameras.iter().map(CameraParams::new).collect();
    let screen: Vec<Vec<project::ScreenGrad<F>>> = cameras
        .par_iter()
        .zip(&state.cameras)
        .zip(grads)
        .map(|((cam, cs), g)| {
            let grid = TileGrid::new(cam.width, cam.height);
            let pg = PixelGrads {
                rgb: g.rgb,
                alpha: g.alpha,
                depth: g.depth,
            };
            rasterize_backward_image(
                &cs.projected,
                &cs.bins,
                &grid,
                background,
                opts.normalize_depth,
                &cs.raster,
                &pg,
            )
        })
        .collect();

    struct PerGaussian<F> {
        grad: ParamGrad<F>,
        norm: F,
        abs_norm: F,
        count: u32,
        max_radius: F,
    }
    let n = params.len();
    let stride = params.sh_stride();
    let mut sh_grad = vec![F::ZERO; n * stride];
    let per: Vec<PerGaussian<F>> = sh_grad
        .par_chunks_mut(stride)
        .enumerate()
        .map(|(i, v_sh)| {
            let g = params.gaussian(i);
            let mut out = PerGaussian {
                grad: ParamGrad::default(),
                norm: F::ZERO,
                abs_norm: F::ZERO,
                count: 0,
                max_radius: F::ZERO,
            };
            for (ci, cp) in cam_params.iter().enumerate() {
                let proj = &state.cameras[ci].projected[i];
                if !proj.is_visible() {
                    continue;
                }
                let sg = &screen[ci][i];
                project_gaussian_backward(&g, cp, &s, proj, sg, &mut out.grad, v_sh);
                out.count += 1;
                out.norm += (sg.mean2d[0] * sg.mean2d[0] + sg.mean2d[1] * sg.mean2d[1]).sqrt();
                out.abs_norm += (sg.mean2d_abs[0] * sg.mean2d_abs[0]
                    + sg.mean2d_abs[1] * sg.mean2d_abs[1])
                    .sqrt();
                out.max_radius = out.max_radius.max(proj.radius);
            }
            out
        })
        .collect();

    Ok(Gradients {
        means: per.iter().map(|p| p.grad.mean).collect(),
        quats: per.iter().map(|p| p.grad.quat).collect(),
        log_scales: per.iter().map(|p| p.grad.log_scale).collect(),
        opacity_logits: per.iter().map(|p| p.grad.opacity_logit).collect(),
        sh: sh_grad,
        stats: DensifyStats {
            mean2d_grad_norm: per.iter().map(|p| p.norm).collect(),
            mean2d_absgrad_norm: per.iter().map(|p| p.abs_norm).collect(),
            visible_count: per.iter().map(|p| p.count).collect(),
            max_radius_px: per.iter().map(|p| p.max_radius).collect(),
        },
    })
}

/// A rasterizer backend. [`CpuRasterizer`] is the reference; a GPU backend
/// implements the same calls with its own state type.
pub trait Rasterizer {
    /// Whatever the backward pass needs from the forward pass.
    type State;

    fn forward(
        &self,
        params: &GaussianParams<'_, f32>,
        cameras: &[Camera],
        opts: &RenderOptions,
    ) -> Result<(Vec<RenderedImage<f32>>, Self::State), RenderError>;

    fn backward(
        &self,
        params: &GaussianParams<'_, f32>,
        cameras: &[Camera],
        opts: &RenderOptions,
        state: &Self::State,
        grads: &[ImageGradients<'_, f32>],
    ) -> Result<Gradients<f32>, RenderError>;
}

/// The CPU reference backend (rayon over cameras, Gaussians and tiles).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuRasterizer;

impl Rasterizer for CpuRasterizer {
    type State = ForwardState<f32>;

    fn forward(
        &self,
        params: &GaussianParams<'_, f32>,
        cameras: &[Camera],
        opts: &RenderOptions,
    ) -> Result<(Vec<RenderedImage<f32>>, Self::State), RenderError> {
        rasterize_forward(params, cameras, opts)
    }

    fn backward(
        &self,
        params: &GaussianParams<'_, f32>,
        cameras: &[Camera],
        opts: &RenderOptions,
        state: &Self::State,
        grads: &[ImageGradients<'_, f32>],
    ) -> Result<Gradients<f32>, RenderError> {
        rasterize_backward(params, cameras, opts, state, grads)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use splatforge_splat::rng::SplitMix64;

    /// The deterministic generator of test case `seed`, the seed spread over
    /// the state (times SplitMix64's increment, xor a constant).
    pub fn seeded_rng(seed: u64) -> SplitMix64 {
        SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
}

#[cfg(test)]
mod tests;
