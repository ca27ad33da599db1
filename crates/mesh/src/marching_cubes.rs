//! Marching cubes: a level set of a sampled field as triangles.
//!
//! Instead of copying the classic 256-case triangle table, the table is
//! derived once ([`case_table`]) by tracing, for each case, the closed
//! loops in which the surface cuts the cube: on each face the crossing
//! points of its edges are joined so that the face's inside corners are cut
//! off one run at a time (an ambiguous face, two inside corners on a
//! diagonal, is therefore always split with the inside corners apart).
//! That decision depends only on the face's four corners, which the two
//! cells sharing the face see alike, so neighbouring cells always agree on
//! the segments of their common face and the mesh is watertight: every edge
//! of a closed surface is shared by exactly two triangles. Each loop is
//! fanned into triangles, counter-clockwise seen from the positive (outside)
//! side.
//!
//! Vertices are shared between cells: each lies on a grid edge, and is
//! created once per crossed grid edge, at the linearly interpolated level.

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::Mesh;

/// Corner `c` of a cell is at offset `(c & 1, c >> 1 & 1, c >> 2 & 1)`.
fn corner_offset(c: usize) -> [usize; 3] {
    [c & 1, (c >> 1) & 1, (c >> 2) & 1]
}

/// The cell edge between corners `a` and `b` (differing in one bit):
/// `axis · 4 + (the other two bits of the lower corner)`.
fn edge_between(a: usize, b: usize) -> u8 {
    let low = a.min(b);
    let axis = (a ^ b).trailing_zeros() as usize;
    let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
    (axis * 4 + ((low >> u) & 1) + 2 * ((low >> v) & 1)) as u8
}

/// The lower corner and axis of cell edge `e`.
fn edge_corner_axis(e: u8) -> (usize, usize) {
    let axis = e as usize / 4;
    let m = e as usize % 4;
    let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
    (((m & 1) << u) | ((m >> 1) << v), axis)
}

/// The four corners of each cell face, counter-clockwise seen from outside
/// the cell.
fn faces() -> [[usize; 4]; 6] {
    let mut out = [[0; 4]; 6];
    for axis in 0..3 {
        let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
        for side in 0..2 {
            // (u, v) = (0,0), (1,0), (1,1), (0,1) turns counter-clockwise
            // around +axis (u × v = axis); the face at side 0 faces −axis.
            let mut ring =
                [(0, 0), (1, 0), (1, 1), (0, 1)].map(|(a, b)| (side << axis) | (a << u) | (b << v));
            if side == 0 {
                ring.reverse();
            }
            out[axis * 2 + side] = ring;
        }
    }
    out
}

/// One closed loop in which the surface cuts a cell, triangulated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellLoop {
    /// The cell edges the loop crosses, in order.
    pub edges: Vec<u8>,
    /// Triangles over local vertices: `0..12` the cell edges' crossings,
    /// [`LOOP_CENTROID`] the mean of this loop's crossings.
    pub triangles: Vec<[u8; 3]>,
}

/// The local vertex of a loop's centroid in [`CellLoop::triangles`].
pub const LOOP_CENTROID: u8 = 12;

/// The loops of each of the 256 cases (bit `c` set = corner `c` inside,
/// i.e. its value is negative). See the module docs.
pub fn case_table() -> &'static [Vec<CellLoop>; 256] {
    static TABLE: OnceLock<[Vec<CellLoop>; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(triangulate_case))
}

/// Whether cell edges `a` and `b` lie on a common face of the cell (and so
/// are both edges of the neighbouring cell across it).
fn share_a_face(a: u8, b: u8) -> bool {
    let (ca, axis_a) = edge_corner_axis(a);
    let (cb, axis_b) = edge_corner_axis(b);
    (0..3).any(|f| f != axis_a && f != axis_b && (ca >> f & 1) == (cb >> f & 1))
}

fn triangulate_case(case: usize) -> Vec<CellLoop> {
    let inside = |c: usize| case >> c & 1 == 1;
    // next[e]: where the surface's boundary loop goes after crossing edge e.
    let mut next = [u8::MAX; 12];
    for ring in faces() {
        for i in 0..4 {
            let (a, b) = (ring[i], ring[(i + 1) % 4]);
            if !inside(a) || inside(b) {
                continue;
            }
            // Leaving the inside at a→b: the segment cuts off the run of
            // inside corners that ends at a, back to where it was entered.
            let mut j = i;
            while inside(ring[(j + 3) % 4]) {
                j = (j + 3) % 4;
            }
            next[edge_between(a, b) as usize] = edge_between(ring[(j + 3) % 4], ring[j]);
        }
    }
    let mut loops = Vec::new();
    let mut visited = [false; 12];
    for start in 0..12 {
        if next[start] == u8::MAX || visited[start] {
            continue;
        }
        let mut ring = Vec::new();
        let mut e = start;
        while !visited[e] {
            visited[e] = true;
            ring.push(e as u8);
            e = next[e] as usize;
        }
        // The loop turns around the inside; reversed, it faces outside.
        ring.reverse();
        loops.push(CellLoop {
            triangles: triangulate_loop(&ring),
            edges: ring,
        });
    }
    loops
}

/// Fans `ring` from a vertex whose diagonals all join edges on no common
/// face: a diagonal between two edges of one face would also be an edge of
/// the neighbouring cell's triangles, and a mesh edge of four triangles is
/// not a manifold. When no vertex qualifies, fans from the centroid.
fn triangulate_loop(ring: &[u8]) -> Vec<[u8; 3]> {
    let k = ring.len();
    let safe_apex = (0..k).find(|&r| (2..k - 1).all(|d| !share_a_face(ring[r], ring[(r + d) % k])));
    match safe_apex {
        Some(r) => (1..k - 1)
            .map(|d| [ring[r], ring[(r + d) % k], ring[(r + d + 1) % k]])
            .collect(),
        None => (0..k)
            .map(|i| [LOOP_CENTROID, ring[i], ring[(i + 1) % k]])
            .collect(),
    }
}

/// A loop centroid's vertex id and the ids of the crossings it is the mean of.
type LoopCentroid = (u64, Vec<u64>);

/// Extracts the level set `level` of `values` (`dims[0] × dims[1] × dims[2]`
/// samples, x fastest, at `origin + voxel · (i, j, k)`; below `level` is
/// inside). Samples that are NaN count as outside.
pub fn extract(values: &[f32], dims: [usize; 3], origin: [f32; 3], voxel: f32, level: f32) -> Mesh {
    let [nx, ny, nz] = dims;
    assert_eq!(values.len(), nx * ny * nz, "values do not match the dims");
    if nx < 2 || ny < 2 || nz < 2 {
        return Mesh::default();
    }
    let table = case_table();
    let stride = [1, nx, nx * ny];
    let inside = |s: usize| values[s] < level;
    let samples = (nx * ny * nz) as u64;
    // Vertices as global ids: a crossed grid edge is `sample · 3 + axis`; a
    // loop centroid `3 · samples + cell · 4 + loop` (a cell has at most 4
    // loops), listed with the edges it is the mean of.
    let slabs: Vec<(Vec<[u64; 3]>, Vec<LoopCentroid>)> = (0..nz - 1)
        .into_par_iter()
        .map(|k| {
            let mut triangles = Vec::new();
            let mut centroids = Vec::new();
            for j in 0..ny - 1 {
                for i in 0..nx - 1 {
                    let base = i + j * nx + k * nx * ny;
                    let sample_of = |corner: usize| {
                        let o = corner_offset(corner);
                        base + o[0] * stride[0] + o[1] * stride[1] + o[2] * stride[2]
                    };
                    let case = (0..8)
                        .filter(|&c| inside(sample_of(c)))
                        .fold(0, |m, c| m | 1 << c);
                    let edge_id = |e: u8| {
                        let (corner, axis) = edge_corner_axis(e);
                        sample_of(corner) as u64 * 3 + axis as u64
                    };
                    for (l, cell_loop) in table[case].iter().enumerate() {
                        let centroid = 3 * samples + base as u64 * 4 + l as u64;
                        let id = |v: u8| {
                            if v == LOOP_CENTROID {
                                centroid
                            } else {
                                edge_id(v)
                            }
                        };
                        triangles.extend(cell_loop.triangles.iter().map(|t| t.map(id)));
                        if cell_loop
                            .triangles
                            .iter()
                            .flatten()
                            .any(|&v| v == LOOP_CENTROID)
                        {
                            centroids.push((
                                centroid,
                                cell_loop.edges.iter().map(|&e| edge_id(e)).collect(),
                            ));
                        }
                    }
                }
            }
            (triangles, centroids)
        })
        .collect();
    let mut triangles = Vec::new();
    let mut centroids = Vec::new();
    for (t, c) in slabs {
        triangles.extend(t);
        centroids.extend(c);
    }
    let mut ids: Vec<u64> = triangles.iter().flatten().copied().collect();
    ids.par_sort_unstable();
    ids.dedup();
    let edge_position = |id: u64| {
        let (s, axis) = ((id / 3) as usize, (id % 3) as usize);
        let (v0, v1) = (values[s], values[s + stride[axis]]);
        let t = ((level - v0) / (v1 - v0)).clamp(0.0, 1.0);
        let (i, j, k) = (s % nx, (s / nx) % ny, s / (nx * ny));
        let mut p = [
            origin[0] + voxel * i as f32,
            origin[1] + voxel * j as f32,
            origin[2] + voxel * k as f32,
        ];
        p[axis] += voxel * t;
        p
    };
    // Centroids come after the edges in `ids` and in `centroids` order.
    centroids.sort_unstable_by_key(|c| c.0);
    let edge_count = ids.len() - centroids.len();
    let mut positions: Vec<[f32; 3]> = ids[..edge_count]
        .par_iter()
        .map(|&id| edge_position(id))
        .collect();
    positions.extend(centroids.iter().map(|(_, edges)| {
        let sum = edges
            .iter()
            .map(|&e| edge_position(e))
            .fold([0.0f32; 3], |s, p| [s[0] + p[0], s[1] + p[1], s[2] + p[2]]);
        sum.map(|v| v / edges.len() as f32)
    }));
    let index = |id: u64| ids.binary_search(&id).expect("every vertex id is listed") as u32;
    Mesh {
        positions,
        triangles: triangles.par_iter().map(|t| t.map(index)).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Each undirected edge → how many triangles use it.
    pub(crate) fn edge_use_counts(mesh: &Mesh) -> HashMap<(u32, u32), u32> {
        let mut counts = HashMap::new();
        for t in &mesh.triangles {
            for k in 0..3 {
                let (a, b) = (t[k], t[(k + 1) % 3]);
                *counts.entry((a.min(b), a.max(b))).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Surface area and enclosed (signed) volume.
    pub(crate) fn area_and_volume(mesh: &Mesh) -> (f64, f64) {
        let mut area = 0.0;
        let mut volume = 0.0;
        for t in &mesh.triangles {
            let a = mesh.positions[t[0] as usize].map(f64::from);
            let n = crate::normals::area_normal(mesh, t);
            area += 0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            volume += (a[0] * n[0] + a[1] * n[1] + a[2] * n[2]) / 6.0;
        }
        (area, volume)
    }

    fn sampled(
        dims: [usize; 3],
        origin: [f32; 3],
        voxel: f32,
        f: impl Fn([f32; 3]) -> f32,
    ) -> Vec<f32> {
        let mut v = Vec::with_capacity(dims.iter().product());
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    v.push(f([
                        origin[0] + voxel * i as f32,
                        origin[1] + voxel * j as f32,
                        origin[2] + voxel * k as f32,
                    ]));
                }
            }
        }
        v
    }

    #[test]
    fn sphere_area_and_volume_match_and_the_mesh_is_watertight() {
        let r = 0.8f32;
        let (n, voxel, origin) = (41, 0.05f32, [-1.0f32; 3]);
        let values = sampled([n; 3], origin, voxel, |p| {
            (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - r
        });
        let mesh = extract(&values, [n; 3], origin, voxel, 0.0);
        let (area, volume) = area_and_volume(&mesh);
        let pi = std::f64::consts::PI;
        let r = r as f64;
        let (true_area, true_volume) = (4.0 * pi * r * r, 4.0 / 3.0 * pi * r * r * r);
        // Positive volume: triangles are counter-clockwise from outside.
        assert!(
            (volume / true_volume - 1.0).abs() < 0.01,
            "volume {volume} vs {true_volume}"
        );
        assert!(
            (area / true_area - 1.0).abs() < 0.02,
            "area {area} vs {true_area}"
        );
        let counts = edge_use_counts(&mesh);
        assert!(
            counts.values().all(|&c| c == 2),
            "an edge not shared by exactly two faces"
        );
        // Euler characteristic of a sphere: V − E + F = 2.
        let euler = mesh.positions.len() as i64 - counts.len() as i64 + mesh.triangles.len() as i64;
        assert_eq!(euler, 2);
    }

    #[test]
    fn every_case_gives_closed_loops_and_random_fields_are_watertight() {
        // Any field, however noisy, gives a closed surface when the outer
        // layer is outside: the case table must agree across shared faces.
        let n = 12;
        let mut state = 0x1234_5678_9abc_def0u64;
        let values: Vec<f32> = (0..n * n * n)
            .map(|s| {
                let (i, j, k) = (s % n, (s / n) % n, s / (n * n));
                if i == 0 || j == 0 || k == 0 || i == n - 1 || j == n - 1 || k == n - 1 {
                    return 1.0;
                }
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 1000) as f32 / 1000.0 - 0.6
            })
            .collect();
        let mesh = extract(&values, [n; 3], [0.0; 3], 1.0, 0.0);
        assert!(mesh.triangles.len() > 100);
        let counts = edge_use_counts(&mesh);
        let mut histogram = std::collections::BTreeMap::new();
        for &c in counts.values() {
            *histogram.entry(c).or_insert(0) += 1;
        }
        // Every edge is shared by exactly two faces: closed and manifold.
        assert_eq!(
            histogram.keys().copied().collect::<Vec<u32>>(),
            vec![2],
            "{histogram:?}"
        );
        // Every case but all-out and all-in has a loop, of 3 to 12 crossings.
        for case in 0..256usize {
            let loops = &case_table()[case];
            assert_eq!(loops.is_empty(), case == 0 || case == 255, "case {case}");
            assert!(loops.iter().all(|l| (3..=12).contains(&l.edges.len())));
        }
    }
}
