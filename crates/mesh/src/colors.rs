//! Vertex colours sampled from the colour renders of the fusion views.
//!
//! A vertex takes, from each view that sees it, the colour of the pixel it
//! projects to, un-premultiplied (`rgb / alpha`), weighted by how squarely
//! the view faces the surface (the cosine between the vertex normal and the
//! direction to the camera: grazing views smear colours across the
//! surface). A view sees the vertex when the pixel is surface
//! (alpha ≥ [`SURFACE_ALPHA`]) and its expected depth is within the
//! truncation distance of the vertex's depth (otherwise something else is
//! in front). Vertices no view sees (deep in a crevice) take the mean of
//! their coloured neighbours, repeatedly.

use rayon::prelude::*;
use splatforge_render::Camera;

use crate::depth::{ViewRender, SURFACE_ALPHA};
use crate::tsdf::Projector;
use crate::Mesh;

/// Colour of a vertex that neither a view nor a neighbour colours.
const FALLBACK_GREY: [f32; 3] = [0.5; 3];

/// Sets `mesh.colors` from the renders (needs `mesh.normals`).
pub fn sample_vertex_colors(mesh: &mut Mesh, sampler: &ColorSampler<'_>) {
    let sampled: Vec<Option<[f32; 3]>> = mesh
        .positions
        .par_iter()
        .zip(&mesh.normals)
        .map(|(&p, &n)| sampler.sample(p, n))
        .collect();
    mesh.colors = fill_from_neighbours(mesh, sampled);
}

/// The colour of surface points as the views see them (module docs).
pub struct ColorSampler<'a> {
    views: Vec<(Projector, [f32; 3], &'a ViewRender)>,
    tolerance: f32,
}

impl<'a> ColorSampler<'a> {
    /// `tolerance`: the depth difference (scene units) within which a view
    /// sees a point.
    pub fn new(cameras: &[Camera], renders: &'a [ViewRender], tolerance: f32) -> Self {
        ColorSampler {
            views: cameras
                .iter()
                .zip(renders)
                .map(|(c, r)| (Projector::new(c), c.position(), r))
                .collect(),
            tolerance,
        }
    }

    /// The weighted mean colour of point `p` with unit normal `n` over the
    /// views that see it; `None` when none does.
    pub fn sample(&self, p: [f32; 3], n: [f32; 3]) -> Option<[f32; 3]> {
        let mut sum = [0.0f32; 3];
        let mut weight = 0.0f32;
        for (proj, eye, render) in &self.views {
            let to_eye = [eye[0] - p[0], eye[1] - p[1], eye[2] - p[2]];
            let len =
                (to_eye[0] * to_eye[0] + to_eye[1] * to_eye[1] + to_eye[2] * to_eye[2]).sqrt();
            let cosine = (n[0] * to_eye[0] + n[1] * to_eye[1] + n[2] * to_eye[2]) / len;
            if !(cosine > 0.0) {
                continue;
            }
            let Some((u, v, z)) = proj.project(p) else {
                continue;
            };
            let Some(pixel) = render.pixel_at(u, v) else {
                continue;
            };
            let alpha = render.alpha[pixel];
            if alpha < SURFACE_ALPHA || (render.depth[pixel] - z).abs() > self.tolerance {
                continue;
            }
            let w = cosine.powi(4);
            for c in 0..3 {
                sum[c] += w * render.rgb[pixel * 3 + c] / alpha;
            }
            weight += w;
        }
        (weight > 0.0).then(|| sum.map(|s| (s / weight).clamp(0.0, 1.0)))
    }
}

/// Gives each uncoloured vertex the mean colour of its coloured neighbours,
/// sweep after sweep until no sweep colours more; what is left is grey.
fn fill_from_neighbours(mesh: &Mesh, mut colors: Vec<Option<[f32; 3]>>) -> Vec<[f32; 3]> {
    loop {
        let mut sum = vec![([0.0f32; 3], 0u32); colors.len()];
        for t in &mesh.triangles {
            for k in 0..3 {
                let (a, b) = (t[k] as usize, t[(k + 1) % 3] as usize);
                for (to, from) in [(a, b), (b, a)] {
                    if let (None, Some(c)) = (colors[to], colors[from]) {
                        for ch in 0..3 {
                            sum[to].0[ch] += c[ch];
                        }
                        sum[to].1 += 1;
                    }
                }
            }
        }
        let mut changed = false;
        for (color, (s, n)) in colors.iter_mut().zip(sum) {
            if color.is_none() && n > 0 {
                *color = Some(s.map(|v| v / n as f32));
                changed = true;
            }
        }
        if !changed {
            return colors
                .into_iter()
                .map(|c| c.unwrap_or(FALLBACK_GREY))
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncoloured_vertices_take_their_neighbours_colours() {
        let mesh = Mesh {
            positions: vec![[0.0; 3]; 5],
            triangles: vec![[0, 1, 2], [2, 3, 0], [4, 4, 4]],
            ..Default::default()
        };
        let colors = fill_from_neighbours(
            &mesh,
            vec![
                Some([1.0, 0.0, 0.0]),
                None,
                Some([0.0, 0.0, 1.0]),
                None,
                None,
            ],
        );
        assert_eq!(colors[1], [0.5, 0.0, 0.5]);
        assert_eq!(colors[3], [0.5, 0.0, 0.5]);
        assert_eq!(colors[4], FALLBACK_GREY);
    }
}
