//! Smoothed vertex normals: the area-weighted mean of the normals of the
//! triangles around each vertex (the sum of their unnormalised cross
//! products), so large faces count more than slivers.

use crate::Mesh;

/// The cross product `(b − a) × (c − a)` of triangle `[a, b, c]`: along its
/// outward normal, twice its area long.
pub fn area_normal(mesh: &Mesh, t: &[u32; 3]) -> [f64; 3] {
    let [a, b, c] = t.map(|i| mesh.positions[i as usize].map(f64::from));
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ]
}

/// Sets `mesh.normals`: one unit normal per vertex, pointing out of the
/// surface (triangles are counter-clockwise from outside). A vertex whose
/// triangles have no area gets +Y.
pub fn compute_smooth_normals(mesh: &mut Mesh) {
    let mut sum = vec![[0.0f64; 3]; mesh.positions.len()];
    for t in &mesh.triangles {
        let n = area_normal(mesh, t);
        for &i in t {
            for a in 0..3 {
                sum[i as usize][a] += n[a];
            }
        }
    }
    mesh.normals = sum
        .into_iter()
        .map(|n| {
            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            if len > 0.0 && len.is_finite() {
                n.map(|v| (v / len) as f32)
            } else {
                [0.0, 1.0, 0.0]
            }
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_of_a_tetrahedron_point_outwards() {
        let mut mesh = Mesh {
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
            ],
            triangles: vec![[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]],
            ..Default::default()
        };
        compute_smooth_normals(&mut mesh);
        let centroid = [0.25f32; 3];
        for (p, n) in mesh.positions.iter().zip(&mesh.normals) {
            let out: f32 = (0..3).map(|a| (p[a] - centroid[a]) * n[a]).sum();
            assert!(out > 0.0, "{p:?} {n:?}");
            let len: f32 = n.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((len - 1.0).abs() < 1e-5);
        }
        // The corner at the origin sees three equal faces: normal −(1,1,1)/√3.
        let k = -(1.0f32 / 3.0).sqrt();
        assert!(mesh.normals[0].iter().all(|&v| (v - k).abs() < 1e-5));
    }
}
