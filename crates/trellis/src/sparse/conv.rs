//! Submanifold sparse 3×3×3 convolution: TRELLIS' `SparseConv3d` with kernel 3 and
//! stride 1, which is spconv's `SubMConv3d`.
//!
//! Semantics (spconv 2, `generate_subm_conv_inds`): the output has the input's
//! coordinates; an output voxel `p` of batch item `b` sums, over the 27 kernel offsets
//! `(i, j, l) ∈ {0,1,2}³`, `W[:, i, j, l, :] · feats[(b, p + (i−1, j−1, l−1))]` over the
//! occupied neighbours only, plus the bias — a cross-correlation, like `torch.nn.Conv3d`
//! with padding 1 evaluated at the occupied voxels of a zero-filled grid. The kernel
//! axes follow the coordinate axes `(x, y, z)` in that order.
//!
//! Weight layout: spconv 2 stores every kernel as `KRSC`, `[out, 3, 3, 3, in]`, and
//! TRELLIS loads it as is (`conv_spconv.py` has no permute on load), under
//! `<module>.conv.weight` and `<module>.conv.bias`.
//!
//! Computation, output-stationary (each output row is written once: no scatter, no
//! atomics, deterministic), candle ops only, so it runs on any device; rows go in chunks so
//! the gathered matrix stays bounded. Which side is gathered depends on the narrower one:
//! - `out ≥ in`: the 27 neighbour rows of every voxel are gathered (a missing neighbour
//!   reads an appended zero row) into `[rows, 27·in]` and multiplied by the kernel viewed
//!   as `[out, 27·in]` in one GEMM through [`splatforge_nn::ops::linear`];
//! - `out < in` (the output blocks' 2048 → 128 and 256 → 128): every voxel is first
//!   multiplied by all 27 taps at once (`[rows, 27·out]`, one GEMM), then each voxel sums,
//!   in f32, tap `k` of its neighbour `k` — the same products, but the gathered values are
//!   `27·out` per voxel instead of `27·in` (16× fewer for 2048 → 128).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use splatforge_nn::ops::{linear, LinearEpilogue};

use super::SparseTensor;
use crate::{Result, TrellisError};

/// Kernel taps of a 3×3×3 kernel.
pub const KERNEL_VOLUME: usize = 27;

/// Largest gathered matrix of one chunk, in elements (128 MiB in f16).
const GATHER_ELEMENTS: usize = 1 << 26;

/// Largest coordinate (and batch index) a voxel key holds: 16 bits each.
const MAX_COORD: u32 = u16::MAX as u32;

/// A voxel `(batch, x, y, z)` packed into one integer, 16 bits per component.
fn voxel_key(c: [u32; 4]) -> u64 {
    (u64::from(c[0]) << 48) | (u64::from(c[1]) << 32) | (u64::from(c[2]) << 16) | u64::from(c[3])
}

/// A multiplicative hash for packed voxel keys (SipHash is several times slower here,
/// and the keys are not adversarial).
#[derive(Default)]
pub(crate) struct VoxelHasher(u64);

impl Hasher for VoxelHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, key: u64) {
        let mixed = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = mixed ^ (mixed >> 29);
    }
}

/// Voxel → row index, keyed by the packed voxel.
pub(crate) type VoxelIndex = HashMap<u64, u32, BuildHasherDefault<VoxelHasher>>;

/// The row of every voxel, failing on a coordinate beyond 16 bits or a repeated voxel.
pub(crate) fn voxel_index(coords: &[[u32; 4]]) -> Result<VoxelIndex> {
    if coords.len() > u32::MAX as usize {
        return Err(TrellisError::InvalidArgument(format!(
            "{} voxels: more than 2³² rows",
            coords.len()
        )));
    }
    let mut index = VoxelIndex::with_capacity_and_hasher(coords.len(), Default::default());
    for (row, &c) in coords.iter().enumerate() {
        if c.iter().any(|&v| v > MAX_COORD) {
            return Err(TrellisError::InvalidArgument(format!(
                "voxel {c:?}: components must be at most {MAX_COORD}"
            )));
        }
        if index.insert(voxel_key(c), row as u32).is_some() {
            return Err(TrellisError::InvalidArgument(format!(
                "voxel {c:?} occurs twice"
            )));
        }
    }
    Ok(index)
}

/// For every voxel of a coordinate set, the rows of its 27 neighbours (spconv's
/// submanifold index pairs, output-major). Built once per coordinate set on the host and
/// shared by every convolution over it.
#[derive(Debug, Clone)]
pub struct NeighbourMap {
    rows: usize,
    /// `[rows · 27]` `u32` on the device: entry `27·r + k`, `k = 9·i + 3·j + l`, is the row
    /// of the voxel at `coords[r] + (i−1, j−1, l−1)` in the same batch item, or `rows` (the
    /// zero row appended before gathering) when it is not occupied.
    neighbours: Tensor,
    /// `[rows · 27]` `u32`: entry `27·r + k` is `27·neighbour + k`, the row of tap `k`'s
    /// output at that neighbour in a `[(rows + 1)·27, out]` table (the last 27 rows zero).
    tap_rows: Tensor,
}

impl NeighbourMap {
    /// The neighbour rows of `coords` (`(batch, x, y, z)`, each at most 65535, no voxel
    /// twice), stored on `device`.
    pub fn new(coords: &[[u32; 4]], device: &Device) -> Result<Self> {
        let index = voxel_index(coords)?;
        let missing = coords.len() as u32;
        let mut neighbours = Vec::with_capacity(coords.len() * KERNEL_VOLUME);
        for &[b, x, y, z] in coords {
            for i in 0..3u32 {
                for j in 0..3u32 {
                    for l in 0..3u32 {
                        // (x + i − 1, …) without going below zero; above 65535 is never occupied.
                        let at = match (
                            (x + i).checked_sub(1),
                            (y + j).checked_sub(1),
                            (z + l).checked_sub(1),
                        ) {
                            (Some(nx), Some(ny), Some(nz)) => {
                                index.get(&voxel_key([b, nx, ny, nz])).copied()
                            }
                            _ => None,
                        };
                        neighbours.push(at.unwrap_or(missing));
                    }
                }
            }
        }
        let len = neighbours.len();
        let tap_rows: Vec<u32> = neighbours
            .iter()
            .enumerate()
            .map(|(at, &n)| n * KERNEL_VOLUME as u32 + (at % KERNEL_VOLUME) as u32)
            .collect();
        Ok(Self {
            rows: coords.len(),
            neighbours: Tensor::from_vec(neighbours, len, device)?,
            tap_rows: Tensor::from_vec(tap_rows, len, device)?,
        })
    }

    /// Number of voxels (output rows).
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// TRELLIS' `SparseConv3d(in, out, 3)` (stride 1: spconv's `SubMConv3d`), see the module
/// documentation for its semantics and weight layout.
#[derive(Debug, Clone)]
pub struct SparseConv3d {
    kernel: Kernel,
    /// `[out]`.
    bias: Tensor,
    in_channels: usize,
    out_channels: usize,
}

/// The kernel in the layout its product needs (see the module docs).
#[derive(Debug, Clone)]
enum Kernel {
    /// `out ≥ in`: `[out, 3, 3, 3, in]` as loaded, used as `[out, 27·in]`.
    GatherInputs(Tensor),
    /// `out < in`: `[27·out, in]`, row `k·out + o` holding tap `k` of output channel `o`.
    GatherOutputs(Tensor),
}

impl SparseConv3d {
    /// Loads the layer whose TRELLIS module path is `vb`'s prefix: `conv.weight`
    /// `[out, 3, 3, 3, in]` and `conv.bias` `[out]`.
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb.get_with_hints(
            (out_channels, 3, 3, 3, in_channels),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_UNIFORM,
        )?;
        let bias = vb.get_with_hints(out_channels, "bias", candle_nn::Init::Const(0.0))?;
        Self::from_kernel(weight, bias)
    }

    /// The layer of a `[out, 3, 3, 3, in]` kernel and `[out]` bias.
    fn from_kernel(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out_channels, _, _, _, in_channels) = weight.dims5()?;
        let kernel = if out_channels >= in_channels {
            Kernel::GatherInputs(weight)
        } else {
            Kernel::GatherOutputs(
                weight
                    .reshape((out_channels, KERNEL_VOLUME, in_channels))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((KERNEL_VOLUME * out_channels, in_channels))?,
            )
        };
        Ok(Self {
            kernel,
            bias,
            in_channels,
            out_channels,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The convolution of `x` (`[N, in]` features) over the voxels `map` was built from
    /// (the same coordinates, in the same order) → `[N, out]` at the same coordinates.
    pub fn forward(&self, x: &SparseTensor, map: &NeighbourMap) -> Result<SparseTensor> {
        self.forward_in_chunks(x, map, GATHER_ELEMENTS)
    }

    /// [`forward`](Self::forward) gathering at most `gather_elements` values at a time
    /// (at least one row).
    fn forward_in_chunks(
        &self,
        x: &SparseTensor,
        map: &NeighbourMap,
        gather_elements: usize,
    ) -> Result<SparseTensor> {
        let rows = x.len();
        if map.rows != rows || x.channels() != self.in_channels {
            return Err(TrellisError::InvalidArgument(format!(
                "sparse conv: {rows} voxels × {} channels, but the neighbour map has {} voxels and the kernel takes {} channels",
                x.channels(),
                map.rows,
                self.in_channels
            )));
        }
        let (out_channels, dtype) = (self.out_channels, x.feats.dtype());
        let mut outputs = Vec::new();
        match &self.kernel {
            Kernel::GatherInputs(weight) => {
                // A view of the loaded kernel; the bias goes in the product's epilogue.
                let gemm = candle_nn::Linear::new(
                    weight.reshape((out_channels, KERNEL_VOLUME * self.in_channels))?,
                    Some(self.bias.clone()),
                );
                let padded = with_zero_row(&x.feats)?;
                let chunk = (gather_elements / (KERNEL_VOLUME * self.in_channels)).max(1);
                for start in (0..rows).step_by(chunk) {
                    let len = chunk.min(rows - start);
                    let taps =
                        map.neighbours
                            .narrow(0, start * KERNEL_VOLUME, len * KERNEL_VOLUME)?;
                    let gathered = padded
                        .index_select(&taps, 0)?
                        .reshape((len, KERNEL_VOLUME * self.in_channels))?;
                    outputs.push(linear(&gathered, &gemm, LinearEpilogue::default())?);
                }
            }
            Kernel::GatherOutputs(weight) => {
                let all_taps = linear(
                    &x.feats,
                    &candle_nn::Linear::new(weight.clone(), None),
                    LinearEpilogue::default(),
                )?
                .reshape((rows * KERNEL_VOLUME, out_channels))?;
                let table = Tensor::cat(
                    &[
                        &all_taps,
                        &Tensor::zeros((KERNEL_VOLUME, out_channels), dtype, x.device())?,
                    ],
                    0,
                )?;
                let bias = self.bias.to_dtype(DType::F32)?;
                let chunk = (gather_elements / (KERNEL_VOLUME * out_channels)).max(1);
                for start in (0..rows).step_by(chunk) {
                    let len = chunk.min(rows - start);
                    let taps =
                        map.tap_rows
                            .narrow(0, start * KERNEL_VOLUME, len * KERNEL_VOLUME)?;
                    let summed = table
                        .index_select(&taps, 0)?
                        .to_dtype(DType::F32)?
                        .reshape((len, KERNEL_VOLUME, out_channels))?
                        .sum(1)?
                        .broadcast_add(&bias)?;
                    outputs.push(summed.to_dtype(dtype)?);
                }
            }
        }
        let feats = match outputs.len() {
            0 => Tensor::zeros((0, out_channels), dtype, x.device())?,
            1 => outputs.remove(0),
            _ => Tensor::cat(&outputs, 0)?,
        };
        x.with_feats(feats)
    }
}

/// `feats` `[N, C]` with one zero row appended (row `N`, what a missing neighbour reads).
pub(crate) fn with_zero_row(feats: &Tensor) -> Result<Tensor> {
    let channels = feats.dim(1)?;
    Ok(Tensor::cat(
        &[
            feats,
            &Tensor::zeros((1, channels), feats.dtype(), feats.device())?,
        ],
        0,
    )?)
}

#[cfg(test)]
/// A deterministic pseudo-random occupancy: about `fill` of the `side³` grid of each
/// of `batch` items, shuffled rows within each item.
pub(crate) fn random_voxels(batch: u32, side: u32, fill: f32, seed: u64) -> Vec<[u32; 4]> {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut coords = Vec::new();
    for b in 0..batch {
        let mut item = Vec::new();
        for x in 0..side {
            for y in 0..side {
                for z in 0..side {
                    if (next() % 1000) as f32 / 1000.0 < fill {
                        item.push([b, x, y, z]);
                    }
                }
            }
        }
        for i in (1..item.len()).rev() {
            item.swap(i, next() as usize % (i + 1));
        }
        coords.extend(item);
    }
    coords
}

#[cfg(test)]
mod tests {
    use super::*;
    use splatforge_nn::weights::SeededInit;

    /// A dense 3D convolution (padding 1, zero-filled grid) written out over the whole
    /// grid, read at the occupied voxels: the reference for the sparse one.
    fn dense_conv_reference(
        coords: &[[u32; 4]],
        feats: &[Vec<f32>],
        weight: &[f32],
        bias: &[f32],
        side: usize,
        cin: usize,
        cout: usize,
    ) -> Vec<Vec<f32>> {
        let batch = coords.iter().map(|c| c[0] as usize + 1).max().unwrap_or(0);
        let cell = |b: usize, x: usize, y: usize, z: usize| ((b * side + x) * side + y) * side + z;
        let mut grid = vec![0f32; batch * side * side * side * cin];
        for (c, f) in coords.iter().zip(feats) {
            let at = cell(c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize) * cin;
            grid[at..at + cin].copy_from_slice(f);
        }
        let mut dense = vec![0f32; batch * side * side * side * cout];
        for b in 0..batch {
            for x in 0..side {
                for y in 0..side {
                    for z in 0..side {
                        for o in 0..cout {
                            let mut acc = bias[o];
                            for i in 0..3 {
                                for j in 0..3 {
                                    for l in 0..3 {
                                        let (nx, ny, nz) = (x + i, y + j, z + l);
                                        if nx < 1
                                            || ny < 1
                                            || nz < 1
                                            || nx > side
                                            || ny > side
                                            || nz > side
                                        {
                                            continue;
                                        }
                                        let at = cell(b, nx - 1, ny - 1, nz - 1) * cin;
                                        for c in 0..cin {
                                            acc += weight
                                                [(((o * 3 + i) * 3 + j) * 3 + l) * cin + c]
                                                * grid[at + c];
                                        }
                                    }
                                }
                            }
                            dense[cell(b, x, y, z) * cout + o] = acc;
                        }
                    }
                }
            }
        }
        coords
            .iter()
            .map(|c| {
                let at = cell(c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize) * cout;
                dense[at..at + cout].to_vec()
            })
            .collect()
    }

    #[test]
    fn matches_a_dense_convolution_on_the_same_occupancy() {
        let side = 6u32;
        let coords = random_voxels(2, side, 0.35, 11);
        let map = NeighbourMap::new(&coords, &Device::Cpu).unwrap();
        // Widening (inputs gathered) and narrowing (tap outputs gathered).
        for (cin, cout) in [(5, 7), (7, 3)] {
            let init = SeededInit::new(4);
            let conv = SparseConv3d::new(cin, cout, init.var_builder().pp("block.conv1")).unwrap();
            assert_eq!(matches!(conv.kernel, Kernel::GatherOutputs(_)), cout < cin);
            let tensors = init.tensors();
            let weight = tensors["block.conv1.conv.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let bias = (&tensors["block.conv1.conv.bias"] + 0.25)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let conv = SparseConv3d {
                bias: Tensor::new(bias.as_slice(), &Device::Cpu).unwrap(),
                ..conv
            };
            let feats = Tensor::randn(0f32, 1.0, (coords.len(), cin), &Device::Cpu).unwrap();
            let rows = feats.to_vec2::<f32>().unwrap();
            let x = SparseTensor::new(coords.clone(), feats).unwrap();
            let want =
                dense_conv_reference(&coords, &rows, &weight, &bias, side as usize, cin, cout);
            // One chunk, and chunks of 7 rows (the last one shorter).
            for gather in [GATHER_ELEMENTS, 7 * KERNEL_VOLUME * cin.max(cout)] {
                let got = conv
                    .forward_in_chunks(&x, &map, gather)
                    .unwrap()
                    .feats
                    .to_vec2::<f32>()
                    .unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    assert!((g - w).abs() < 1e-4, "{cin}→{cout}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn kernel_taps_follow_the_coordinate_axes() {
        // One input channel, one output channel, only tap (i, j, l) = (2, 1, 1) set: the
        // output at p reads the input at p + (1, 0, 0).
        let coords = vec![[0, 1, 1, 1], [0, 2, 1, 1], [0, 1, 2, 1]];
        let mut kernel = vec![0f32; KERNEL_VOLUME];
        kernel[2 * 9 + 3 + 1] = 1.0;
        let conv = SparseConv3d::from_kernel(
            Tensor::from_vec(kernel, (1, 3, 3, 3, 1), &Device::Cpu).unwrap(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let x = SparseTensor::new(
            coords.clone(),
            Tensor::new(&[[10f32], [20.0], [30.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let map = NeighbourMap::new(&coords, &Device::Cpu).unwrap();
        let got = conv
            .forward(&x, &map)
            .unwrap()
            .feats
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, vec![20.0, 0.0, 0.0]);
    }

    #[test]
    fn batch_items_do_not_see_each_other() {
        let coords = vec![[0, 3, 3, 3], [1, 3, 3, 4]];
        let map = NeighbourMap::new(&coords, &Device::Cpu).unwrap();
        let rows = map.neighbours.to_vec1::<u32>().unwrap();
        // Only the centre tap (13) of each voxel is occupied: itself.
        assert_eq!(rows.iter().filter(|&&r| r != 2).count(), 2);
        assert_eq!((rows[13], rows[KERNEL_VOLUME + 13]), (0, 1));
    }

    #[test]
    fn rejects_bad_coordinates_and_mismatched_inputs() {
        assert!(NeighbourMap::new(&[[0, 1, 1, 1], [0, 1, 1, 1]], &Device::Cpu).is_err());
        assert!(NeighbourMap::new(&[[0, 70000, 1, 1]], &Device::Cpu).is_err());
        let conv = SparseConv3d::new(2, 3, SeededInit::new(1).var_builder()).unwrap();
        let coords = vec![[0, 0, 0, 0], [0, 0, 0, 1]];
        let map = NeighbourMap::new(&coords[..1], &Device::Cpu).unwrap();
        let x = SparseTensor::new(
            coords,
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(conv.forward(&x, &map).is_err());
    }
}
