//! The rasterizer's data types, shared by the CPU path ([`crate::cpu`]) and
//! the CUDA kernels: options, borrowed Gaussian parameters and their SH
//! layout, rendered images, gradients and densification statistics.

use splatforge_splat::sh::MAX_SH_DEGREE;
use splatforge_splat::{sh_coeffs_per_channel, Gaussians};

use crate::camera::Camera;
use crate::error::RenderError;
use crate::project::GaussianRef;
use crate::real::Real;

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
    pub(crate) fn validate(&self) -> Result<(), RenderError> {
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
