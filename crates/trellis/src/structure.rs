//! A sparse structure given instead of sampled: stage 2 and the Gaussian decoder on known
//! voxels, stage 1 skipped, as the official
//! `TrellisImageTo3DPipeline.run_detail_variation(binary_voxel, image)` runs them (TRELLIS'
//! "detail variation": new appearance for a given shape). The benchmarks also use it to run
//! stage 2 on a real asset's voxels, since a random-weight structure decoder scatters its
//! voxels over the grid.
//!
//! # The file (safetensors), one of
//! | tensor | dtype | shape | what |
//! |---|---|---|---|
//! | `coords` | an integer type (i32, i64, u32, u8) | `[N, 4]` `(0, x, y, z)` or `[N, 3]` `(x, y, z)` | the occupied voxels, each once, in any order |
//! | `occupancy` | any | `[R, R, R]` | `binary_voxel`: occupied where not 0 |
//!
//! The grid's side `R` is the stage-2 flow's `resolution` (64 for TRELLIS-image-large): a
//! coordinate beyond it is refused when a run uses the structure. Voxels are used in
//! `preprocess_voxel`'s order, lexicographic `(x, y, z)`, which is also the order stage 1's
//! `argwhere` gives (so `--noise` files with rows per voxel work the same).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::bad_file;
use crate::Result;

/// The voxels' tensor name.
pub const COORDS: &str = "coords";
/// The dense grid's tensor name.
pub const OCCUPANCY: &str = "occupancy";

/// Largest file read: every voxel of a 64³ grid as i64 `[N, 4]` takes 8 MiB, a 256³ f32 grid
/// 64 MiB.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Largest side an `occupancy` grid or a coordinate may have (16 bits, as the sparse ops'
/// voxel keys).
const MAX_SIDE: usize = 1 << 16;

/// Occupied voxels read from a file (see the module docs), `(0, x, y, z)` in lexicographic
/// order, each once.
#[derive(Debug, Clone)]
pub struct GivenStructure {
    path: PathBuf,
    coords: Vec<[u32; 4]>,
}

impl GivenStructure {
    /// Reads `coords` or `occupancy` from the safetensors file `path`. Refused with the
    /// file's name: a file over 64 MiB, not safetensors, neither tensor or both, a float or
    /// negative `coords`, a batch index other than 0, a voxel listed twice, a grid that is not
    /// a cube, no occupied voxel.
    pub fn read(path: &Path) -> Result<Self> {
        let size = std::fs::metadata(path)
            .map_err(|e| bad_file(path, format!("cannot read: {e}")))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(bad_file(
                path,
                format!("{size} bytes: a structure file holds at most {MAX_FILE_BYTES}"),
            ));
        }
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad_file(path, format!("not a safetensors file: {e}")))?;
        let coords = match (tensors.remove(COORDS), tensors.remove(OCCUPANCY)) {
            (Some(c), None) => from_coords(path, &c)?,
            (None, Some(grid)) => from_occupancy(path, &grid)?,
            (Some(_), Some(_)) => {
                return Err(bad_file(
                    path,
                    format!("both {COORDS} and {OCCUPANCY}: give one"),
                ))
            }
            (None, None) => {
                return Err(bad_file(
                    path,
                    format!("no tensor {COORDS:?} ([N, 4] or [N, 3]) or {OCCUPANCY:?} ([R, R, R])"),
                ))
            }
        };
        if coords.is_empty() {
            return Err(bad_file(path, "the structure has no occupied voxel"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            coords,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The voxels, after checking they lie in a grid of side `resolution`.
    pub fn coords(&self, resolution: usize) -> Result<&[[u32; 4]]> {
        let largest = self
            .coords
            .iter()
            .flat_map(|c| c[1..].iter().copied())
            .max()
            .unwrap_or(0) as usize;
        if largest >= resolution {
            return Err(bad_file(
                &self.path,
                format!("a voxel coordinate is {largest}, outside the model's {resolution}³ grid"),
            ));
        }
        Ok(&self.coords)
    }
}

fn from_coords(path: &Path, t: &Tensor) -> Result<Vec<[u32; 4]>> {
    let width = match t.dims() {
        [_, w @ (3 | 4)] => *w,
        dims => {
            return Err(bad_file(
                path,
                format!("{COORDS} has shape {dims:?}, not [N, 4] or [N, 3]"),
            ))
        }
    };
    if !matches!(t.dtype(), DType::I32 | DType::I64 | DType::U32 | DType::U8) {
        return Err(bad_file(
            path,
            format!("{COORDS} is {:?}, not an integer type", t.dtype()),
        ));
    }
    let values = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let mut voxels = BTreeSet::new();
    for row in values.chunks_exact(width) {
        let (batch, xyz) = if width == 4 {
            (row[0], &row[1..])
        } else {
            (0, row)
        };
        if batch != 0 {
            return Err(bad_file(
                path,
                format!("{COORDS} has batch index {batch}: one structure (batch 0) a file"),
            ));
        }
        if xyz.iter().any(|&v| v < 0 || v >= MAX_SIDE as i64) {
            return Err(bad_file(
                path,
                format!("{COORDS} has a coordinate outside 0..{MAX_SIDE}: {xyz:?}"),
            ));
        }
        if !voxels.insert([0, xyz[0] as u32, xyz[1] as u32, xyz[2] as u32]) {
            return Err(bad_file(
                path,
                format!("{COORDS} lists the voxel {xyz:?} more than once"),
            ));
        }
    }
    Ok(voxels.into_iter().collect())
}

fn from_occupancy(path: &Path, t: &Tensor) -> Result<Vec<[u32; 4]>> {
    let side = match t.dims() {
        [a, b, c] if a == b && b == c && *a <= MAX_SIDE => *a,
        dims => {
            return Err(bad_file(
                path,
                format!("{OCCUPANCY} has shape {dims:?}, not a cube [R, R, R]"),
            ))
        }
    };
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    // Row-major over (x, y, z): np.nonzero's order, then preprocess_voxel's sort (the same).
    Ok(values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, _)| {
            let (x, y, z) = (i / (side * side), (i / side) % side, i % side);
            [0, x as u32, y as u32, z as u32]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = dir.join(name);
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        path
    }

    #[test]
    fn coords_and_occupancy_give_the_same_sorted_voxels() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let rows = [[0i32, 2, 1, 3], [0, 0, 3, 1], [0, 2, 0, 0]];
        let flat: Vec<i32> = rows.iter().flatten().copied().collect();
        let c4 = Tensor::from_vec(flat, (3, 4), &dev).unwrap();
        let c3 = c4.narrow(1, 1, 3).unwrap().to_dtype(DType::I64).unwrap();
        let mut grid = vec![0f32; 4 * 4 * 4];
        for r in rows {
            grid[(r[1] * 16 + r[2] * 4 + r[3]) as usize] = 1.0;
        }
        let grid = Tensor::from_vec(grid, (4, 4, 4), &dev).unwrap();
        let want = vec![[0, 0, 3, 1], [0, 2, 0, 0], [0, 2, 1, 3]];
        for (name, t) in [(COORDS, c4), (COORDS, c3), (OCCUPANCY, grid)] {
            let path = write(dir.path(), "s.safetensors", &[(name, t)]);
            let s = GivenStructure::read(&path).unwrap();
            assert_eq!(s.coords(4).unwrap(), want.as_slice(), "{name}");
            assert!(s.coords(3).is_err(), "x = 3 lies outside a 3³ grid");
        }
    }

    #[test]
    fn bad_files_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let i32s = |v: Vec<i32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &dev).unwrap();
        let cases: Vec<(&str, Vec<(&str, Tensor)>)> = vec![
            ("no tensor", vec![("other", i32s(vec![0, 0, 0], (1, 3)))]),
            (
                "give one",
                vec![
                    (COORDS, i32s(vec![0, 0, 0], (1, 3))),
                    (
                        OCCUPANCY,
                        Tensor::ones((2, 2, 2), DType::F32, &dev).unwrap(),
                    ),
                ],
            ),
            ("not [N, 4]", vec![(COORDS, i32s(vec![0, 0], (1, 2)))]),
            (
                "not an integer",
                vec![(COORDS, Tensor::zeros((1, 3), DType::F32, &dev).unwrap())],
            ),
            (
                "batch index 1",
                vec![(COORDS, i32s(vec![1, 0, 0, 0], (1, 4)))],
            ),
            ("outside", vec![(COORDS, i32s(vec![0, -1, 0], (1, 3)))]),
            (
                "more than once",
                vec![(COORDS, i32s(vec![1, 2, 3, 1, 2, 3], (2, 3)))],
            ),
            (
                "not a cube",
                vec![(
                    OCCUPANCY,
                    Tensor::ones((2, 2, 3), DType::F32, &dev).unwrap(),
                )],
            ),
            (
                "no occupied voxel",
                vec![(
                    OCCUPANCY,
                    Tensor::zeros((2, 2, 2), DType::U8, &dev).unwrap(),
                )],
            ),
        ];
        for (why, tensors) in cases {
            let path = write(dir.path(), "bad.safetensors", &tensors);
            let err = GivenStructure::read(&path).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
            assert!(err.contains("bad.safetensors"), "{err}");
        }
        let not_st = dir.path().join("x.safetensors");
        std::fs::write(&not_st, b"plain text").unwrap();
        assert!(GivenStructure::read(&not_st)
            .unwrap_err()
            .to_string()
            .contains("not a safetensors file"));
        let big = dir.path().join("big.safetensors");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        assert!(GivenStructure::read(&big)
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }
}
