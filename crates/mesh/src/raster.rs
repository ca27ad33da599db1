//! A small CPU mesh rasterizer for evaluation: z-buffer, perspective-correct
//! interpolation of vertex colours or texture coordinates (bilinear
//! texture lookup), unlit (the colours are what a viewer
//! with `KHR_materials_unlit` shows), both faces drawn. Pixels are sampled
//! at their centres, as the splat rasterizer samples them.

use splatforge_render::Camera;

use crate::tsdf::Projector;
use crate::Mesh;

/// One view of a mesh: row-major, as the splat rasterizer's images.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshImage {
    pub width: u32,
    pub height: u32,
    /// `[y][x][c]` display colours, the background where nothing was drawn.
    pub rgb: Vec<f32>,
    /// `[y][x]`: whether a triangle covers the pixel.
    pub coverage: Vec<bool>,
}

/// Renders `mesh` (its texture, else its colours, else grey) from `camera` over
/// `background`. Triangles with a vertex nearer than the near plane are
/// skipped (the evaluation cameras are far from the object).
pub fn render_mesh(mesh: &Mesh, camera: &Camera, background: [f32; 3]) -> MeshImage {
    let (w, h) = (camera.width as usize, camera.height as usize);
    let proj = Projector::new(camera);
    let mut depth = vec![f32::INFINITY; w * h];
    let mut rgb: Vec<f32> = std::iter::repeat_n(background, w * h).flatten().collect();
    let mut coverage = vec![false; w * h];
    let projected: Vec<Option<(f32, f32, f32)>> =
        mesh.positions.iter().map(|&p| proj.project(p)).collect();
    let color = |i: u32| mesh.colors.get(i as usize).copied().unwrap_or([0.5; 3]);
    for t in &mesh.triangles {
        let (Some(a), Some(b), Some(c)) = (
            projected[t[0] as usize],
            projected[t[1] as usize],
            projected[t[2] as usize],
        ) else {
            continue;
        };
        let area = (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
        if area == 0.0 || !area.is_finite() {
            continue;
        }
        let x0 = a.0.min(b.0).min(c.0).floor().max(0.0) as usize;
        let x1 = (a.0.max(b.0).max(c.0).ceil().max(0.0) as usize).min(w);
        let y0 = a.1.min(b.1).min(c.1).floor().max(0.0) as usize;
        let y1 = (a.1.max(b.1).max(c.1).ceil().max(0.0) as usize).min(h);
        let colors = [color(t[0]), color(t[1]), color(t[2])];
        let uvs = (mesh.uvs.len() == mesh.positions.len()).then(|| t.map(|i| mesh.uvs[i as usize]));
        let inv_z = [1.0 / a.2, 1.0 / b.2, 1.0 / c.2];
        for y in y0..y1 {
            let py = y as f32 + 0.5;
            for x in x0..x1 {
                let px = x as f32 + 0.5;
                // Barycentric weights from the edge functions, normalised by
                // the signed area so either winding works.
                let wa = ((b.0 - px) * (c.1 - py) - (b.1 - py) * (c.0 - px)) / area;
                let wb = ((c.0 - px) * (a.1 - py) - (c.1 - py) * (a.0 - px)) / area;
                let wc = 1.0 - wa - wb;
                if wa < 0.0 || wb < 0.0 || wc < 0.0 {
                    continue;
                }
                // Perspective-correct: interpolate 1/z, and attributes / z.
                let pa = wa * inv_z[0];
                let pb = wb * inv_z[1];
                let pc = wc * inv_z[2];
                let s = pa + pb + pc;
                let z = 1.0 / s;
                let pixel = y * w + x;
                if z >= depth[pixel] {
                    continue;
                }
                depth[pixel] = z;
                coverage[pixel] = true;
                let color = match (&mesh.texture, &uvs) {
                    (Some(texture), Some(uv)) => texture.sample(std::array::from_fn(|k| {
                        (pa * uv[0][k] + pb * uv[1][k] + pc * uv[2][k]) / s
                    })),
                    _ => std::array::from_fn(|ch| {
                        (pa * colors[0][ch] + pb * colors[1][ch] + pc * colors[2][ch]) / s
                    }),
                };
                rgb[pixel * 3..pixel * 3 + 3].copy_from_slice(&color);
            }
        }
    }
    MeshImage {
        width: camera.width,
        height: camera.height,
        rgb,
        coverage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_square_facing_the_camera_covers_its_projection() {
        // A 1 × 1 square at z = 0 seen from 2 units away on +Z.
        let mesh = Mesh {
            positions: vec![
                [-0.5, -0.5, 0.0],
                [0.5, -0.5, 0.0],
                [0.5, 0.5, 0.0],
                [-0.5, 0.5, 0.0],
            ],
            triangles: vec![[0, 1, 2], [0, 2, 3]],
            colors: vec![[1.0, 0.0, 0.0]; 4],
            ..Default::default()
        };
        let cam = Camera::look_at([0.0, 0.0, 2.0], [0.0; 3], [0.0, 1.0, 0.0], 60.0, 100, 100);
        let img = render_mesh(&mesh, &cam, [1.0; 3]);
        let covered = img.coverage.iter().filter(|&&c| c).count() as f32;
        // The square spans 0.5 / 2 · f pixels each side of the centre.
        let side = 2.0 * 0.25 * cam.fy;
        assert!(
            (covered / (side * side) - 1.0).abs() < 0.05,
            "{covered} vs {}",
            side * side
        );
        assert_eq!(&img.rgb[(50 * 100 + 50) * 3..][..3], &[1.0, 0.0, 0.0]);
        assert_eq!(&img.rgb[..3], &[1.0, 1.0, 1.0]);
    }
}
