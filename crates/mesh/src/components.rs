//! Keeps the large connected components of a mesh and drops the specks:
//! the isolated blobs that floaters (stray Gaussians around a splat) leave
//! in the fused volume.

use crate::Mesh;

/// A component is kept when it has at least this fraction of the largest
/// component's triangles: a separate part of the object (a hammer beside a
/// hand, a cherry on a cake) is far above it, a floater's speck far below.
pub const KEEP_FRACTION: f64 = 0.01;

/// Disjoint sets over vertices, with path halving.
struct DisjointSets {
    parent: Vec<u32>,
}

impl DisjointSets {
    fn new(n: usize) -> Self {
        DisjointSets {
            parent: (0..n as u32).collect(),
        }
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grandparent = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grandparent;
            x = grandparent;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb) as usize] = ra.min(rb);
        }
    }
}

/// The component (a representative vertex) of each triangle; triangles
/// sharing a vertex are in one component.
pub fn triangle_components(mesh: &Mesh) -> Vec<u32> {
    let mut sets = DisjointSets::new(mesh.positions.len());
    for t in &mesh.triangles {
        sets.union(t[0], t[1]);
        sets.union(t[0], t[2]);
    }
    mesh.triangles.iter().map(|t| sets.find(t[0])).collect()
}

/// Drops the components with fewer than `fraction` × the largest
/// component's triangles, and the vertices no triangle uses any more.
/// Returns the number of components kept.
pub fn keep_large_components(mesh: &mut Mesh, fraction: f64) -> usize {
    let component = triangle_components(mesh);
    let mut size = vec![0usize; mesh.positions.len()];
    for &c in &component {
        size[c as usize] += 1;
    }
    let largest = size.iter().copied().max().unwrap_or(0);
    let min_size = ((largest as f64 * fraction).ceil() as usize).max(1);
    let kept = size.iter().filter(|&&s| s >= min_size).count();
    let mut keep = component.iter().map(|&c| size[c as usize] >= min_size);
    mesh.triangles.retain(|_| keep.next().unwrap_or(false));
    mesh.remove_unused_vertices();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tetrahedron of `scale` at `offset`, appended to `mesh`.
    fn add_tetrahedron(mesh: &mut Mesh, offset: f32, scale: f32) {
        let base = mesh.positions.len() as u32;
        for p in [
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ] {
            mesh.positions.push(p.map(|v: f32| v * scale + offset));
        }
        for t in [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]] {
            mesh.triangles.push(t.map(|i| base + i));
        }
    }

    #[test]
    fn small_components_go_and_large_ones_stay() {
        let mut mesh = Mesh::default();
        add_tetrahedron(&mut mesh, 0.0, 1.0);
        add_tetrahedron(&mut mesh, 5.0, 0.1);
        add_tetrahedron(&mut mesh, 9.0, 2.0);
        assert_eq!(keep_large_components(&mut mesh, 1.0), 3);
        assert_eq!(mesh.triangles.len(), 12);

        // A big component of 400 triangles: the 4-triangle specks are 1 %.
        let mut mesh = Mesh::default();
        for _ in 0..100 {
            let base = mesh.positions.len() as u32;
            add_tetrahedron(&mut mesh, 0.0, 1.0);
            if base > 0 {
                // Chain each tetrahedron to the previous one.
                mesh.triangles.push([base - 1, base, base + 1]);
            }
        }
        let big = mesh.triangles.len();
        add_tetrahedron(&mut mesh, 50.0, 1.0);
        assert_eq!(keep_large_components(&mut mesh, 0.02), 1);
        assert_eq!(mesh.triangles.len(), big);
        assert_eq!(mesh.positions.len(), 400);
        assert!(mesh.triangles.iter().flatten().all(|&i| (i as usize) < 400));
    }
}
