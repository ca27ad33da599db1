//! Pinhole cameras and the orbit rigs we render with.
//!
//! # Conventions
//! - **World**: right-handed, **Y up** (the 3DGS / DreamGaussian object frame).
//! - **Camera** (`world_to_camera`): OpenCV — x right, y down, z forward
//!   (into the scene). A point is in front of the camera when its camera-space
//!   z is positive; z is the *depth* used for culling, sorting and the depth
//!   output, in scene units.
//! - **Pixels**: the pixel with integer index (i, j) covers
//!   `[j, j+1) × [i, i+1)` and is sampled at its centre `(j + 0.5, i + 0.5)`;
//!   a camera-space point projects to `u = fx·x/z + cx`, `v = fy·y/z + cy`.
//!   The image centre is therefore `(W/2, H/2)`, which is what the helpers
//!   below use for `cx, cy`.
//! - Matrices are row-major `[row][column]`; the last row of
//!   `world_to_camera` is ignored (assumed `[0, 0, 0, 1]`).
//! - Angles given to helpers are in degrees; `fovy` is the full vertical
//!   field of view.

use crate::error::RenderError;

/// Default near clip plane (scene units), as DreamGaussian's `OrbitCamera`.
pub const DEFAULT_NEAR: f32 = 0.01;
/// Default far clip plane (scene units).
pub const DEFAULT_FAR: f32 = 100.0;

/// Largest accepted image width or height, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// The 404-GEN validator's view rig: 16 azimuths `numpy.linspace(0, 360, 16)`
/// (0° and 360° both included, so the first and last views coincide).
pub const VALIDATOR_VIEWS: usize = 16;
/// Validator elevation in degrees (DreamGaussian sign: negative = above).
pub const VALIDATOR_ELEVATION_DEG: f32 = -15.0;
/// Validator camera distance from the origin (scene units).
pub const VALIDATOR_RADIUS: f32 = 2.5;
/// Validator vertical field of view in degrees.
pub const VALIDATOR_FOVY_DEG: f32 = 49.1;
/// Validator image side in pixels (square images).
pub const VALIDATOR_IMAGE_SIZE: u32 = 518;
/// Side of the box the validator expects the object to be normalised into.
pub const VALIDATOR_BBOX_SIZE: f32 = 1.5;

/// A pinhole camera. See the module docs for the conventions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Focal length along x, in pixels.
    pub fx: f32,
    /// Focal length along y, in pixels.
    pub fy: f32,
    /// Principal point x, in pixels (image centre = `width / 2`).
    pub cx: f32,
    /// Principal point y, in pixels (image centre = `height / 2`).
    pub cy: f32,
    /// World → camera rigid transform, row-major, OpenCV camera axes.
    pub world_to_camera: [[f32; 4]; 4],
    /// Gaussians whose centre depth is below `near` are culled (> 0).
    pub near: f32,
    /// Gaussians whose centre depth is beyond `far` are culled (finite).
    pub far: f32,
}

type V3 = [f64; 3];

fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn norm(a: V3) -> f64 {
    (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt()
}
fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// Builds the row-major world→camera matrix from the camera's axes expressed
/// in world coordinates (OpenCV: `right` = +x, `down` = +y, `forward` = +z)
/// and its position.
fn w2c_from_axes(right: V3, down: V3, forward: V3, position: V3) -> [[f32; 4]; 4] {
    let rows = [right, down, forward];
    let mut m = [[0.0f32; 4]; 4];
    for (r, axis) in rows.iter().enumerate() {
        for k in 0..3 {
            m[r][k] = axis[k] as f32;
        }
        m[r][3] = -(axis[0] * position[0] + axis[1] * position[1] + axis[2] * position[2]) as f32;
    }
    m[3][3] = 1.0;
    m
}

/// Inverts a rigid row-major transform `[R t; 0 1]` → `[Rᵀ −Rᵀt; 0 1]`.
fn invert_rigid(m: &[[f32; 4]; 4]) -> [[f32; 4]; 4] {
    let mut out = [[0.0f32; 4]; 4];
    for r in 0..3 {
        for k in 0..3 {
            out[r][k] = m[k][r];
        }
        out[r][3] = -(0..3).map(|k| m[k][r] as f64 * m[k][3] as f64).sum::<f64>() as f32;
    }
    out[3][3] = 1.0;
    out
}

/// Focal length in pixels for a full field of view `fov_deg` over `pixels`.
pub fn focal_from_fov(fov_deg: f32, pixels: u32) -> f32 {
    (pixels as f64 / (2.0 * (0.5 * (fov_deg as f64).to_radians()).tan())) as f32
}

impl Camera {
    /// A camera with square pixels whose vertical field of view is
    /// `fovy_deg`, principal point at the image centre, default clip planes.
    pub fn from_fovy(
        fovy_deg: f32,
        width: u32,
        height: u32,
        world_to_camera: [[f32; 4]; 4],
    ) -> Camera {
        let f = focal_from_fov(fovy_deg, height);
        Camera {
            width,
            height,
            fx: f,
            fy: f,
            cx: width as f32 * 0.5,
            cy: height as f32 * 0.5,
            world_to_camera,
            near: DEFAULT_NEAR,
            far: DEFAULT_FAR,
        }
    }

    /// A camera at `eye` looking at `target`, with `up` (world) pointing up
    /// in the image. Falls back to a world-Z-based right vector when the view
    /// direction is parallel to `up`.
    pub fn look_at(
        eye: [f32; 3],
        target: [f32; 3],
        up: [f32; 3],
        fovy_deg: f32,
        width: u32,
        height: u32,
    ) -> Camera {
        let eye = eye.map(f64::from);
        let forward = sub(target.map(f64::from), eye);
        let forward = scale(forward, 1.0 / norm(forward).max(1e-30));
        let mut right = cross(forward, up.map(f64::from));
        if norm(right) < 1e-9 {
            right = cross(forward, [0.0, 0.0, 1.0]);
        }
        let right = scale(right, 1.0 / norm(right).max(1e-30));
        let down = cross(forward, right);
        Camera::from_fovy(
            fovy_deg,
            width,
            height,
            w2c_from_axes(right, down, forward, eye),
        )
    }

    /// DreamGaussian's `orbit_camera(elevation, azimuth, radius)` around the
    /// origin, converted to our OpenCV world→camera matrix.
    ///
    /// Camera position: `x = r·cos(e)·sin(a)`, `y = −r·sin(e)`,
    /// `z = r·cos(e)·cos(a)`: azimuth 0 looks from +Z, azimuth 90 from +X,
    /// and **negative elevation puts the camera above** the object (y > 0).
    /// The camera looks at the origin with world +Y up in the image.
    /// DreamGaussian builds an OpenGL camera-to-world `[right, up, back]`;
    /// the OpenCV axes are `[right, −up, −back]` and we store their inverse.
    pub fn orbit(
        elevation_deg: f32,
        azimuth_deg: f32,
        radius: f32,
        fovy_deg: f32,
        width: u32,
        height: u32,
    ) -> Camera {
        let e = (elevation_deg as f64).to_radians();
        let a = (azimuth_deg as f64).to_radians();
        let r = radius as f64;
        let pos = [r * e.cos() * a.sin(), -r * e.sin(), r * e.cos() * a.cos()];
        // OpenGL look-at as in DreamGaussian: back = normalize(pos - target),
        // right = normalize(up × back), up' = back × right.
        let back = scale(pos, 1.0 / norm(pos).max(1e-30));
        let mut right = cross([0.0, 1.0, 0.0], back);
        if norm(right) < 1e-9 {
            // Straight above/below: use the limit of the generic case.
            right = [a.cos(), 0.0, -a.sin()];
        }
        let right = scale(right, 1.0 / norm(right));
        let up = cross(back, right);
        let down = scale(up, -1.0);
        let forward = scale(back, -1.0);
        Camera::from_fovy(
            fovy_deg,
            width,
            height,
            w2c_from_axes(right, down, forward, pos),
        )
    }

    /// The 404-GEN validator's 16 views: azimuths `linspace(0, 360, 16)`
    /// (endpoint included), elevation −15°, radius 2.5, fovy 49.1°, 518×518.
    pub fn validator_views() -> Vec<Camera> {
        (0..VALIDATOR_VIEWS)
            .map(|i| {
                let azimuth = 360.0 * i as f64 / (VALIDATOR_VIEWS - 1) as f64;
                Camera::orbit(
                    VALIDATOR_ELEVATION_DEG,
                    azimuth as f32,
                    VALIDATOR_RADIUS,
                    VALIDATOR_FOVY_DEG,
                    VALIDATOR_IMAGE_SIZE,
                    VALIDATOR_IMAGE_SIZE,
                )
            })
            .collect()
    }

    /// MVDream's rig: 4 square views at azimuths `azimuth_start + 0, 90, 180,
    /// 270` degrees, same elevation/radius, `size × size` pixels.
    pub fn mvdream_views(
        elevation_deg: f32,
        azimuth_start_deg: f32,
        radius: f32,
        fovy_deg: f32,
        size: u32,
    ) -> Vec<Camera> {
        (0..4)
            .map(|k| {
                Camera::orbit(
                    elevation_deg,
                    azimuth_start_deg + 90.0 * k as f32,
                    radius,
                    fovy_deg,
                    size,
                    size,
                )
            })
            .collect()
    }

    /// From an OpenGL/Blender/nerfstudio camera-to-world matrix (camera looks
    /// along −z, y up; row-major) and pixel intrinsics.
    pub fn from_camera_to_world_opengl(
        c2w: [[f32; 4]; 4],
        fx: f32,
        fy: f32,
        cx: f32,
        cy: f32,
        width: u32,
        height: u32,
    ) -> Camera {
        // OpenCV axes = OpenGL axes with y and z flipped: negate columns 1, 2.
        let mut cv = c2w;
        for row in cv.iter_mut().take(3) {
            row[1] = -row[1];
            row[2] = -row[2];
        }
        Camera::from_camera_to_world_opencv(cv, fx, fy, cx, cy, width, height)
    }

    /// From an OpenCV/COLMAP camera-to-world matrix (row-major).
    pub fn from_camera_to_world_opencv(
        c2w: [[f32; 4]; 4],
        fx: f32,
        fy: f32,
        cx: f32,
        cy: f32,
        width: u32,
        height: u32,
    ) -> Camera {
        Camera {
            width,
            height,
            fx,
            fy,
            cx,
            cy,
            world_to_camera: invert_rigid(&c2w),
            near: DEFAULT_NEAR,
            far: DEFAULT_FAR,
        }
    }

    /// Camera-to-world matrix (OpenCV axes), row-major.
    pub fn camera_to_world(&self) -> [[f32; 4]; 4] {
        invert_rigid(&self.world_to_camera)
    }

    /// Camera centre in world coordinates.
    pub fn position(&self) -> [f32; 3] {
        let c2w = self.camera_to_world();
        [c2w[0][3], c2w[1][3], c2w[2][3]]
    }

    /// The camera's viewing direction (+z axis) in world coordinates.
    pub fn forward(&self) -> [f32; 3] {
        let m = &self.world_to_camera;
        [m[2][0], m[2][1], m[2][2]]
    }

    /// World point → camera space.
    pub fn world_to_camera_point(&self, p: [f32; 3]) -> [f32; 3] {
        let m = &self.world_to_camera;
        let mut out = [0.0f32; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r][0] * p[0] + m[r][1] * p[1] + m[r][2] * p[2] + m[r][3];
        }
        out
    }

    /// World point → pixel coordinates `(u, v)`; `None` when behind the camera.
    pub fn project_point(&self, p: [f32; 3]) -> Option<[f32; 2]> {
        let c = self.world_to_camera_point(p);
        (c[2] > 0.0).then(|| {
            [
                self.fx * c[0] / c[2] + self.cx,
                self.fy * c[1] / c[2] + self.cy,
            ]
        })
    }

    /// Number of pixels.
    pub fn num_pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Checks the camera can be rendered. `index` is only used in the error.
    pub fn validate(&self, index: usize) -> Result<(), RenderError> {
        let bad = |reason: String| Err(RenderError::InvalidCamera { index, reason });
        if self.width == 0
            || self.height == 0
            || self.width > MAX_IMAGE_SIDE
            || self.height > MAX_IMAGE_SIDE
        {
            return Err(RenderError::ResolutionTooLarge(format!(
                "camera {index}: {}x{} pixels; each side must be 1 to {MAX_IMAGE_SIDE}",
                self.width, self.height
            )));
        }
        if !(self.fx.is_finite() && self.fy.is_finite() && self.fx > 0.0 && self.fy > 0.0) {
            return bad(format!(
                "focal lengths must be finite and positive, got fx={} fy={}",
                self.fx, self.fy
            ));
        }
        if !(self.cx.is_finite() && self.cy.is_finite()) {
            return bad(format!(
                "principal point must be finite, got ({}, {})",
                self.cx, self.cy
            ));
        }
        if !self
            .world_to_camera
            .iter()
            .take(3)
            .flatten()
            .all(|v| v.is_finite())
        {
            return bad("world_to_camera has non-finite entries".into());
        }
        if !(self.near.is_finite()
            && self.near > 0.0
            && self.far.is_finite()
            && self.far > self.near)
        {
            return bad(format!(
                "clip planes need 0 < near < far < inf, got near={} far={}",
                self.near, self.far
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol
    }

    /// Asserts that `a` and `b` have the same world→camera transform, entry
    /// by entry within 1e-5.
    fn assert_same_pose(a: &Camera, b: &Camera) {
        for r in 0..3 {
            for k in 0..4 {
                assert!(close(
                    a.world_to_camera[r][k],
                    b.world_to_camera[r][k],
                    1e-5
                ));
            }
        }
    }

    fn rotation_is_orthonormal(c: &Camera) {
        let m = &c.world_to_camera;
        for i in 0..3 {
            for j in 0..3 {
                let d: f32 = (0..3).map(|k| m[i][k] * m[j][k]).sum();
                assert!(
                    close(d, if i == j { 1.0 } else { 0.0 }, 1e-5),
                    "R Rᵀ[{i}][{j}] = {d}"
                );
            }
        }
        // Proper rotation (det +1): right × down = forward.
        let r = [m[0][0], m[0][1], m[0][2]];
        let d = [m[1][0], m[1][1], m[1][2]];
        let f = [m[2][0], m[2][1], m[2][2]];
        let x = [
            r[1] * d[2] - r[2] * d[1],
            r[2] * d[0] - r[0] * d[2],
            r[0] * d[1] - r[1] * d[0],
        ];
        for k in 0..3 {
            assert!(close(x[k], f[k], 1e-5));
        }
    }

    #[test]
    fn validator_views_orbit_the_origin_from_above() {
        let views = Camera::validator_views();
        assert_eq!(views.len(), 16);
        for (i, c) in views.iter().enumerate() {
            assert_eq!((c.width, c.height), (518, 518));
            rotation_is_orthonormal(c);
            let p = c.position();
            let r = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
            assert!(close(r, 2.5, 1e-4), "view {i} at distance {r}");
            // Elevation −15° (DreamGaussian sign) means above the object.
            assert!(
                close(p[1], 2.5 * 15f32.to_radians().sin(), 1e-4),
                "view {i} y = {}",
                p[1]
            );
            assert!(p[1] > 0.0);
            // The origin is straight ahead, at the principal point.
            let o = c.world_to_camera_point([0.0; 3]);
            assert!(
                close(o[0], 0.0, 1e-5) && close(o[1], 0.0, 1e-5) && close(o[2], 2.5, 1e-4),
                "{o:?}"
            );
            let uv = c.project_point([0.0; 3]).unwrap();
            assert!(close(uv[0], 259.0, 1e-3) && close(uv[1], 259.0, 1e-3));
            // World up is image up (smaller v), and the camera is level (no roll).
            let top = c.project_point([0.0, 0.3, 0.0]).unwrap();
            assert!(
                top[1] < 259.0 - 10.0 && close(top[0], 259.0, 1e-3),
                "{top:?}"
            );
        }
        // linspace(0, 360, 16) includes both ends: first and last coincide.
        let (a, b) = (views[0].position(), views[15].position());
        for k in 0..3 {
            assert!(close(a[k], b[k], 1e-4));
        }
        // Azimuth 0 looks from +Z; the second view is at azimuth 24°.
        assert!(a[2] > 2.0 && close(a[0], 0.0, 1e-5));
        let p1 = views[1].position();
        let az = p1[0].atan2(p1[2]).to_degrees();
        assert!(close(az, 24.0, 1e-3), "{az}");
        // fovy 49.1° over 518 px.
        let f = 259.0 / (49.1f32.to_radians() / 2.0).tan();
        assert!(close(views[0].fy, f, 1e-2) && views[0].fx == views[0].fy);
    }

    #[test]
    fn orbit_matches_dreamgaussian_positions_and_axes() {
        // azimuth 90: camera on +X, looking towards −X; image right = world −Z.
        let c = Camera::orbit(0.0, 90.0, 2.0, 60.0, 64, 64);
        let p = c.position();
        assert!(close(p[0], 2.0, 1e-5) && close(p[1], 0.0, 1e-5) && close(p[2], 0.0, 1e-5));
        let f = c.forward();
        assert!(close(f[0], -1.0, 1e-6));
        let right = c.project_point([0.0, 0.0, -0.5]).unwrap();
        assert!(right[0] > 32.0 + 1.0);
        // Positive elevation = below the object, looking up.
        let below = Camera::orbit(30.0, 0.0, 2.0, 60.0, 64, 64);
        assert!(below.position()[1] < 0.0);
        rotation_is_orthonormal(&below);
        // Straight above does not produce NaN.
        let top = Camera::orbit(-90.0, 30.0, 2.0, 60.0, 64, 64);
        rotation_is_orthonormal(&top);
        assert!(top.validate(0).is_ok());
    }

    #[test]
    fn mvdream_views_are_90_degrees_apart() {
        let v = Camera::mvdream_views(-10.0, 45.0, 2.0, 40.0, 256);
        assert_eq!(v.len(), 4);
        for (k, c) in v.iter().enumerate() {
            let p = c.position();
            let az = p[0].atan2(p[2]).to_degrees().rem_euclid(360.0);
            assert!(
                close(az, (45.0 + 90.0 * k as f32).rem_euclid(360.0), 1e-3),
                "{az}"
            );
            assert_eq!((c.width, c.height), (256, 256));
        }
    }

    #[test]
    fn opengl_c2w_round_trip() {
        // An OpenGL c2w built like DreamGaussian's orbit_camera(−15, 24, 2.5).
        let cv = Camera::orbit(-15.0, 24.0, 2.5, 49.1, 518, 518);
        let c2w_cv = cv.camera_to_world();
        let mut gl = c2w_cv;
        for row in gl.iter_mut().take(3) {
            row[1] = -row[1];
            row[2] = -row[2];
        }
        // OpenGL: camera +z points away from the target (the "back" vector).
        let p = cv.position();
        let back = [gl[0][2], gl[1][2], gl[2][2]];
        let pn = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
        for k in 0..3 {
            assert!(close(back[k], p[k] / pn, 1e-5));
        }
        let back_cam =
            Camera::from_camera_to_world_opengl(gl, cv.fx, cv.fy, cv.cx, cv.cy, 518, 518);
        assert_same_pose(&back_cam, &cv);
    }

    #[test]
    fn look_at_agrees_with_orbit() {
        let o = Camera::orbit(-20.0, 70.0, 3.0, 45.0, 100, 80);
        let l = Camera::look_at(o.position(), [0.0; 3], [0.0, 1.0, 0.0], 45.0, 100, 80);
        assert_same_pose(&l, &o);
    }

    #[test]
    fn validation_rejects_bad_cameras() {
        let good = Camera::orbit(0.0, 0.0, 2.0, 50.0, 32, 32);
        assert!(good.validate(0).is_ok());
        let mut c = good;
        c.width = MAX_IMAGE_SIDE + 1;
        assert!(matches!(
            c.validate(0),
            Err(RenderError::ResolutionTooLarge(_))
        ));
        let mut c = good;
        c.height = 0;
        assert!(matches!(
            c.validate(0),
            Err(RenderError::ResolutionTooLarge(_))
        ));
        let mut c = good;
        c.fx = f32::NAN;
        assert!(matches!(
            c.validate(3),
            Err(RenderError::InvalidCamera { index: 3, .. })
        ));
        let mut c = good;
        c.near = 0.0;
        assert!(c.validate(0).is_err());
        let mut c = good;
        c.far = f32::INFINITY;
        assert!(c.validate(0).is_err());
        let mut c = good;
        c.world_to_camera[1][3] = f32::NAN;
        assert!(c.validate(0).is_err());
    }
}
