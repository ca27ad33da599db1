//! The sparse tensor: features at integer voxel coordinates, several batch items in one.

use candle_core::{Device, Tensor};

use crate::{Result, TrellisError};

/// Features at occupied voxels, TRELLIS' `SparseTensor`.
///
/// Rows are sorted by batch index (all rows of item 0, then item 1, …), as TRELLIS
/// keeps them, so each item's rows are one contiguous range.
#[derive(Debug, Clone)]
pub struct SparseTensor {
    /// `[N, 4]` `u32`-valued coordinates `(batch, x, y, z)` on the host; x, y, z index the
    /// voxel grid of the tensor's resolution.
    pub coords: Vec<[u32; 4]>,
    /// `[N, C]` features, one row per coordinate, on any device.
    pub feats: Tensor,
}

impl SparseTensor {
    /// A sparse tensor from coordinates and one feature row per coordinate.
    ///
    /// Fails when the row counts differ or the rows are not grouped by batch index in
    /// ascending order.
    pub fn new(coords: Vec<[u32; 4]>, feats: Tensor) -> Result<Self> {
        let rows = feats.dims().first().copied().unwrap_or(0);
        if feats.rank() != 2 || rows != coords.len() {
            return Err(TrellisError::InvalidArgument(format!(
                "sparse tensor: {} coordinates but features of shape {:?} (want [N, C])",
                coords.len(),
                feats.dims()
            )));
        }
        if coords.windows(2).any(|w| w[1][0] < w[0][0]) {
            return Err(TrellisError::InvalidArgument(
                "sparse tensor: rows must be grouped by ascending batch index".into(),
            ));
        }
        Ok(Self { coords, feats })
    }

    /// Number of occupied voxels over all batch items.
    pub fn len(&self) -> usize {
        self.coords.len()
    }

    /// Whether no voxel is occupied.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }

    /// Feature channels per voxel.
    pub fn channels(&self) -> usize {
        self.feats.dims()[1]
    }

    /// Number of batch items (one past the largest batch index; 0 when empty).
    pub fn batch_size(&self) -> usize {
        self.coords.last().map_or(0, |c| c[0] as usize + 1)
    }

    /// The row range of each batch item, in batch order (an item without rows gets the
    /// empty range where its rows would start).
    pub fn batch_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut counts = vec![0usize; self.batch_size()];
        for c in &self.coords {
            counts[c[0] as usize] += 1;
        }
        let mut start = 0;
        counts
            .into_iter()
            .map(|n| {
                start += n;
                start - n..start
            })
            .collect()
    }

    /// The same coordinates with other features (`[N, C']`).
    pub fn with_feats(&self, feats: Tensor) -> Result<Self> {
        Self::new(self.coords.clone(), feats)
    }

    /// The device the features live on.
    pub fn device(&self) -> &Device {
        self.feats.device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ranges_follow_batch_index() {
        let coords = vec![[0, 1, 2, 3], [0, 0, 0, 0], [2, 5, 5, 5]];
        let feats = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = SparseTensor::new(coords, feats).unwrap();
        assert_eq!(t.batch_size(), 3);
        assert_eq!(t.batch_ranges(), vec![0..2, 2..2, 2..3]);
    }

    #[test]
    fn rejects_mismatched_rows_and_unsorted_batches() {
        let feats = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(SparseTensor::new(vec![[0, 0, 0, 0]], feats.clone()).is_err());
        assert!(SparseTensor::new(vec![[1, 0, 0, 0], [0, 0, 0, 0]], feats).is_err());
    }
}
