//! MVDream's views as our render cameras ([`splatforge_render::Camera`]);
//! MVDream's own conventions are in `splatforge_diffusion::mvdream::camera`.
//!
//! World: Y up, the same axes as MVDream's OpenGL world. Camera frame:
//! OpenCV (x right, y down, z forward), `world_to_camera` row-major.
//! View `i` becomes the MVDream OpenGL camera-to-world matrix with its
//! position scaled to `radius`, converted with
//! [`Camera::from_camera_to_world_opengl`] (negate the up and back columns,
//! invert). This is exactly
//! `Camera::orbit(−elevation, azimuth_i, radius, fovy, size, size)`: the
//! render crate's (DreamGaussian's) elevation is negative above the object.
//! Defaults for the fit stage: [`DEFAULT_RADIUS`] and [`DEFAULT_FOVY_DEG`].

use splatforge_diffusion::mvdream::camera;
use splatforge_render::Camera;

/// The reference miner's camera distance for MVDream views (`text_mv.yaml`).
pub const DEFAULT_RADIUS: f32 = 3.5;
/// The reference miner's vertical field of view in degrees (`text_mv.yaml`).
pub const DEFAULT_FOVY_DEG: f32 = 49.1;

/// Our render cameras for the same views (see the module docs), square
/// `size × size` images, vertical field of view `fovy_deg`.
pub fn render_cameras(
    num_frames: usize,
    elevation_deg: f64,
    azimuth_start_deg: f64,
    azimuth_span_deg: f64,
    radius: f32,
    fovy_deg: f32,
    size: u32,
) -> Vec<Camera> {
    let f = splatforge_render::camera::focal_from_fov(fovy_deg, size);
    camera::azimuths(num_frames, azimuth_start_deg, azimuth_span_deg)
        .into_iter()
        .map(|a| {
            let m = camera::camera_to_world_opengl(elevation_deg, a);
            let mut c2w = [[0f32; 4]; 4];
            for r in 0..4 {
                for c in 0..4 {
                    c2w[r][c] = m[r][c] as f32;
                }
            }
            for row in c2w.iter_mut().take(3) {
                row[3] *= radius;
            }
            Camera::from_camera_to_world_opengl(
                c2w,
                f,
                f,
                size as f32 * 0.5,
                size as f32 * 0.5,
                size,
                size,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_cameras_match_the_orbit_rig() {
        let cams = render_cameras(4, 15.0, 0.0, 360.0, DEFAULT_RADIUS, DEFAULT_FOVY_DEG, 256);
        for (i, cam) in cams.iter().enumerate() {
            let orbit = Camera::orbit(
                -15.0,
                90.0 * i as f32,
                DEFAULT_RADIUS,
                DEFAULT_FOVY_DEG,
                256,
                256,
            );
            let (ours, theirs) = (
                cam.world_to_camera.as_flattened(),
                orbit.world_to_camera.as_flattened(),
            );
            assert!(
                ours.iter().zip(theirs).all(|(x, y)| (x - y).abs() <= 2e-6),
                "{ours:?} vs {theirs:?}"
            );
            assert_eq!(
                (cam.fx, cam.fy, cam.cx, cam.cy),
                (orbit.fx, orbit.fy, orbit.cx, orbit.cy)
            );
            // Above the object (y > 0), at the radius, looking at the origin.
            let p = cam.position();
            assert!(p[1] > 0.0);
            assert!(
                ((p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - DEFAULT_RADIUS).abs() < 1e-5
            );
            let o = cam.world_to_camera_point([0.0, 0.0, 0.0]);
            assert!(o[0].abs() < 1e-5 && o[1].abs() < 1e-5 && (o[2] - DEFAULT_RADIUS).abs() < 1e-5);
            // The world up axis points up in the image (towards −y in OpenCV).
            let up = cam.world_to_camera_point([0.0, 1.0, 0.0]);
            assert!(up[1] < o[1]);
        }
        // View 0 looks from +Z (azimuth 0), view 1 from +X.
        assert!(cams[0].position()[2] > 3.0);
        assert!(cams[1].position()[0] > 3.0);
    }
}
