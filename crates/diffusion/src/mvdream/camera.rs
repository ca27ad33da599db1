//! MVDream's camera conventions (the render cameras of the same views are
//! `splatforge_pipeline::cameras`).
//!
//! # MVDream (`mvdream/camera_utils.py`, `get_camera`)
//! World: Y up. The camera of view `i` sits on the unit sphere at
//! elevation `e` (positive = above the object) and azimuth
//! `a_i = azimuth_start + i·azimuth_span/num_frames`:
//! `p = (cos e·sin a, sin e, cos e·cos a)`, looking at the origin.
//! Its OpenGL camera-to-world matrix has columns
//! `[right, up, back, p]` with `forward = −p/|p|`,
//! `right = normalize(forward × (0,1,0))`, `up = right × forward`,
//! `back = −forward`. The UNet's camera input is this matrix
//! left-multiplied by `flip_yz = [[1,0,0,0],[0,0,−1,0],[0,1,0,0],[0,0,0,1]]`
//! (OpenGL world → Blender world, Z up), flattened row-major to 16 numbers.
//! MVDream defaults: 4 views, elevation 15°, azimuth_start 0°, span 360°.
//!
/// MVDream's default elevation in degrees (`get_camera`, positive = above).
pub const DEFAULT_ELEVATION_DEG: f32 = 15.0;

type M4 = [[f64; 4]; 4];

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn normalize(a: [f64; 3]) -> [f64; 3] {
    let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
    [a[0] / n, a[1] / n, a[2] / n]
}

/// MVDream's `create_camera_to_world_matrix(elevation, azimuth)`: OpenGL
/// camera-to-world on the unit sphere, Y-up world, row-major.
pub fn camera_to_world_opengl(elevation_deg: f64, azimuth_deg: f64) -> M4 {
    let (e, a) = (elevation_deg.to_radians(), azimuth_deg.to_radians());
    let p = [e.cos() * a.sin(), e.sin(), e.cos() * a.cos()];
    let forward = normalize([-p[0], -p[1], -p[2]]);
    let right = normalize(cross(forward, [0.0, 1.0, 0.0]));
    let up = normalize(cross(right, forward));
    let back = [-forward[0], -forward[1], -forward[2]];
    let mut m = [[0.0; 4]; 4];
    for r in 0..3 {
        m[r][0] = right[r];
        m[r][1] = up[r];
        m[r][2] = back[r];
        m[r][3] = p[r];
    }
    m[3][3] = 1.0;
    m
}

/// MVDream's `convert_opengl_to_blender`: `flip_yz · m`
/// (rows become `[row0, −row2, row1, row3]`).
pub fn opengl_to_blender(m: &M4) -> M4 {
    [m[0], m[2].map(|v| -v), m[1], m[3]]
}

/// Azimuths of MVDream's `get_camera`: `start + i·span/n`, i < n.
pub fn azimuths(num_frames: usize, azimuth_start_deg: f64, azimuth_span_deg: f64) -> Vec<f64> {
    let gap = azimuth_span_deg / num_frames as f64;
    (0..num_frames)
        .map(|i| azimuth_start_deg + i as f64 * gap)
        .collect()
}

/// The UNet's camera input: MVDream's `get_camera(num_frames, elevation,
/// azimuth_start, azimuth_span, blender_coord=True)`, one row of 16 per view.
pub fn camera_embeddings(
    num_frames: usize,
    elevation_deg: f64,
    azimuth_start_deg: f64,
    azimuth_span_deg: f64,
) -> Vec<[f32; 16]> {
    azimuths(num_frames, azimuth_start_deg, azimuth_span_deg)
        .into_iter()
        .map(|a| {
            let m = opengl_to_blender(&camera_to_world_opengl(elevation_deg, a));
            let mut out = [0f32; 16];
            for (i, v) in m.iter().flatten().enumerate() {
                out[i] = *v as f32;
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol,
                "element {i}: {x} vs {y}\n{a:?}\n{b:?}"
            );
        }
    }

    // Values worked out by hand from MVDream's formulas.
    // s = sin 15° = 0.258819, c = cos 15° = 0.965926.
    #[test]
    fn get_camera_default_elevation_15() {
        let (s, c) = (0.258_819_05f32, 0.965_925_8f32);
        let cams = camera_embeddings(4, 15.0, 0.0, 360.0);
        assert_eq!(cams.len(), 4);
        // Azimuth 0: p = (0, s, c); right = (1,0,0); up = (0, c, −s); back = (0, s, c).
        // OpenGL rows: [1,0,0,0], [0,c,s,s], [0,−s,c,c]; Blender: [r0, −r2, r1, r3].
        close(
            &cams[0],
            &[1., 0., 0., 0., 0., s, -c, -c, 0., c, s, s, 0., 0., 0., 1.],
            1e-6,
        );
        // Azimuth 90: p = (c, s, 0); right = (0,0,−1); up = (−s, c, 0); back = (c, s, 0).
        // OpenGL rows: [0,−s,c,c], [0,c,s,s], [−1,0,0,0].
        close(
            &cams[1],
            &[0., -s, c, c, 1., 0., 0., 0., 0., c, s, s, 0., 0., 0., 1.],
            1e-6,
        );
        // Azimuth 180: p = (0, s, −c); right = (−1,0,0); up = (0, c, s); back = (0, s, −c).
        // OpenGL rows: [−1,0,0,0], [0,c,s,s], [0,s,−c,−c].
        close(
            &cams[2],
            &[-1., 0., 0., 0., 0., -s, c, c, 0., c, s, s, 0., 0., 0., 1.],
            1e-6,
        );
        // Azimuth 270: p = (−c, s, 0); right = (0,0,1); up = (s, c, 0); back = (−c, s, 0).
        // OpenGL rows: [0,s,−c,−c], [0,c,s,s], [1,0,0,0].
        close(
            &cams[3],
            &[0., s, -c, -c, -1., 0., 0., 0., 0., c, s, s, 0., 0., 0., 1.],
            1e-6,
        );
    }

    #[test]
    fn get_camera_elevation_0_azimuth_start_90() {
        let cams = camera_embeddings(2, 0.0, 90.0, 360.0);
        // Azimuth 90, elevation 0: p = (1,0,0); right = (0,0,−1); up = (0,1,0); back = (1,0,0).
        // OpenGL rows [0,0,1,1], [0,1,0,0], [−1,0,0,0] → Blender [r0, −r2, r1].
        close(
            &cams[0],
            &[
                0., 0., 1., 1., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1.,
            ],
            1e-7,
        );
        // Azimuth 270: p = (−1,0,0); right = (0,0,1); up = (0,1,0); back = (−1,0,0).
        close(
            &cams[1],
            &[
                0., 0., -1., -1., -1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0., 1.,
            ],
            1e-7,
        );
    }
}
