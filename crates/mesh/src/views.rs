//! The views the splat is rendered from for fusion, chosen from its bounds.
//!
//! Why these views:
//! - **Directions**: a Fibonacci spiral over the whole sphere, so that every
//!   outward-facing part of the surface is seen nearly head-on by some view,
//!   including the top and the bottom (an orbit at one elevation, as the
//!   validators', leaves a hamburger's top and base to grazing rays, where
//!   expected depth is least reliable). Uniform spacing also weights no
//!   side of the object more than another in the fused average.
//! - **Distance**: every camera looks at the centre of the bounds from
//!   `R / sin(fov / 2)`, where `R` is the radius of the bounds' sphere, so
//!   the whole object is in every image and no part is cut off (a part
//!   outside an image is simply not observed by that view).
//! - **Resolution**: two pixels per voxel along the grid's longest side
//!   ([`image_side_for`]), so a voxel's projection always covers pixels and
//!   thin parts survive in the silhouettes that carve free space.

use splatforge_render::Camera;

/// Views rendered by default: each direction of the sphere is within about
/// 23° of a view (the spiral's spacing), so every surface point is seen
/// nearly head-on; 48 views gave the fixtures no better IoU or PSNR and
/// cost half as much again to render.
pub const DEFAULT_VIEW_COUNT: usize = 32;
/// Fewest views accepted: the six axis directions' worth.
pub const MIN_VIEW_COUNT: usize = 6;
/// Most views accepted (bounds the renders' memory).
pub const MAX_VIEW_COUNT: usize = 512;
/// Vertical (and horizontal) field of view of the fusion cameras, degrees:
/// narrow enough that perspective foreshortening stays small.
pub const FUSION_FOV_DEG: f32 = 40.0;

/// Image side for a grid of `resolution` samples: two pixels per voxel,
/// between 64 and 2048 pixels.
pub fn image_side_for(resolution: u32) -> u32 {
    (2 * resolution).clamp(64, 2048)
}

/// `count` unit directions spread evenly over the sphere (Fibonacci
/// spiral), from near +Y down to near −Y; never exactly a pole.
pub fn sphere_directions(count: usize) -> Vec<[f32; 3]> {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    (0..count)
        .map(|i| {
            let y = 1.0 - 2.0 * (i as f64 + 0.5) / count as f64;
            let r = (1.0 - y * y).sqrt();
            let phi = golden * i as f64;
            [(r * phi.cos()) as f32, y as f32, (r * phi.sin()) as f32]
        })
        .collect()
}

/// `count` square cameras of `image_side` pixels looking at the centre of
/// `bounds` (min, max) from every side, each seeing all of the bounds'
/// sphere (see the module docs), world +Y up in the images.
pub fn cameras_around(bounds: ([f32; 3], [f32; 3]), count: usize, image_side: u32) -> Vec<Camera> {
    let (lo, hi) = bounds;
    let centre: [f32; 3] = std::array::from_fn(|a| 0.5 * (lo[a] + hi[a]));
    let half_diagonal = 0.5 * (0..3).map(|a| (hi[a] - lo[a]).powi(2)).sum::<f32>().sqrt();
    // A point object still gets a finite, positive distance.
    let radius = half_diagonal.max(1e-3);
    let distance = radius / (0.5 * FUSION_FOV_DEG.to_radians()).sin();
    sphere_directions(count)
        .into_iter()
        .map(|d| {
            let eye = std::array::from_fn(|a| centre[a] + distance * d[a]);
            let mut cam = Camera::look_at(
                eye,
                centre,
                [0.0, 1.0, 0.0],
                FUSION_FOV_DEG,
                image_side,
                image_side,
            );
            // Clip planes scaled to the object: Gaussians in front of the
            // sphere or far behind it are none of the object's.
            cam.near = (0.01 * distance).max(distance - 2.0 * radius);
            cam.far = distance + 2.0 * radius;
            cam
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_camera_sees_all_corners_of_the_bounds() {
        let bounds = ([-1.0, 0.0, 2.0], [3.0, 0.5, 2.5]);
        let cams = cameras_around(bounds, 20, 128);
        assert_eq!(cams.len(), 20);
        for (i, c) in cams.iter().enumerate() {
            for corner in 0..8 {
                let p = [
                    if corner & 1 == 0 { -1.0 } else { 3.0 },
                    if corner & 2 == 0 { 0.0 } else { 0.5 },
                    if corner & 4 == 0 { 2.0 } else { 2.5 },
                ];
                let z = c.world_to_camera_point(p)[2];
                assert!(z > c.near && z < c.far, "view {i}: depth {z}");
                let [u, v] = c.project_point(p).unwrap();
                assert!(
                    (0.0..128.0).contains(&u) && (0.0..128.0).contains(&v),
                    "view {i}: corner {p:?} at ({u}, {v})"
                );
            }
        }
    }

    #[test]
    fn directions_are_unit_and_cover_both_hemispheres() {
        let d = sphere_directions(48);
        for v in &d {
            let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let mean: [f32; 3] = std::array::from_fn(|a| d.iter().map(|v| v[a]).sum::<f32>() / 48.0);
        assert!(mean.iter().all(|m| m.abs() < 0.05), "{mean:?}");
        assert!(d.iter().any(|v| v[1] > 0.95) && d.iter().any(|v| v[1] < -0.95));
    }
}
