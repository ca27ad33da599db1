//! Windowed self-attention over sparse voxels: TRELLIS'
//! `sparse_windowed_scaled_dot_product_self_attention`
//! (`trellis/modules/sparse/attention/windowed_attn.py`).
//!
//! Each voxel attends to the voxels of its own batch item that fall in the same window: the
//! grid, shifted by `shift` voxels along every axis, is cut into cubes of `window_size`³
//! voxels, and voxel `(b, x, y, z)` lies in window `(b, ⌊(x+shift)/w⌋, ⌊(y+shift)/w⌋,
//! ⌊(z+shift)/w⌋)`. TRELLIS' Swin blocks alternate shift 0 and `window_size / 2`.
//!
//! TRELLIS serialises the voxels window by window (windows in ascending `(b, wx, wy, wz)`) and
//! runs flash-attn's variable-length kernel over the windows. Here the rows are gathered once
//! per tensor in order of window length (then serialisation order), so the windows of each
//! length are one contiguous `[windows, len, H·D]` batch of
//! [`splatforge_nn::ops::attention`] (at most `window_size³` distinct lengths, one call
//! each), and one more gather puts the results back in row order.

use candle_core::{Device, Tensor};
use splatforge_nn::ops;

use crate::{Result, TrellisError};

/// One non-empty window: its input rows, ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    rows: Vec<u32>,
}

/// Windows of one length: rows `start..start + windows · len` of the gathered tensors, one
/// attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LengthGroup {
    start: usize,
    windows: usize,
    len: usize,
}

/// How the rows of a sparse tensor split into attention windows: TRELLIS'
/// `calc_window_partition` for one window size and shift, with the gather and scatter
/// indices on the device of the features. Build it once per coordinate set and reuse it for
/// every block with the same window and shift (TRELLIS caches it on the tensor likewise).
#[derive(Debug, Clone)]
pub struct WindowPartition {
    groups: Vec<LengthGroup>,
    /// `[N]` `u32`: the input rows, windows by length, then in serialisation order.
    order: Tensor,
    /// `[N]` `u32`: for each input row, its position in `order`.
    restore: Tensor,
    rows: usize,
    windows: usize,
}

impl WindowPartition {
    /// The partition of voxels at `coords` (`(batch, x, y, z)`, as [`super::SparseTensor`])
    /// into windows of `window_size`³ voxels, the grid shifted by `shift` voxels along each
    /// axis; index tensors live on `device`.
    pub fn new(coords: &[[u32; 4]], window_size: u32, shift: u32, device: &Device) -> Result<Self> {
        let windows = serialize_windows(coords, window_size, shift)?;
        let mut by_len: Vec<&Window> = windows.iter().collect();
        // Stable: windows of one length stay in serialisation order.
        by_len.sort_by_key(|w| w.rows.len());
        let mut groups = Vec::new();
        let mut order = Vec::with_capacity(coords.len());
        for same_len in by_len.chunk_by(|a, b| a.rows.len() == b.rows.len()) {
            groups.push(LengthGroup {
                start: order.len(),
                windows: same_len.len(),
                len: same_len[0].rows.len(),
            });
            order.extend(same_len.iter().flat_map(|w| w.rows.iter().copied()));
        }
        let mut restore = vec![0u32; coords.len()];
        for (position, &row) in order.iter().enumerate() {
            restore[row as usize] = position as u32;
        }
        Ok(Self {
            groups,
            order: Tensor::from_vec(order, coords.len(), device)?,
            restore: Tensor::from_vec(restore, coords.len(), device)?,
            rows: coords.len(),
            windows: windows.len(),
        })
    }

    /// Number of non-empty windows.
    pub fn windows(&self) -> usize {
        self.windows
    }
}

/// The non-empty windows of `coords` in TRELLIS' serialisation order (ascending
/// `(batch, wx, wy, wz)`), each with its rows.
fn serialize_windows(coords: &[[u32; 4]], window_size: u32, shift: u32) -> Result<Vec<Window>> {
    if window_size == 0 {
        return Err(TrellisError::InvalidArgument(
            "window size must be positive".into(),
        ));
    }
    let (w, s) = (u64::from(window_size), u64::from(shift));
    let window_of = |c: &[u32; 4]| {
        let cell = |v: u32| (u64::from(v) + s) / w;
        (c[0], cell(c[1]), cell(c[2]), cell(c[3]))
    };
    let mut order: Vec<u32> = (0..coords.len() as u32).collect();
    order.sort_by_key(|&r| window_of(&coords[r as usize]));
    let mut windows: Vec<Window> = Vec::new();
    let mut current = None;
    for row in order {
        let key = window_of(&coords[row as usize]);
        match windows.last_mut() {
            Some(last) if current == Some(key) => last.rows.push(row),
            _ => {
                windows.push(Window { rows: vec![row] });
                current = Some(key);
            }
        }
    }
    Ok(windows)
}

/// Most attention scores (windows × heads × len²) in one attention call: the CPU path
/// materialises them (2^27 f32 = 512 MiB); on the GPU the fused kernel does not, and at
/// TRELLIS' sizes (12 heads, windows of at most 512 voxels) a call reaches this only past 42
/// full windows of one length.
const MAX_SCORES_PER_CALL: usize = 1 << 27;

/// Self-attention of `q`, `k`, `v` (`[N, H·D]`, head-major, rows of the partitioned voxels)
/// within each window of `partition` → `[N, H·D]`, scale `D^−½`.
pub fn windowed_self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    partition: &WindowPartition,
) -> Result<Tensor> {
    attend_in_windows(q, k, v, heads, partition, MAX_SCORES_PER_CALL)
}

/// [`windowed_self_attention`] with at most `max_scores` attention scores (windows × heads ×
/// len²) per attention call.
fn attend_in_windows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    partition: &WindowPartition,
    max_scores: usize,
) -> Result<Tensor> {
    let (rows, width) = q.dims2()?;
    if rows != partition.rows || k.dims() != q.dims() || v.dims() != q.dims() {
        return Err(TrellisError::InvalidArgument(format!(
            "windowed attention: q {:?}, k {:?}, v {:?} for {} partitioned rows",
            q.dims(),
            k.dims(),
            v.dims(),
            partition.rows
        )));
    }
    if rows == 0 {
        return Ok(q.clone());
    }
    let gather = |t: &Tensor| t.contiguous()?.index_select(&partition.order, 0);
    let (q, k, v) = (gather(q)?, gather(k)?, gather(v)?);
    let mut outputs = Vec::with_capacity(partition.groups.len());
    for group in &partition.groups {
        let per_call = (max_scores / (heads * group.len * group.len).max(1)).max(1);
        let mut done = 0;
        while done < group.windows {
            let windows = per_call.min(group.windows - done);
            let start = group.start + done * group.len;
            let stack = |t: &Tensor| {
                t.narrow(0, start, windows * group.len)?
                    .reshape((windows, group.len, width))
            };
            let out = ops::attention(&stack(&q)?, &stack(&k)?, &stack(&v)?, heads)?;
            outputs.push(out.reshape((windows * group.len, width))?);
            done += windows;
        }
    }
    Ok(Tensor::cat(&outputs, 0)?.index_select(&partition.restore, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use splatforge_splat::rng::SplitMix64;

    /// `n` distinct random voxels in `[0, extent)³` for each of `batches` items, grouped by batch.
    fn random_coords(rng: &mut SplitMix64, batches: u32, n: usize, extent: u32) -> Vec<[u32; 4]> {
        let mut coords = Vec::new();
        for b in 0..batches {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < n {
                let c = [0, 0, 0].map(|_| rng.below(extent as usize) as u32);
                if seen.insert(c) {
                    coords.push([b, c[0], c[1], c[2]]);
                }
            }
        }
        coords
    }

    fn random_matrix(rng: &mut SplitMix64, rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect()
    }

    /// Brute force: voxel i attends to every voxel j of its batch item whose shifted
    /// coordinates fall in the same window cube, per head, in f64.
    fn reference(
        coords: &[[u32; 4]],
        [q, k, v]: [&[f32]; 3],
        heads: usize,
        width: usize,
        window: u32,
        shift: u32,
    ) -> Vec<f32> {
        let d = width / heads;
        let cell = |c: &[u32; 4]| {
            [
                c[0],
                (c[1] + shift) / window,
                (c[2] + shift) / window,
                (c[3] + shift) / window,
            ]
        };
        let mut out = vec![0f32; coords.len() * width];
        for i in 0..coords.len() {
            let mates: Vec<usize> = (0..coords.len())
                .filter(|&j| cell(&coords[j]) == cell(&coords[i]))
                .collect();
            for h in 0..heads {
                let dot = |j: usize| {
                    (0..d)
                        .map(|c| {
                            f64::from(q[i * width + h * d + c])
                                * f64::from(k[j * width + h * d + c])
                        })
                        .sum::<f64>()
                        / (d as f64).sqrt()
                };
                let scores: Vec<f64> = mates.iter().map(|&j| dot(j)).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..d {
                    let value: f64 = mates
                        .iter()
                        .zip(&weights)
                        .map(|(&j, w)| w * f64::from(v[j * width + h * d + c]))
                        .sum();
                    out[i * width + h * d + c] = (value / total) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_brute_force_windows_on_random_occupancy() {
        let mut rng = SplitMix64::new(7);
        let (heads, width) = (2, 8);
        for (window, shift, extent, n) in [
            (8, 0, 20, 150),
            (8, 4, 20, 150),
            (3, 1, 9, 60),
            (4, 2, 4, 64),
        ] {
            let coords = random_coords(&mut rng, 2, n, extent);
            let rows = coords.len();
            let (q, k, v) = (
                random_matrix(&mut rng, rows, width),
                random_matrix(&mut rng, rows, width),
                random_matrix(&mut rng, rows, width),
            );
            let t = |x: &[f32]| Tensor::from_slice(x, (rows, width), &Device::Cpu).unwrap();
            let partition = WindowPartition::new(&coords, window, shift, &Device::Cpu).unwrap();
            let ours: Vec<f32> = windowed_self_attention(&t(&q), &t(&k), &t(&v), heads, &partition)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(&coords, [&q, &k, &v], heads, width, window, shift);
            // The same with calls of at most 64 scores (windows split over several calls).
            let split: Vec<f32> = attend_in_windows(&t(&q), &t(&k), &t(&v), heads, &partition, 64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(
                split, ours,
                "window {window} shift {shift}: split calls differ"
            );
            let err = ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "window {window} shift {shift}: max error {err}");
        }
    }

    #[test]
    fn windows_follow_trellis_serialisation() {
        let mut rng = SplitMix64::new(11);
        let coords = random_coords(&mut rng, 3, 80, 24);
        for shift in [0, 4] {
            let serialized = serialize_windows(&coords, 8, shift).unwrap();
            let partition = WindowPartition::new(&coords, 8, shift, &Device::Cpu).unwrap();
            assert_eq!(partition.windows(), serialized.len());
            assert_eq!(
                serialized.iter().map(|w| w.rows.len()).sum::<usize>(),
                coords.len()
            );
            let key = |w: &Window| {
                let c = coords[w.rows[0] as usize];
                (
                    c[0],
                    (c[1] + shift) / 8,
                    (c[2] + shift) / 8,
                    (c[3] + shift) / 8,
                )
            };
            // Strictly ascending window keys: each window appears once, in TRELLIS' order.
            assert!(serialized.windows(2).all(|p| key(&p[0]) < key(&p[1])));
            for w in &serialized {
                // TRELLIS' debug checks: one batch item per window, extent below the window size.
                let batch = coords[w.rows[0] as usize][0];
                assert!(w.rows.iter().all(|&r| coords[r as usize][0] == batch));
                let extent = |axis: usize| {
                    let values = w.rows.iter().map(|&r| coords[r as usize][axis]);
                    let (lo, hi) = values.fold((u32::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
                    hi - lo + 1
                };
                assert!((1..4).all(|axis| extent(axis) <= 8));
            }
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        let coords = vec![[0, 0, 0, 0], [0, 1, 0, 0]];
        assert!(WindowPartition::new(&coords, 0, 0, &Device::Cpu).is_err());
        let partition = WindowPartition::new(&coords, 8, 0, &Device::Cpu).unwrap();
        let wrong_rows = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(
            windowed_self_attention(&wrong_rows, &wrong_rows, &wrong_rows, 1, &partition).is_err()
        );
        let q = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
        assert!(windowed_self_attention(&q, &k, &q, 1, &partition).is_err());
    }
}
