//! Sparse down- and upsampling: TRELLIS' `SparseDownsample` and `SparseUpsample`
//! (`trellis/modules/sparse/spatial.py`).
//!
//! Downsampling by `f` maps voxel `(b, x, y, z)` to `(b, ⌊x/f⌋, ⌊y/f⌋, ⌊z/f⌋)`; the coarse
//! voxels are the distinct results sorted by `(b, x, y, z)` (what `torch.unique` over
//! TRELLIS' mixed-radix code gives). Pooling is `torch.scatter_reduce(zeros, …,
//! reduce='mean')` with its default `include_self=True`, so the zero the output starts
//! from counts as one more element: a coarse voxel with `n` fine voxels gets their sum
//! divided by `n + 1`, not by `n`. The weights were trained with that, so it is kept.
//!
//! Upsampling is the inverse of one downsampling (TRELLIS pairs them through the
//! tensor's spatial cache): the fine coordinates in their original order, each fine
//! voxel copying the features of its coarse voxel (nearest neighbour). Here the pairing
//! is explicit: one [`SparseDownsample`] holds the mapping and serves both directions.

use candle_core::{DType, Device, Tensor};

use super::conv::with_zero_row;
use super::SparseTensor;
use crate::{Result, TrellisError};

/// The mapping between a fine coordinate set and its `factor`× coarser one, built once
/// on the host; [`forward`](Self::forward) pools onto it, [`upsample`](Self::upsample)
/// copies back (TRELLIS' `upsample_{factor}_coords` / `_idx` cache).
#[derive(Debug, Clone)]
pub struct SparseDownsample {
    factor: u32,
    fine_coords: Vec<[u32; 4]>,
    coarse_coords: Vec<[u32; 4]>,
    /// `[N]` `u32`: the coarse row of each fine row.
    parent: Tensor,
    /// `[M · slots]` `u32`: the fine rows of each coarse voxel in fine-row order,
    /// padded with `N` (the zero row appended before gathering).
    children: Tensor,
    /// Most fine voxels under one coarse voxel (at least 1).
    slots: usize,
    /// `[M, 1]` f32: `1 / (n + 1)` for a coarse voxel with `n` fine voxels.
    divisor: Tensor,
}

impl SparseDownsample {
    /// The mapping of `fine` (`(batch, x, y, z)` rows grouped by batch, no voxel twice)
    /// downsampled by `factor` (≥ 1) on every axis, with its index tensors on `device`.
    pub fn new(fine: &[[u32; 4]], factor: u32, device: &Device) -> Result<Self> {
        if factor == 0 {
            return Err(TrellisError::InvalidArgument(
                "downsampling factor must be at least 1".into(),
            ));
        }
        // Rejects repeated voxels and components beyond 16 bits, as the convolution does.
        super::conv::voxel_index(fine)?;
        let coarse_of = |c: [u32; 4]| [c[0], c[1] / factor, c[2] / factor, c[3] / factor];
        let mut coarse_coords: Vec<[u32; 4]> = fine.iter().map(|&c| coarse_of(c)).collect();
        coarse_coords.sort_unstable();
        coarse_coords.dedup();
        let mut parent = Vec::with_capacity(fine.len());
        let mut counts = vec![0usize; coarse_coords.len()];
        for &c in fine {
            let row = coarse_coords
                .binary_search(&coarse_of(c))
                .expect("every coarse voxel was collected");
            counts[row] += 1;
            parent.push(row as u32);
        }
        let slots = counts.iter().copied().max().unwrap_or(0).max(1);
        let missing = fine.len() as u32;
        let mut children = vec![missing; coarse_coords.len() * slots];
        let mut filled = vec![0usize; coarse_coords.len()];
        for (row, &p) in parent.iter().enumerate() {
            let p = p as usize;
            children[p * slots + filled[p]] = row as u32;
            filled[p] += 1;
        }
        let divisor: Vec<f32> = counts.iter().map(|&n| 1.0 / (n as f32 + 1.0)).collect();
        let (m, n) = (coarse_coords.len(), fine.len());
        Ok(Self {
            factor,
            fine_coords: fine.to_vec(),
            coarse_coords,
            parent: Tensor::from_vec(parent, n, device)?,
            children: Tensor::from_vec(children, m * slots, device)?,
            slots,
            divisor: Tensor::from_vec(divisor, (m, 1), device)?,
        })
    }

    /// The downsampling factor.
    pub fn factor(&self) -> u32 {
        self.factor
    }

    /// The coarse coordinates, sorted by `(batch, x, y, z)`.
    pub fn coarse_coords(&self) -> &[[u32; 4]] {
        &self.coarse_coords
    }

    /// The fine coordinates the mapping was built from, in their order.
    pub fn fine_coords(&self) -> &[[u32; 4]] {
        &self.fine_coords
    }

    /// Pools `x` (on the fine coordinates) onto the coarse ones: sum over each coarse
    /// voxel's fine voxels divided by their count plus one (see the module docs), summed
    /// in f32, returned in `x`'s dtype.
    pub fn forward(&self, x: &SparseTensor) -> Result<SparseTensor> {
        if x.coords != self.fine_coords {
            return Err(TrellisError::InvalidArgument(
                "sparse downsample: the tensor's coordinates are not the ones the mapping was built from".into(),
            ));
        }
        let (m, channels) = (self.coarse_coords.len(), x.channels());
        let padded = with_zero_row(&x.feats.to_dtype(DType::F32)?)?;
        let pooled = padded
            .index_select(&self.children, 0)?
            .reshape((m, self.slots, channels))?
            .sum(1)?
            .broadcast_mul(&self.divisor)?
            .to_dtype(x.feats.dtype())?;
        SparseTensor::new(self.coarse_coords.clone(), pooled)
    }

    /// `x` (on the coarse coordinates) back on the fine coordinates, in their original
    /// order: every fine voxel takes its coarse voxel's features.
    pub fn upsample(&self, x: &SparseTensor) -> Result<SparseTensor> {
        if x.coords != self.coarse_coords {
            return Err(TrellisError::InvalidArgument(
                "sparse upsample: the tensor's coordinates are not the coarse ones of this mapping"
                    .into(),
            ));
        }
        SparseTensor::new(
            self.fine_coords.clone(),
            x.feats.contiguous()?.index_select(&self.parent, 0)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::conv::random_voxels;

    /// Average pooling written out on dense grids: each coarse cell sums the fine cells
    /// of its `f³` block that are occupied and divides by their count plus one.
    fn dense_pool_reference(
        coords: &[[u32; 4]],
        feats: &[Vec<f32>],
        factor: u32,
        side: u32,
    ) -> Vec<([u32; 4], Vec<f32>)> {
        let channels = feats[0].len();
        let coarse_side = side.div_ceil(factor);
        let batch = coords.iter().map(|c| c[0] + 1).max().unwrap_or(0);
        let mut out = Vec::new();
        for b in 0..batch {
            for x in 0..coarse_side {
                for y in 0..coarse_side {
                    for z in 0..coarse_side {
                        let mut sum = vec![0f32; channels];
                        let mut n = 0;
                        for (c, f) in coords.iter().zip(feats) {
                            if c[0] == b
                                && c[1] / factor == x
                                && c[2] / factor == y
                                && c[3] / factor == z
                            {
                                n += 1;
                                sum.iter_mut().zip(f).for_each(|(s, v)| *s += v);
                            }
                        }
                        if n > 0 {
                            out.push((
                                [b, x, y, z],
                                sum.iter().map(|s| s / (n as f32 + 1.0)).collect(),
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn downsampling_matches_dense_pooling_and_upsampling_copies_back() {
        let side = 7;
        let coords = random_voxels(2, side, 0.4, 5);
        let feats = Tensor::randn(0f32, 1.0, (coords.len(), 3), &Device::Cpu).unwrap();
        let rows = feats.to_vec2::<f32>().unwrap();
        let x = SparseTensor::new(coords.clone(), feats).unwrap();
        let down = SparseDownsample::new(&coords, 2, &Device::Cpu).unwrap();
        let coarse = down.forward(&x).unwrap();
        let want = dense_pool_reference(&coords, &rows, 2, side);
        // Dense iteration order is (b, x, y, z): the coarse voxels come sorted that way.
        assert_eq!(
            coarse.coords,
            want.iter().map(|(c, _)| *c).collect::<Vec<_>>()
        );
        let got = coarse.feats.to_vec2::<f32>().unwrap();
        for (g, (_, w)) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        let up = down.upsample(&coarse).unwrap();
        assert_eq!(up.coords, coords);
        let up_rows = up.feats.to_vec2::<f32>().unwrap();
        for (c, row) in coords.iter().zip(&up_rows) {
            let parent = coarse
                .coords
                .iter()
                .position(|p| *p == [c[0], c[1] / 2, c[2] / 2, c[3] / 2])
                .unwrap();
            assert_eq!(row, &got[parent]);
        }
    }

    #[test]
    fn pooling_divides_by_count_plus_one() {
        // Two fine voxels under one coarse voxel, one alone: (1 + 3) / 3 and 5 / 2.
        let coords = vec![[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0]];
        let x = SparseTensor::new(
            coords.clone(),
            Tensor::new(&[[1f32], [3.0], [5.0]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let down = SparseDownsample::new(&coords, 2, &Device::Cpu).unwrap();
        let coarse = down.forward(&x).unwrap();
        assert_eq!(coarse.coords, vec![[0, 0, 0, 0], [0, 1, 0, 0]]);
        let got = coarse
            .feats
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (got[0] - 4.0 / 3.0).abs() < 1e-6 && (got[1] - 2.5).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn rejects_foreign_tensors_and_bad_factors() {
        let coords = vec![[0, 0, 0, 0], [0, 3, 0, 0]];
        assert!(SparseDownsample::new(&coords, 0, &Device::Cpu).is_err());
        let down = SparseDownsample::new(&coords, 2, &Device::Cpu).unwrap();
        let other = SparseTensor::new(
            vec![[0, 1, 0, 0], [0, 3, 0, 0]],
            Tensor::zeros((2, 1), DType::F32, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!(down.forward(&other).is_err());
        assert!(down
            .upsample(
                &other
                    .with_feats(Tensor::zeros((2, 1), DType::F32, &Device::Cpu).unwrap())
                    .unwrap()
            )
            .is_err());
    }
}
