//! Stage 1: per-Gaussian EWA projection to screen space, and its backward.
//!
//! Forward, for one Gaussian and one camera (gsplat's `fully_fused_projection`
//! for a pinhole camera, plus colour from SH):
//! 1. `s = exp(log_scale)`, `R = R(q / |q|)` (q is wxyz), `Σ = R S Sᵀ Rᵀ`.
//! 2. `t = W·mean + T` (camera space); culled unless `near ≤ t.z ≤ far`.
//! 3. Jacobian of the pinhole projection at `t`, with `t.x/t.z` and `t.y/t.z`
//!    clamped to 1.3× the field-of-view limits (gsplat's clamp, which keeps
//!    splats far outside the view from exploding):
//!    `J = [[fx/z, 0, −fx·u/z], [0, fy/z, −fy·v/z]]`, `u, v` the clamped ratios.
//! 4. `cov2d = J W Σ Wᵀ Jᵀ + eps2d·I` (eps2d = 0.3 px² low-pass filter).
//!    In [`RenderMode::Antialiased`] the opacity is multiplied by
//!    `sqrt(det(cov2d_raw) / det(cov2d + eps2d·I))` (Mip-Splatting / gsplat
//!    "antialiased" compensation).
//! 5. `conic = cov2d⁻¹` stored as `(a, b, c)` for `[[a, b], [b, c]]`,
//!    `radius = ceil(3·sqrt(λ_max))` pixels with
//!    `λ_max = m + sqrt(max(0.01, m² − det))`, `m = (cov00 + cov11)/2`.
//!    Culled when `radius ≤ radius_clip` or the square `mean2d ± radius`
//!    misses the image.
//! 6. `opacity = sigmoid(logit) · compensation`; culled when below 1/255
//!    (it could never pass the per-pixel alpha threshold).
//! 7. `rgb = max(SH(d) + 0.5, 0)`, `d = normalize(mean − camera_centre)`.
//!
//! Gaussians with non-finite means or quaternions, a zero quaternion, a NaN
//! opacity logit, NaN or `+inf` log-scales, or non-finite SH colour are culled
//! (`radius = 0`) and receive zero gradient. A log-scale of `−inf` is a valid
//! zero-width axis. Backward recomputes the intermediates from the inputs
//! and gives exact derivatives of the forward (including the branch where
//! the Jacobian clamp is active: there `∂u/∂x = 0` and `∂(z·u)/∂z = u`).

use splatforge_splat::sh_coeffs_per_channel;

use crate::camera::Camera;
use crate::real::{c, sigmoid, Real};
use crate::sh::{eval_sh, eval_sh_backward};
use crate::RenderMode;

/// Minimum alpha a Gaussian must reach at a pixel to be composited there.
pub const ALPHA_THRESHOLD: f64 = 1.0 / 255.0;
/// Quaternions with squared norm below this are treated as invalid.
pub const MIN_QUAT_NORM_SQ: f64 = 1e-20;
/// Upper clamp of the colour channels (keeps sums finite for absurd SH).
pub const MAX_COLOR: f64 = 1e6;

type M3<F> = [[F; 3]; 3];

/// One Gaussian's inputs, pre-activation, as in [`crate::GaussianParams`].
#[derive(Debug, Clone, Copy)]
pub struct GaussianRef<'a, F> {
    pub mean: [F; 3],
    /// wxyz, not necessarily normalised.
    pub quat: [F; 4],
    pub log_scale: [F; 3],
    pub opacity_logit: F,
    /// `[coefficient][channel]`, all stored coefficients (DC first).
    pub sh: &'a [F],
}

/// A Gaussian projected into one camera. `radius == 0` means culled; the
/// other fields are then meaningless (zero).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Projected<F> {
    /// Centre in pixels (see [`crate::camera`] for the pixel convention).
    pub mean2d: [F; 2],
    /// Inverse of the (blurred) 2D covariance, `(a, b, c)` of `[[a, b], [b, c]]`, 1/px².
    pub conic: [F; 3],
    /// Camera-space z of the centre (scene units).
    pub depth: F,
    /// Effective opacity: `sigmoid(logit)`, times the compensation in antialiased mode.
    pub opacity: F,
    /// Colour after `+0.5` and clamping.
    pub rgb: [F; 3],
    /// Screen-space radius in whole pixels; 0 when culled.
    pub radius: F,
    /// Antialiasing compensation factor (1 in classic mode).
    pub compensation: F,
}

impl<F: Real> Projected<F> {
    /// Whether this Gaussian survived culling for this camera.
    #[inline]
    pub fn is_visible(&self) -> bool {
        self.radius > F::ZERO
    }
}

/// Gradient of the loss with respect to one camera's [`Projected`] values
/// of one Gaussian, accumulated over the pixels it touched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScreenGrad<F> {
    /// `∂L/∂mean2d`, per pixel unit.
    pub mean2d: [F; 2],
    /// `Σ_pixels |∂L_pixel/∂mean2d|` per component (gsplat's "absgrad").
    pub mean2d_abs: [F; 2],
    /// `∂L/∂(a, b, c)` of the conic.
    pub conic: [F; 3],
    /// `∂L/∂opacity` (the effective opacity).
    pub opacity: F,
    /// `∂L/∂rgb` (after clamping).
    pub rgb: [F; 3],
    /// `∂L/∂depth` (camera-space z) through the depth output.
    pub depth: F,
}

impl<F: Real> ScreenGrad<F> {
    pub fn add(&mut self, o: &ScreenGrad<F>) {
        for k in 0..2 {
            self.mean2d[k] += o.mean2d[k];
            self.mean2d_abs[k] += o.mean2d_abs[k];
        }
        for k in 0..3 {
            self.conic[k] += o.conic[k];
            self.rgb[k] += o.rgb[k];
        }
        self.opacity += o.opacity;
        self.depth += o.depth;
    }
}

/// Gradient with respect to one Gaussian's parameters (SH written separately).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ParamGrad<F> {
    pub mean: [F; 3],
    pub quat: [F; 4],
    pub log_scale: [F; 3],
    pub opacity_logit: F,
}

/// Projection settings derived from [`crate::RenderOptions`].
#[derive(Debug, Clone, Copy)]
pub struct ProjectSettings<F> {
    pub eps2d: F,
    pub mode: RenderMode,
    /// SH degree actually evaluated (≤ the stored degree).
    pub sh_degree: u8,
    pub radius_clip: F,
}

/// A camera converted to the scalar type, with derived quantities.
#[derive(Debug, Clone, Copy)]
pub struct CameraParams<F> {
    /// World→camera rotation (rows = camera axes in world coordinates).
    pub rot: M3<F>,
    pub trans: [F; 3],
    pub fx: F,
    pub fy: F,
    pub cx: F,
    pub cy: F,
    pub width: F,
    pub height: F,
    pub near: F,
    pub far: F,
    /// Camera centre in world coordinates.
    pub position: [F; 3],
    /// Clamp limits of `x/z`: `[−lim_x_neg, lim_x_pos]`, and of `y/z`.
    pub lim_x_neg: F,
    pub lim_x_pos: F,
    pub lim_y_neg: F,
    pub lim_y_pos: F,
}

impl<F: Real> CameraParams<F> {
    pub fn new(cam: &Camera) -> Self {
        let m = &cam.world_to_camera;
        let rot = [0, 1, 2].map(|r| [0, 1, 2].map(|k| F::from_f32(m[r][k])));
        let trans = [0, 1, 2].map(|r| F::from_f32(m[r][3]));
        let mut position = [F::ZERO; 3];
        for (k, p) in position.iter_mut().enumerate() {
            for r in 0..3 {
                *p -= rot[r][k] * trans[r];
            }
        }
        let fx = F::from_f32(cam.fx);
        let fy = F::from_f32(cam.fy);
        let cx = F::from_f32(cam.cx);
        let cy = F::from_f32(cam.cy);
        let width = F::from_f64(cam.width as f64);
        let height = F::from_f64(cam.height as f64);
        let half: F = c(0.5);
        let tan_fovx = half * width / fx;
        let tan_fovy = half * height / fy;
        let margin: F = c(0.3);
        CameraParams {
            rot,
            trans,
            fx,
            fy,
            cx,
            cy,
            width,
            height,
            near: F::from_f32(cam.near),
            far: F::from_f32(cam.far),
            position,
            lim_x_neg: cx / fx + margin * tan_fovx,
            lim_x_pos: (width - cx) / fx + margin * tan_fovx,
            lim_y_neg: cy / fy + margin * tan_fovy,
            lim_y_pos: (height - cy) / fy + margin * tan_fovy,
        }
    }

    fn point_to_camera(&self, p: [F; 3]) -> [F; 3] {
        let r = &self.rot;
        [0, 1, 2].map(|i| r[i][0] * p[0] + r[i][1] * p[1] + r[i][2] * p[2] + self.trans[i])
    }
}

fn all_finite<F: Real, const N: usize>(v: &[F; N]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// Rotation matrix of a **unit** wxyz quaternion.
pub fn quat_to_rotmat<F: Real>(q: [F; 4]) -> M3<F> {
    let [w, x, y, z] = q;
    let one = F::ONE;
    let two: F = c(2.0);
    [
        [
            one - two * (y * y + z * z),
            two * (x * y - w * z),
            two * (x * z + w * y),
        ],
        [
            two * (x * y + w * z),
            one - two * (x * x + z * z),
            two * (y * z - w * x),
        ],
        [
            two * (x * z - w * y),
            two * (y * z + w * x),
            one - two * (x * x + y * y),
        ],
    ]
}

/// Backward of [`quat_to_rotmat`]: `∂L/∂q̂` from `∂L/∂R`.
fn quat_to_rotmat_backward<F: Real>(q: [F; 4], g: &M3<F>) -> [F; 4] {
    let [w, x, y, z] = q;
    let two: F = c(2.0);
    let dw = x * (g[2][1] - g[1][2]) + y * (g[0][2] - g[2][0]) + z * (g[1][0] - g[0][1]);
    let dx = y * (g[0][1] + g[1][0]) + z * (g[0][2] + g[2][0]) + w * (g[2][1] - g[1][2])
        - two * x * (g[1][1] + g[2][2]);
    let dy = x * (g[0][1] + g[1][0]) + z * (g[1][2] + g[2][1]) + w * (g[0][2] - g[2][0])
        - two * y * (g[0][0] + g[2][2]);
    let dz = x * (g[0][2] + g[2][0]) + y * (g[1][2] + g[2][1]) + w * (g[1][0] - g[0][1])
        - two * z * (g[0][0] + g[1][1]);
    [two * dw, two * dx, two * dy, two * dz]
}

fn matmul<F: Real>(a: &M3<F>, b: &M3<F>) -> M3<F> {
    let mut o = [[F::ZERO; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            o[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    o
}

fn transpose<F: Real>(a: &M3<F>) -> M3<F> {
    [0, 1, 2].map(|i| [0, 1, 2].map(|j| a[j][i]))
}

/// Quantities shared by forward and backward.
struct Geometry<F> {
    /// Normalised quaternion.
    qn: [F; 4],
    qnorm: F,
    rotq: M3<F>,
    scale: [F; 3],
    /// `M = R(q)·S`.
    m: M3<F>,
    /// Camera-space mean.
    t: [F; 3],
    /// Camera-space covariance `W Σ Wᵀ`.
    cov_c: M3<F>,
    /// Projection Jacobian (2×3) and whether each ratio was clamped.
    jac: [[F; 3]; 2],
    clamped: [bool; 2],
    /// Clamped ratios `u = x/z`, `v = y/z`.
    ratio: [F; 2],
    /// Un-blurred 2D covariance `(c00, c01, c11)`.
    cov2d: [F; 3],
}

fn geometry<F: Real>(g: &GaussianRef<'_, F>, cam: &CameraParams<F>) -> Option<Geometry<F>> {
    if !all_finite(&g.mean) || !all_finite(&g.quat) || g.opacity_logit.is_nan() {
        return None;
    }
    if g.log_scale
        .iter()
        .any(|s| s.is_nan() || *s == F::from_f64(f64::INFINITY))
    {
        return None;
    }
    let t = cam.point_to_camera(g.mean);
    if !(t[2] >= cam.near && t[2] <= cam.far) {
        return None;
    }
    let q = g.quat;
    let n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
    if !(n2 >= c(MIN_QUAT_NORM_SQ)) || !n2.is_finite() {
        return None;
    }
    let qnorm = n2.sqrt();
    let qn = q.map(|v| v / qnorm);
    let rotq = quat_to_rotmat(qn);
    let scale = g.log_scale.map(|s| s.exp());
    if !all_finite(&scale) {
        return None;
    }
    let m = [0, 1, 2].map(|i| [0, 1, 2].map(|k| rotq[i][k] * scale[k]));
    let sigma = matmul(&m, &transpose(&m));
    let w = &cam.rot;
    let cov_c = matmul(&matmul(w, &sigma), &transpose(w));

    let z = t[2];
    let rx = t[0] / z;
    let ry = t[1] / z;
    let ux = rx.max(-cam.lim_x_neg).min(cam.lim_x_pos);
    let uy = ry.max(-cam.lim_y_neg).min(cam.lim_y_pos);
    let clamped = [ux != rx, uy != ry];
    let jac = [
        [cam.fx / z, F::ZERO, -cam.fx * ux / z],
        [F::ZERO, cam.fy / z, -cam.fy * uy / z],
    ];
    // cov2d = J cov_c Jᵀ
    let mut jc = [[F::ZERO; 3]; 2];
    for i in 0..2 {
        for k in 0..3 {
            jc[i][k] = jac[i][0] * cov_c[0][k] + jac[i][1] * cov_c[1][k] + jac[i][2] * cov_c[2][k];
        }
    }
    let dot = |a: &[F; 3], b: &[F; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    let cov2d = [
        dot(&jc[0], &jac[0]),
        dot(&jc[0], &jac[1]),
        dot(&jc[1], &jac[1]),
    ];
    Some(Geometry {
        qn,
        qnorm,
        rotq,
        scale,
        m,
        t,
        cov_c,
        jac,
        clamped,
        ratio: [ux, uy],
        cov2d,
    })
}

/// Unit view direction from the camera centre to the mean, and the distance.
fn view_dir<F: Real>(mean: [F; 3], cam: &CameraParams<F>) -> ([F; 3], F) {
    let d = [0, 1, 2].map(|k| mean[k] - cam.position[k]);
    let len = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    (d.map(|v| v / len), len)
}

/// Projects one Gaussian into one camera (see the module docs).
pub fn project_gaussian<F: Real>(
    g: &GaussianRef<'_, F>,
    cam: &CameraParams<F>,
    s: &ProjectSettings<F>,
) -> Projected<F> {
    project_inner(g, cam, s).unwrap_or_default()
}

fn project_inner<F: Real>(
    g: &GaussianRef<'_, F>,
    cam: &CameraParams<F>,
    s: &ProjectSettings<F>,
) -> Option<Projected<F>> {
    let geo = geometry(g, cam)?;
    let [c00, c01, c11] = geo.cov2d;
    let b00 = c00 + s.eps2d;
    let b11 = c11 + s.eps2d;
    let det_b = b00 * b11 - c01 * c01;
    if !(det_b > F::ZERO) || !det_b.is_finite() {
        return None;
    }
    let compensation = match s.mode {
        RenderMode::Classic => F::ONE,
        RenderMode::Antialiased => {
            let det0 = c00 * c11 - c01 * c01;
            (det0 / det_b).max(F::ZERO).sqrt()
        }
    };
    let conic = [b11 / det_b, -c01 / det_b, b00 / det_b];
    let half: F = c(0.5);
    let mid = half * (b00 + b11);
    let lambda_max = mid + (mid * mid - det_b).max(c(0.01)).sqrt();
    let radius = (c::<F>(3.0) * lambda_max.sqrt()).ceil();
    if !radius.is_finite() || !(radius > s.radius_clip) || !all_finite(&conic) {
        return None;
    }
    let z = geo.t[2];
    let mean2d = [
        cam.fx * geo.t[0] / z + cam.cx,
        cam.fy * geo.t[1] / z + cam.cy,
    ];
    if !all_finite(&mean2d)
        || mean2d[0] + radius <= F::ZERO
        || mean2d[0] - radius >= cam.width
        || mean2d[1] + radius <= F::ZERO
        || mean2d[1] - radius >= cam.height
    {
        return None;
    }
    let opacity = sigmoid(g.opacity_logit) * compensation;
    if !(opacity >= c(ALPHA_THRESHOLD)) {
        return None;
    }
    let (dir, _) = view_dir(g.mean, cam);
    let raw = eval_sh(s.sh_degree, g.sh, dir);
    if !all_finite(&raw) {
        return None;
    }
    let rgb = raw.map(|v| (v + half).max(F::ZERO).min(c(MAX_COLOR)));
    Some(Projected {
        mean2d,
        conic,
        depth: z,
        opacity,
        rgb,
        radius,
        compensation,
    })
}

/// Backward of [`project_gaussian`] for a visible Gaussian: adds the
/// parameter gradients into `out` and the SH gradients into `v_sh` (same
/// layout as `g.sh`). Does nothing for a culled Gaussian.
pub fn project_gaussian_backward<F: Real>(
    g: &GaussianRef<'_, F>,
    cam: &CameraParams<F>,
    s: &ProjectSettings<F>,
    proj: &Projected<F>,
    v: &ScreenGrad<F>,
    out: &mut ParamGrad<F>,
    v_sh: &mut [F],
) {
    if !proj.is_visible() {
        return;
    }
    let Some(geo) = geometry(g, cam) else { return };
    let zero = F::ZERO;
    let half: F = c(0.5);
    let two: F = c(2.0);

    // Colour: rgb = clamp(SH(dir) + 0.5, 0, MAX_COLOR).
    let (dir, dist) = view_dir(g.mean, cam);
    let mut v_mean = [zero; 3];
    {
        let raw = eval_sh(s.sh_degree, g.sh, dir);
        let mut v_raw = [zero; 3];
        for ch in 0..3 {
            let val = raw[ch] + half;
            if val > zero && val < c(MAX_COLOR) {
                v_raw[ch] = v.rgb[ch];
            }
        }
        let n = sh_coeffs_per_channel(s.sh_degree) * 3;
        let v_dir = eval_sh_backward(s.sh_degree, &g.sh[..n], dir, v_raw, &mut v_sh[..n]);
        // d = D/|D| ⇒ ∂L/∂D = (v − d (d·v)) / |D|.
        let dv = dir[0] * v_dir[0] + dir[1] * v_dir[1] + dir[2] * v_dir[2];
        for k in 0..3 {
            v_mean[k] += (v_dir[k] - dir[k] * dv) / dist;
        }
    }

    // Opacity: o = sigmoid(l) · comp.
    let sig = sigmoid(g.opacity_logit);
    out.opacity_logit += v.opacity * proj.compensation * sig * (F::ONE - sig);
    let v_comp = v.opacity * sig;

    // Conic = inverse of the blurred covariance: ∂L/∂B = −C G C, with G the
    // symmetric matrix gradient of the conic (off-diagonal split in halves).
    let [a, b, cc] = proj.conic;
    let g00 = v.conic[0];
    let g01 = half * v.conic[1];
    let g11 = v.conic[2];
    // C G (2×2), then (C G) C.
    let cg00 = a * g00 + b * g01;
    let cg01 = a * g01 + b * g11;
    let cg10 = b * g00 + cc * g01;
    let cg11 = b * g01 + cc * g11;
    let mut v_cov = [
        [-(cg00 * a + cg01 * b), -(cg00 * b + cg01 * cc)],
        [-(cg10 * a + cg11 * b), -(cg10 * b + cg11 * cc)],
    ];
    if s.mode == RenderMode::Antialiased && proj.compensation > zero && v_comp != zero {
        // comp = sqrt(det0 / det_b): ∂comp/∂cov = comp/2 · (cov⁻¹ − B⁻¹).
        let [c00, c01, c11] = geo.cov2d;
        let det0 = c00 * c11 - c01 * c01;
        if det0 > zero {
            let inv0 = [[c11 / det0, -c01 / det0], [-c01 / det0, c00 / det0]];
            let binv = [[a, b], [b, cc]];
            let k = v_comp * half * proj.compensation;
            for i in 0..2 {
                for j in 0..2 {
                    v_cov[i][j] += k * (inv0[i][j] - binv[i][j]);
                }
            }
        }
    }
    // Symmetrise (it already is up to rounding).
    let off = half * (v_cov[0][1] + v_cov[1][0]);
    v_cov[0][1] = off;
    v_cov[1][0] = off;

    // cov2d = J Σc Jᵀ: ∂L/∂Σc = Jᵀ V J, ∂L/∂J = 2 V J Σc.
    let jac = &geo.jac;
    let mut vj = [[zero; 3]; 2]; // V J
    for i in 0..2 {
        for k in 0..3 {
            vj[i][k] = v_cov[i][0] * jac[0][k] + v_cov[i][1] * jac[1][k];
        }
    }
    let mut v_cov_c = [[zero; 3]; 3];
    for i in 0..3 {
        for k in 0..3 {
            v_cov_c[i][k] = jac[0][i] * vj[0][k] + jac[1][i] * vj[1][k];
        }
    }
    let mut v_jac = [[zero; 3]; 2];
    for i in 0..2 {
        for k in 0..3 {
            v_jac[i][k] = two
                * (vj[i][0] * geo.cov_c[0][k]
                    + vj[i][1] * geo.cov_c[1][k]
                    + vj[i][2] * geo.cov_c[2][k]);
        }
    }

    // Camera-space mean: through mean2d, J, and the depth output.
    let [tx, ty, tz] = geo.t;
    let (fx, fy) = (cam.fx, cam.fy);
    let rz = F::ONE / tz;
    let rz2 = rz * rz;
    let mut v_t = [
        fx * rz * v.mean2d[0],
        fy * rz * v.mean2d[1],
        -(fx * tx * v.mean2d[0] + fy * ty * v.mean2d[1]) * rz2,
    ];
    v_t[2] += v.depth;
    // J00 = fx/z, J11 = fy/z.
    v_t[2] -= (fx * v_jac[0][0] + fy * v_jac[1][1]) * rz2;
    // J02 = −fx·u/z with u = x/z (free) or a constant (clamped).
    for (axis, f) in [(0usize, fx), (1usize, fy)] {
        let vj2 = v_jac[axis][2];
        if geo.clamped[axis] {
            v_t[2] += f * geo.ratio[axis] * rz2 * vj2;
        } else {
            let coord = geo.t[axis];
            v_t[axis] -= f * rz2 * vj2;
            v_t[2] += two * f * coord * rz2 * rz * vj2;
        }
    }
    // World mean: t = W mean + T.
    let w = &cam.rot;
    for k in 0..3 {
        v_mean[k] += w[0][k] * v_t[0] + w[1][k] * v_t[1] + w[2][k] * v_t[2];
    }
    for k in 0..3 {
        out.mean[k] += v_mean[k];
    }

    // World covariance: Σc = W Σ Wᵀ ⇒ ∂L/∂Σ = Wᵀ (∂L/∂Σc) W.
    let v_sigma = matmul(&matmul(&transpose(w), &v_cov_c), w);
    // Σ = M Mᵀ ⇒ ∂L/∂M = (G + Gᵀ) M.
    let gs = [0, 1, 2].map(|i| [0, 1, 2].map(|j| v_sigma[i][j] + v_sigma[j][i]));
    let v_m = matmul(&gs, &geo.m);
    // M = R S.
    let mut v_rot = [[zero; 3]; 3];
    for i in 0..3 {
        for k in 0..3 {
            v_rot[i][k] = v_m[i][k] * geo.scale[k];
        }
    }
    for k in 0..3 {
        let v_scale =
            geo.rotq[0][k] * v_m[0][k] + geo.rotq[1][k] * v_m[1][k] + geo.rotq[2][k] * v_m[2][k];
        out.log_scale[k] += v_scale * geo.scale[k];
    }
    // q̂ = q/|q| ⇒ ∂L/∂q = (v − q̂ (q̂·v)) / |q|.
    let v_qn = quat_to_rotmat_backward(geo.qn, &v_rot);
    let dq = (0..4).map(|k| geo.qn[k] * v_qn[k]).sum::<F>();
    for k in 0..4 {
        out.quat[k] += (v_qn[k] - geo.qn[k] * dq) / geo.qnorm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::seeded_rng;

    fn settings(mode: RenderMode) -> ProjectSettings<f64> {
        ProjectSettings {
            eps2d: 0.3,
            mode,
            sh_degree: 3,
            radius_clip: 0.0,
        }
    }

    /// A scalar loss of the projected values with random weights, whose
    /// gradient w.r.t. the projected values is exactly those weights.
    fn weighted(p: &Projected<f64>, w: &ScreenGrad<f64>) -> f64 {
        w.mean2d[0] * p.mean2d[0]
            + w.mean2d[1] * p.mean2d[1]
            + (0..3)
                .map(|k| w.conic[k] * p.conic[k] + w.rgb[k] * p.rgb[k])
                .sum::<f64>()
            + w.opacity * p.opacity
            + w.depth * p.depth
    }

    /// Finite differences (f64, central, h = 1e-6) of the projection alone
    /// against its backward, for every parameter of several Gaussians, with
    /// some placed so that the Jacobian clamp is active.
    #[test]
    fn projection_backward_matches_finite_differences() {
        let cam = Camera::orbit(-20.0, 30.0, 3.0, 50.0, 64, 48);
        let cp = CameraParams::<f64>::new(&cam);
        for mode in [RenderMode::Classic, RenderMode::Antialiased] {
            let mut rng = seeded_rng(7);
            let s = settings(mode);
            let (mut checked, mut clamped) = (0, 0);
            for case in 0..60 {
                // Some far off to the side (clamped Jacobian, still on screen
                // thanks to a large radius), most in view.
                let side = case % 3 == 0;
                let spread = if side { 4.0 } else { 0.6 };
                let mean = [
                    rng.uniform(-spread, spread),
                    rng.uniform(-0.6, 0.6),
                    rng.uniform(-0.6, 0.6),
                ];
                let quat = [rng.normal(), rng.normal(), rng.normal(), rng.normal()];
                let big = if side { 0.5 } else { -2.0 };
                let log_scale = [
                    rng.uniform(-3.0, big),
                    rng.uniform(-3.0, big),
                    rng.uniform(-3.0, big),
                ];
                let logit = rng.uniform(-1.0, 3.0);
                let sh: Vec<f64> = (0..48).map(|_| rng.uniform(-0.5, 0.5)).collect();
                let w = ScreenGrad {
                    mean2d: [rng.normal(), rng.normal()],
                    mean2d_abs: [0.0; 2],
                    conic: [
                        rng.normal() * 10.0,
                        rng.normal() * 10.0,
                        rng.normal() * 10.0,
                    ],
                    opacity: rng.normal(),
                    rgb: [rng.normal(), rng.normal(), rng.normal()],
                    depth: rng.normal(),
                };
                let make = |mean: [f64; 3], quat: [f64; 4], ls: [f64; 3], l: f64, sh: &[f64]| {
                    let g = GaussianRef {
                        mean,
                        quat,
                        log_scale: ls,
                        opacity_logit: l,
                        sh,
                    };
                    project_gaussian(&g, &cp, &s)
                };
                let p0 = make(mean, quat, log_scale, logit, &sh);
                if !p0.is_visible() {
                    continue;
                }
                checked += 1;
                let g = GaussianRef {
                    mean,
                    quat,
                    log_scale,
                    opacity_logit: logit,
                    sh: &sh,
                };
                if geometry(&g, &cp).unwrap().clamped.iter().any(|&c| c) {
                    clamped += 1;
                }
                let mut out = ParamGrad::default();
                let mut v_sh = vec![0.0; 48];
                project_gaussian_backward(&g, &cp, &s, &p0, &w, &mut out, &mut v_sh);

                let h = 1e-6;
                let fd = |f: &dyn Fn(f64) -> Projected<f64>| {
                    (weighted(&f(h), &w) - weighted(&f(-h), &w)) / (2.0 * h)
                };
                let mut analytic = Vec::new();
                let mut numeric = Vec::new();
                for k in 0..3 {
                    numeric.push(fd(&|e| {
                        let mut m = mean;
                        m[k] += e;
                        make(m, quat, log_scale, logit, &sh)
                    }));
                    analytic.push(out.mean[k]);
                    numeric.push(fd(&|e| {
                        let mut l = log_scale;
                        l[k] += e;
                        make(mean, quat, l, logit, &sh)
                    }));
                    analytic.push(out.log_scale[k]);
                }
                for k in 0..4 {
                    numeric.push(fd(&|e| {
                        let mut q = quat;
                        q[k] += e;
                        make(mean, q, log_scale, logit, &sh)
                    }));
                    analytic.push(out.quat[k]);
                }
                numeric.push(fd(&|e| make(mean, quat, log_scale, logit + e, &sh)));
                analytic.push(out.opacity_logit);
                for k in 0..48 {
                    numeric.push(fd(&|e| {
                        let mut c = sh.clone();
                        c[k] += e;
                        make(mean, quat, log_scale, logit, &c)
                    }));
                    analytic.push(v_sh[k]);
                }
                let scale = numeric
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.abs()))
                    .max(1e-12);
                for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
                    assert!(
                        (a - n).abs() <= 1e-6 * scale,
                        "{mode:?} case {case} param {i}: analytic {a} vs fd {n} (scale {scale})"
                    );
                }
            }
            assert!(checked >= 40, "only {checked} visible cases");
            assert!(
                clamped >= 4,
                "only {clamped} cases exercise the Jacobian clamp"
            );
        }
    }

    #[test]
    fn clamp_branch_is_exercised() {
        // A Gaussian far to the side of a narrow camera but huge, so visible.
        let cam = Camera::orbit(0.0, 0.0, 3.0, 30.0, 64, 64);
        let cp = CameraParams::<f64>::new(&cam);
        let sh = [0.0; 3];
        let g = GaussianRef {
            mean: [3.0, 0.0, 0.0],
            quat: [1.0, 0.0, 0.0, 0.0],
            log_scale: [0.5; 3],
            opacity_logit: 2.0,
            sh: &sh,
        };
        let geo = geometry(&g, &cp).unwrap();
        assert!(geo.clamped[0] && !geo.clamped[1]);
        let s = ProjectSettings {
            eps2d: 0.3,
            mode: RenderMode::Classic,
            sh_degree: 0,
            radius_clip: 0.0,
        };
        assert!(project_gaussian(&g, &cp, &s).is_visible());
    }

    #[test]
    fn quaternion_rotation_is_orthonormal_and_matches_axis_angle() {
        // 90° about +z: x → y.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let r = quat_to_rotmat([h, 0.0, 0.0, h]);
        let v = [r[0][0], r[1][0], r[2][0]];
        assert!((v[0]).abs() < 1e-12 && (v[1] - 1.0).abs() < 1e-12);
        // Any unit quaternion gives an orthonormal matrix.
        let q = [0.3f32, -0.5, 0.2, 0.7];
        let n = q.iter().map(|v| v * v).sum::<f32>().sqrt();
        let r = quat_to_rotmat(q.map(|v| v / n));
        for i in 0..3 {
            for j in 0..3 {
                let d: f32 = (0..3).map(|k| r[i][k] * r[j][k]).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn culling_of_bad_gaussians() {
        let cam = Camera::orbit(0.0, 0.0, 2.0, 50.0, 32, 32);
        let cp = CameraParams::<f32>::new(&cam);
        let s = ProjectSettings {
            eps2d: 0.3,
            mode: RenderMode::Classic,
            sh_degree: 0,
            radius_clip: 0.0,
        };
        let sh = [0.5f32; 3];
        let ok = GaussianRef {
            mean: [0.0; 3],
            quat: [1.0, 0.0, 0.0, 0.0],
            log_scale: [-2.0; 3],
            opacity_logit: 1.0,
            sh: &sh,
        };
        assert!(project_gaussian(&ok, &cp, &s).is_visible());
        let cases: Vec<(&str, GaussianRef<f32>)> = vec![
            (
                "nan mean",
                GaussianRef {
                    mean: [f32::NAN, 0.0, 0.0],
                    ..ok
                },
            ),
            (
                "inf mean",
                GaussianRef {
                    mean: [0.0, f32::INFINITY, 0.0],
                    ..ok
                },
            ),
            (
                "zero quat",
                GaussianRef {
                    quat: [0.0; 4],
                    ..ok
                },
            ),
            (
                "nan quat",
                GaussianRef {
                    quat: [f32::NAN, 0.0, 0.0, 1.0],
                    ..ok
                },
            ),
            (
                "nan opacity",
                GaussianRef {
                    opacity_logit: f32::NAN,
                    ..ok
                },
            ),
            (
                "zero opacity",
                GaussianRef {
                    opacity_logit: f32::NEG_INFINITY,
                    ..ok
                },
            ),
            (
                "nan scale",
                GaussianRef {
                    log_scale: [f32::NAN, 0.0, 0.0],
                    ..ok
                },
            ),
            (
                "inf scale",
                GaussianRef {
                    log_scale: [f32::INFINITY, 0.0, 0.0],
                    ..ok
                },
            ),
            (
                "huge scale",
                GaussianRef {
                    log_scale: [100.0, 0.0, 0.0],
                    ..ok
                },
            ),
            (
                "behind",
                GaussianRef {
                    mean: [0.0, 0.0, 3.0],
                    ..ok
                },
            ),
            (
                "at camera",
                GaussianRef {
                    mean: [0.0, 0.0, 2.0],
                    ..ok
                },
            ),
            (
                "off screen",
                GaussianRef {
                    mean: [5.0, 0.0, 0.0],
                    ..ok
                },
            ),
        ];
        for (name, g) in cases {
            assert!(
                !project_gaussian(&g, &cp, &s).is_visible(),
                "{name} should be culled"
            );
        }
        let nan_sh = [f32::NAN; 3];
        assert!(!project_gaussian(&GaussianRef { sh: &nan_sh, ..ok }, &cp, &s).is_visible());
        // A zero-width Gaussian (log-scale −inf) still projects to the eps2d blob.
        let flat = GaussianRef {
            log_scale: [f32::NEG_INFINITY; 3],
            ..ok
        };
        let p = project_gaussian(&flat, &cp, &s);
        assert!(p.is_visible() && p.conic.iter().all(|v| v.is_finite()));
        assert!((p.conic[0] - 1.0 / 0.3).abs() < 1e-4);
        // ... but is invisible with the antialiasing compensation (det = 0).
        let aa = ProjectSettings {
            mode: RenderMode::Antialiased,
            ..s
        };
        assert!(!project_gaussian(&flat, &cp, &aa).is_visible());
    }
}
