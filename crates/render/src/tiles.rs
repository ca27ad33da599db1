//! Stage 2: tile binning and per-tile depth sort (gsplat's
//! `isect_tiles` + `isect_offset_encode`, done with a counting sort).
//!
//! The image is cut into [`TILE_SIZE`]×[`TILE_SIZE`] pixel tiles, numbered
//! row-major (`tile = ty · tiles_x + tx`). A visible Gaussian is listed in
//! every tile overlapped by the square `mean2d ± radius`:
//! `tx ∈ [floor((x − r)/16), ceil((x + r)/16))`, clamped to the grid (and
//! likewise in y). Each tile's list is sorted front to back by camera-space
//! depth; equal depths keep ascending Gaussian index (a stable sort), so the
//! result is fully deterministic.

use rayon::prelude::*;

use crate::error::RenderError;
use crate::project::Projected;
use crate::real::Real;

/// Tile side in pixels.
pub const TILE_SIZE: u32 = 16;

/// The tile layout of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub width: u32,
    pub height: u32,
    pub tiles_x: u32,
    pub tiles_y: u32,
}

impl TileGrid {
    pub fn new(width: u32, height: u32) -> Self {
        TileGrid {
            width,
            height,
            tiles_x: width.div_ceil(TILE_SIZE),
            tiles_y: height.div_ceil(TILE_SIZE),
        }
    }

    pub fn num_tiles(&self) -> usize {
        self.tiles_x as usize * self.tiles_y as usize
    }

    /// Pixel rectangle `[x0, x1) × [y0, y1)` of a tile (clipped to the image).
    pub fn tile_pixels(&self, tile: usize) -> (u32, u32, u32, u32) {
        let tx = (tile % self.tiles_x as usize) as u32;
        let ty = (tile / self.tiles_x as usize) as u32;
        let x0 = tx * TILE_SIZE;
        let y0 = ty * TILE_SIZE;
        (
            x0,
            y0,
            (x0 + TILE_SIZE).min(self.width),
            (y0 + TILE_SIZE).min(self.height),
        )
    }

    /// Tiles `[tx0, tx1) × [ty0, ty1)` overlapped by `mean2d ± radius`;
    /// `None` when empty.
    pub fn tile_range<F: Real>(&self, mean2d: [F; 2], radius: F) -> Option<(u32, u32, u32, u32)> {
        let (x, y, r) = (mean2d[0].to_f64(), mean2d[1].to_f64(), radius.to_f64());
        let ts = TILE_SIZE as f64;
        let clampx = |v: f64| v.clamp(0.0, self.tiles_x as f64) as u32;
        let clampy = |v: f64| v.clamp(0.0, self.tiles_y as f64) as u32;
        let tx0 = clampx(((x - r) / ts).floor());
        let tx1 = clampx(((x + r) / ts).ceil());
        let ty0 = clampy(((y - r) / ts).floor());
        let ty1 = clampy(((y + r) / ts).ceil());
        (tx0 < tx1 && ty0 < ty1).then_some((tx0, tx1, ty0, ty1))
    }
}

/// For every tile, the Gaussians overlapping it, front to back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TileBins {
    /// `offsets[t]..offsets[t + 1]` indexes `gaussian_ids` for tile `t`.
    pub offsets: Vec<usize>,
    /// Gaussian indices, grouped by tile, depth-sorted within each tile.
    pub gaussian_ids: Vec<u32>,
}

impl TileBins {
    /// The depth-sorted Gaussians of tile `t`.
    pub fn tile(&self, t: usize) -> &[u32] {
        &self.gaussian_ids[self.offsets[t]..self.offsets[t + 1]]
    }

    /// Total number of (tile, Gaussian) pairs.
    pub fn num_intersections(&self) -> usize {
        self.gaussian_ids.len()
    }
}

/// Splits `data` into consecutive mutable segments at `offsets`.
fn split_segments<'a, T>(mut data: &'a mut [T], offsets: &[usize]) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (head, tail) = data.split_at_mut(w[1] - w[0]);
        out.push(head);
        data = tail;
    }
    out
}

/// Bins the visible Gaussians of one camera into tiles and depth-sorts each
/// tile. `camera` is only used in the error. Fails when the number of
/// intersections exceeds `max_intersections`.
pub fn bin_gaussians<F: Real>(
    projected: &[Projected<F>],
    grid: &TileGrid,
    max_intersections: usize,
    camera: usize,
) -> Result<TileBins, RenderError> {
    let num_tiles = grid.num_tiles();
    // Pass 1: count per tile.
    let mut counts = vec![0usize; num_tiles + 1];
    let mut total: u64 = 0;
    let tx = grid.tiles_x as usize;
    for p in projected.iter().filter(|p| p.is_visible()) {
        if let Some((x0, x1, y0, y1)) = grid.tile_range(p.mean2d, p.radius) {
            total += (x1 - x0) as u64 * (y1 - y0) as u64;
            if total > max_intersections as u64 {
                return Err(RenderError::TooManyIntersections {
                    camera,
                    count: total,
                    limit: max_intersections,
                });
            }
            for ty in y0..y1 {
                for t in x0..x1 {
                    counts[ty as usize * tx + t as usize] += 1;
                }
            }
        }
    }
    // Exclusive prefix sum → offsets.
    let mut offsets = Vec::with_capacity(num_tiles + 1);
    let mut acc = 0usize;
    for &n in &counts[..num_tiles] {
        offsets.push(acc);
        acc += n;
    }
    offsets.push(acc);
    // Pass 2: fill (depth key, id) in ascending Gaussian order.
    let mut cursor = offsets.clone();
    let mut keyed: Vec<(u64, u32)> = vec![(0, 0); acc];
    for (i, p) in projected.iter().enumerate().filter(|(_, p)| p.is_visible()) {
        if let Some((x0, x1, y0, y1)) = grid.tile_range(p.mean2d, p.radius) {
            let key = p.depth.sort_key();
            for ty in y0..y1 {
                for t in x0..x1 {
                    let tile = ty as usize * tx + t as usize;
                    keyed[cursor[tile]] = (key, i as u32);
                    cursor[tile] += 1;
                }
            }
        }
    }
    // Pass 3: sort each tile by (depth, index) — equal to a stable depth sort.
    split_segments(&mut keyed, &offsets)
        .into_par_iter()
        .for_each(|seg| seg.sort_unstable());
    let gaussian_ids = keyed.into_iter().map(|(_, id)| id).collect();
    Ok(TileBins {
        offsets,
        gaussian_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::seeded_rng;

    fn splat(x: f32, y: f32, r: f32, depth: f32) -> Projected<f32> {
        Projected {
            mean2d: [x, y],
            radius: r,
            depth,
            opacity: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn grid_dimensions_round_up() {
        let g = TileGrid::new(518, 518);
        assert_eq!((g.tiles_x, g.tiles_y), (33, 33));
        assert_eq!(g.tile_pixels(32), (512, 0, 518, 16));
        let g = TileGrid::new(32, 16);
        assert_eq!(g.num_tiles(), 2);
    }

    #[test]
    fn tile_range_covers_the_square_and_clamps() {
        let g = TileGrid::new(64, 64);
        assert_eq!(g.tile_range([20.0f32, 20.0], 3.0), Some((1, 2, 1, 2)));
        assert_eq!(g.tile_range([16.0f32, 16.0], 1.0), Some((0, 2, 0, 2)));
        assert_eq!(g.tile_range([-100.0f32, 10.0], 5.0), None);
        assert_eq!(g.tile_range([10.0f32, 10.0], 1e30), Some((0, 4, 0, 4)));
    }

    /// Binning agrees with a brute-force listing; each tile is sorted by
    /// depth with ties in index order; culled Gaussians are absent.
    #[test]
    fn binning_matches_brute_force() {
        let grid = TileGrid::new(70, 50);
        let mut rng = seeded_rng(3);
        let mut ps: Vec<Projected<f32>> = (0..300)
            .map(|_| {
                let depth = (rng.uniform(1.0, 4.0) * 4.0).round() as f32 / 4.0; // many ties
                splat(
                    rng.uniform(-20.0, 90.0) as f32,
                    rng.uniform(-20.0, 70.0) as f32,
                    rng.uniform(1.0, 25.0).ceil() as f32,
                    depth,
                )
            })
            .collect();
        for p in ps.iter_mut().step_by(7) {
            p.radius = 0.0;
        }
        let bins = bin_gaussians(&ps, &grid, usize::MAX, 0).unwrap();
        for t in 0..grid.num_tiles() {
            let (x0, y0, x1, y1) = grid.tile_pixels(t);
            let tx = x0 / TILE_SIZE;
            let ty = y0 / TILE_SIZE;
            let _ = (x1, y1);
            let mut want: Vec<u32> = (0..ps.len() as u32)
                .filter(|&i| {
                    let p = &ps[i as usize];
                    p.is_visible()
                        && grid
                            .tile_range(p.mean2d, p.radius)
                            .is_some_and(|(a, b, c, d)| tx >= a && tx < b && ty >= c && ty < d)
                })
                .collect();
            want.sort_by(|&a, &b| {
                ps[a as usize]
                    .depth
                    .partial_cmp(&ps[b as usize].depth)
                    .unwrap()
            });
            assert_eq!(bins.tile(t), &want[..], "tile {t}");
        }
    }

    #[test]
    fn intersection_limit_is_an_error() {
        let grid = TileGrid::new(256, 256);
        let ps = vec![splat(128.0, 128.0, 1000.0, 1.0); 10];
        assert_eq!(
            bin_gaussians(&ps, &grid, 10_000, 0)
                .unwrap()
                .num_intersections(),
            2560
        );
        assert!(matches!(
            bin_gaussians(&ps, &grid, 1000, 2),
            Err(RenderError::TooManyIntersections { camera: 2, .. })
        ));
    }

    #[test]
    fn empty_input_gives_empty_tiles() {
        let grid = TileGrid::new(40, 40);
        let bins = bin_gaussians::<f32>(&[], &grid, 100, 0).unwrap();
        assert_eq!(bins.offsets.len(), grid.num_tiles() + 1);
        assert_eq!(bins.num_intersections(), 0);
    }
}
