//! A UV atlas and a baked baseColor texture: many more colour samples than
//! the vertices hold (a 2048² texture gives each of 100,000 triangles about
//! 25 texels, against half a vertex).
//!
//! The atlas is one square cell per pair of triangles, in rows: each
//! triangle gets a right triangle of its cell (one below the cell's
//! anti-diagonal, one above), whatever its shape in 3D. That wastes no time
//! on unwrapping and charts, keeps every triangle's texels its own, and
//! distorts long slivers (which get the same texels as a fat triangle);
//! QEM decimation leaves few slivers. Each texel of a cell belongs to the
//! triangle on its side of the anti-diagonal; its colour is that of the
//! surface point at its barycentric coordinates (clamped into the
//! triangle), sampled from the views as vertex colours are
//! ([`crate::colors::ColorSampler`]), else interpolated from the vertex
//! colours. The UV triangles are inset from the cell's border and the
//! diagonal by [`INSET_TEXELS`], so bilinear filtering within a triangle
//! reads only that triangle's texels.
//!
//! Vertices are split (three per triangle), since a vertex's UV differs
//! from triangle to triangle.

use rayon::prelude::*;

use crate::colors::ColorSampler;
use crate::{Mesh, MeshError};

/// Smallest cell side in texels: two insets each side and room between.
pub const MIN_CELL_TEXELS: u32 = 8;
/// Distance of the UV triangles from the cell's border, in texels (their
/// hypotenuses keep 2.5 of it from the diagonal, in u + v).
const INSET_TEXELS: f32 = 1.0;
/// Smallest and largest accepted texture side.
pub const MIN_TEXTURE_SIZE: u32 = 64;
pub const MAX_TEXTURE_SIZE: u32 = 8192;

/// A square sRGB texture (glTF's baseColor encoding), row-major RGB8.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Texture {
    pub size: u32,
    /// `[y][x][c]`.
    pub rgb: Vec<u8>,
}

impl Texture {
    /// Bilinear sample at `uv` (glTF's convention, texel centres at +0.5,
    /// clamped at the edges), as display colours in [0, 1].
    pub fn sample(&self, uv: [f32; 2]) -> [f32; 3] {
        let n = self.size as usize;
        let coordinate = |t: f32| {
            let x = (t * self.size as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let i = (x as usize).min(n.saturating_sub(2));
            (i, x - i as f32)
        };
        let ((x0, fx), (y0, fy)) = (coordinate(uv[0]), coordinate(uv[1]));
        let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
        let at = |x: usize, y: usize, c: usize| f32::from(self.rgb[(y * n + x) * 3 + c]) / 255.0;
        std::array::from_fn(|c| {
            let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
            let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
            top * (1.0 - fy) + bottom * fy
        })
    }
}

/// Where triangle `t` lies in the atlas: its cell's corner (texels) and
/// which half of the cell.
fn cell_of(t: usize, cells_per_row: usize, cell: f32) -> ([f32; 2], bool) {
    let k = t / 2;
    let corner = [
        (k % cells_per_row) as f32 * cell,
        (k / cells_per_row) as f32 * cell,
    ];
    (corner, t % 2 == 1)
}

/// The UV triangle (texels, relative to the cell's corner) of the lower
/// (`upper == false`) or upper half of a cell of side `cell`, its corners in
/// the order of the 3D triangle's vertices.
fn uv_triangle(upper: bool, cell: f32) -> [[f32; 2]; 3] {
    let (lo, hi) = (INSET_TEXELS, cell - INSET_TEXELS);
    // The hypotenuses lie where u + v is 2.5 insets from the diagonal's
    // `cell`: bilinear filtering reads texel centres less than one texel
    // away along each axis, so less than 2 away in u + v.
    let reach = cell - 3.5 * INSET_TEXELS;
    if upper {
        [[hi, hi], [cell - reach, hi], [hi, cell - reach]]
    } else {
        [[lo, lo], [reach, lo], [lo, reach]]
    }
}

/// Barycentric coordinates of `p` in triangle `tri`, clamped into it.
fn clamped_barycentric(p: [f32; 2], tri: &[[f32; 2]; 3]) -> [f32; 3] {
    let [a, b, c] = *tri;
    let det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]);
    let wb = ((p[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (p[1] - a[1])) / det;
    let wc = ((b[0] - a[0]) * (p[1] - a[1]) - (p[0] - a[0]) * (b[1] - a[1])) / det;
    let w = [1.0 - wb - wc, wb, wc].map(|v| v.max(0.0));
    let sum = w[0] + w[1] + w[2];
    w.map(|v| v / sum)
}

/// Gives `mesh` (with normals and vertex colours) a `size`² texture baked
/// from `sampler`, and UVs; see the module docs. Errors when `size` is out
/// of range or too small for the triangles ([`MIN_CELL_TEXELS`]).
pub fn bake_texture(mesh: &Mesh, sampler: &ColorSampler<'_>, size: u32) -> Result<Mesh, MeshError> {
    if !(MIN_TEXTURE_SIZE..=MAX_TEXTURE_SIZE).contains(&size) {
        return Err(MeshError::invalid(format!(
            "texture size {size} is out of range ({MIN_TEXTURE_SIZE} to {MAX_TEXTURE_SIZE})"
        )));
    }
    let n = mesh.triangles.len();
    let cells_per_row = (n.div_ceil(2) as f64).sqrt().ceil().max(1.0) as usize;
    let cell_texels = size as usize / cells_per_row;
    if cell_texels < MIN_CELL_TEXELS as usize {
        let needed = cells_per_row * MIN_CELL_TEXELS as usize;
        return Err(MeshError::invalid(format!(
            "a {size}² texture is too small for {n} faces: it needs at least {needed}², or fewer faces"
        )));
    }
    let cell = cell_texels as f32;
    let side = size as usize;
    let mut rgb = vec![0u8; side * side * 3];
    rgb.par_chunks_mut(side * 3)
        .enumerate()
        .for_each(|(y, row)| {
            let cy = y / cell_texels;
            for x in 0..side {
                let cx = x / cell_texels;
                if cx >= cells_per_row {
                    continue;
                }
                let local = [
                    (x - cx * cell_texels) as f32 + 0.5,
                    (y - cy * cell_texels) as f32 + 0.5,
                ];
                let upper = local[0] + local[1] >= cell;
                let t = 2 * (cy * cells_per_row + cx) + usize::from(upper);
                if t >= n {
                    continue;
                }
                let w = clamped_barycentric(local, &uv_triangle(upper, cell));
                let corners = mesh.triangles[t].map(|i| i as usize);
                let mix = |a: &[[f32; 3]]| -> [f32; 3] {
                    std::array::from_fn(|k| (0..3).map(|j| w[j] * a[corners[j]][k]).sum())
                };
                let p = mix(&mesh.positions);
                let normal = mix(&mesh.normals);
                let len = normal.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                let color = sampler
                    .sample(p, normal.map(|v| v / len))
                    .unwrap_or_else(|| mix(&mesh.colors));
                for c in 0..3 {
                    row[x * 3 + c] = (color[c].clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        });
    let mut out = Mesh {
        texture: Some(Texture { size, rgb }),
        ..Default::default()
    };
    for (t, tri) in mesh.triangles.iter().enumerate() {
        let (corner, upper) = cell_of(t, cells_per_row, cell);
        let base = out.positions.len() as u32;
        for (j, uv) in uv_triangle(upper, cell).iter().enumerate() {
            let v = tri[j] as usize;
            out.positions.push(mesh.positions[v]);
            out.normals.push(mesh.normals[v]);
            out.uvs.push([
                (corner[0] + uv[0]) / size as f32,
                (corner[1] + uv[1]) / size as f32,
            ]);
        }
        out.triangles.push([base, base + 1, base + 2]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_texel_of_a_uv_triangle_and_its_bilinear_reach_is_its_own() {
        for cell in [8.0f32, 13.0] {
            for upper in [false, true] {
                let tri = uv_triangle(upper, cell);
                for p in tri {
                    // Texel centres within one texel of a corner (what
                    // bilinear filtering reads) are on the triangle's side.
                    for (dx, dy) in [(-1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (1.0, -1.0)] {
                        let (x, y) = (p[0] + dx, p[1] + dy);
                        assert!((0.0..=cell).contains(&x) && (0.0..=cell).contains(&y));
                        assert_eq!(x + y >= cell, upper, "cell {cell} upper {upper} {p:?}");
                    }
                }
            }
        }
        let w = clamped_barycentric([0.0, 0.0], &uv_triangle(false, 8.0));
        assert_eq!(w, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn texture_sampling_is_bilinear_and_clamped() {
        let texture = Texture {
            size: 2,
            rgb: vec![0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255],
        };
        assert_eq!(texture.sample([0.25, 0.25]), [0.0; 3]);
        assert_eq!(texture.sample([0.75, 0.5]), [1.0; 3]);
        assert_eq!(texture.sample([0.5, 0.5]), [0.5; 3]);
        assert_eq!(texture.sample([-3.0, 9.0]), [0.0; 3]);
    }
}
