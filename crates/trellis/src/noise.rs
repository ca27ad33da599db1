//! The initial noise of both sampling stages given in a file instead of drawn from the seed,
//! and a run's latents written to one: what an end-to-end parity run against the official
//! `TrellisImageTo3DPipeline` needs, since torch's `randn` cannot be reproduced here (see
//! [`crate::pipeline`]'s module docs).
//!
//! # The file (safetensors)
//! | tensor | dtype | shape | what |
//! |---|---|---|---|
//! | `ss_noise` | f32 | `[1, C, R, R, R]` (TRELLIS-image-large: `[1, 8, 16, 16, 16]`) | `sample_sparse_structure`'s `torch.randn` |
//! | `slat_noise` | f32 | `[N, C']` (`[N, 8]`) | `sample_slat`'s `torch.randn`, one row per voxel |
//! | `coords` | i32 | `[N, 4]` | optional: the voxel `(batch, x, y, z)` of each `slat_noise` row |
//! | `ss_latent` | f32 | `[1, C, R, R, R]` | only written ([`RunLatents`]): the sampled structure latent `z_s` |
//! | `slat` | f32 | `[N, C']` | only written: the structured latent after `slat · std + mean` |
//!
//! Other tensors are ignored on reading, so a file [`RunLatents::save`] wrote is itself a noise
//! file (`tools/trellis_reference.py --dump-noise` writes the same names).
//!
//! # Row order of `slat_noise`
//! The official code takes its voxels as `torch.argwhere(decoder(z_s) > 0)[:, [0, 2, 3, 4]]`:
//! `argwhere` lists the indices of a `[B, 1, R, R, R]` tensor in row-major order, so rows come
//! lexicographically by `(batch, x, y, z)`, and its noise row `i` belongs to voxel `i`.
//! [`crate::ss_decoder::occupied_coords`] lists ours in the same row-major order, so without
//! `coords` row `i` goes to our voxel `i` (the counts must agree). With `coords`, each of our
//! voxels takes the row of its own coordinate, whatever order the file lists them in, and the
//! two voxel sets must be equal: a file of another structure is refused, never half-used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::{bad_file, write_atomically};
use crate::Result;

/// The stage-1 noise tensor's name.
pub const SS_NOISE: &str = "ss_noise";
/// The stage-2 noise tensor's name.
pub const SLAT_NOISE: &str = "slat_noise";
/// The voxels' name.
pub const COORDS: &str = "coords";
/// The sampled structure latent's name.
pub const SS_LATENT: &str = "ss_latent";
/// The de-normalised structured latent's name.
pub const SLAT: &str = "slat";

/// Both stages' initial noise, read from a file (see the module docs); on the host.
#[derive(Debug, Clone)]
pub struct GivenNoise {
    path: PathBuf,
    /// `[1, C, R, R, R]` f32.
    sparse_structure: Tensor,
    /// `[N, C']` f32.
    slat: Tensor,
    /// The voxel of each `slat` row, when the file says.
    coords: Option<Vec<[u32; 4]>>,
}

impl GivenNoise {
    /// Reads `ss_noise`, `slat_noise` and, when present, `coords` from the safetensors file
    /// `path`. Refused with the file's name: a missing tensor, another dtype (f32 noise, i32
    /// voxels), a rank other than 5 (`ss_noise`) or 2 (`slat_noise`), `coords` not `[N, 4]`
    /// with one distinct non-negative row per noise row. Shapes against the models are
    /// checked when a run uses the noise.
    pub fn read(path: &Path) -> Result<Self> {
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad_file(path, format!("not a safetensors file: {e}")))?;
        let has_coords = tensors.contains_key(COORDS);
        let mut take = |name: &str, dtype: DType, rank: usize, what: &str| -> Result<Tensor> {
            let t = tensors.remove(name).ok_or_else(|| {
                bad_file(
                    path,
                    format!("no tensor {name:?} ({what}) in the noise file"),
                )
            })?;
            if t.dtype() != dtype {
                return Err(bad_file(
                    path,
                    format!("{name} is {:?}, not {dtype:?}", t.dtype()),
                ));
            }
            if t.rank() != rank {
                return Err(bad_file(
                    path,
                    format!("{name} has shape {:?}, not rank {rank}", t.dims()),
                ));
            }
            Ok(t)
        };
        let sparse_structure = take(SS_NOISE, DType::F32, 5, "stage-1 noise [1, C, R, R, R]")?;
        let slat = take(SLAT_NOISE, DType::F32, 2, "stage-2 noise [N, C]")?;
        let coords = if has_coords {
            let c = take(COORDS, DType::I32, 2, "voxels [N, 4]")?;
            Some(read_coords(path, &c, slat.dims()[0])?)
        } else {
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            sparse_structure,
            slat,
            coords,
        })
    }

    /// The stage-1 noise on `device`, after checking it has the latent's `shape`.
    pub fn sparse_structure(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        if self.sparse_structure.dims() != shape {
            return Err(bad_file(
                &self.path,
                format!(
                    "{SS_NOISE} has shape {:?}, the structure flow samples {shape:?}",
                    self.sparse_structure.dims()
                ),
            ));
        }
        Ok(self.sparse_structure.to_device(device)?)
    }

    /// The stage-2 noise for our voxels `coords` (`(0, x, y, z)`, row-major order) with
    /// `channels` channels, on `device`: row `i` is voxel `i`'s (see the module docs). Fails,
    /// saying the voxel sets differ, when the file's rows are not exactly our voxels.
    pub fn slat(&self, coords: &[[u32; 4]], channels: usize, device: &Device) -> Result<Tensor> {
        let (rows, width) = self.slat.dims2()?;
        if width != channels {
            return Err(bad_file(
                &self.path,
                format!("{SLAT_NOISE} has {width} channels, the structured-latent flow takes {channels}"),
            ));
        }
        let Some(given) = &self.coords else {
            if rows != coords.len() {
                return Err(bad_file(
                    &self.path,
                    format!(
                        "{SLAT_NOISE} has {rows} rows but the sparse structure has {} voxels: the voxel sets differ",
                        coords.len()
                    ),
                ));
            }
            return Ok(self.slat.to_device(device)?);
        };
        let row_of: HashMap<[u32; 4], u32> = given
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, i as u32))
            .collect();
        let rows: Vec<u32> = coords
            .iter()
            .filter_map(|c| row_of.get(c).copied())
            .collect();
        if rows.len() != coords.len() || given.len() != coords.len() {
            return Err(bad_file(
                &self.path,
                format!(
                    "the voxel sets differ: the file has {} voxels, the sparse structure {}; {} of ours are not in the file, {} of the file's are not ours",
                    given.len(),
                    coords.len(),
                    coords.len() - rows.len(),
                    given.len() - rows.len()
                ),
            ));
        }
        let index = Tensor::from_vec(rows, coords.len(), &Device::Cpu)?;
        Ok(self.slat.index_select(&index, 0)?.to_device(device)?)
    }
}

/// `coords` `[N, 4]` i32 as voxels; `rows`: the noise rows they must match one to one.
fn read_coords(path: &Path, coords: &Tensor, rows: usize) -> Result<Vec<[u32; 4]>> {
    let dims = coords.dims();
    if dims != [rows, 4] {
        return Err(bad_file(
            path,
            format!(
                "{COORDS} has shape {dims:?}, not [{rows}, 4] (one voxel per {SLAT_NOISE} row)"
            ),
        ));
    }
    let values = coords.flatten_all()?.to_vec1::<i32>()?;
    if values.iter().any(|v| *v < 0) {
        return Err(bad_file(path, format!("{COORDS} has negative values")));
    }
    let voxels: Vec<[u32; 4]> = values
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]].map(|v| v as u32))
        .collect();
    let distinct: std::collections::HashSet<&[u32; 4]> = voxels.iter().collect();
    if distinct.len() != voxels.len() {
        return Err(bad_file(
            path,
            format!("{COORDS} lists a voxel more than once"),
        ));
    }
    Ok(voxels)
}

/// What one run sampled, for comparing it with another implementation's run (see the module
/// docs for the names); tensors on the run's device.
#[derive(Debug, Clone)]
pub struct RunLatents {
    /// The occupied voxels `(0, x, y, z)`, in the order of the `slat*` rows and of the
    /// Gaussians (32 a voxel for TRELLIS-image-large, voxel after voxel).
    pub coords: Vec<[u32; 4]>,
    /// `[1, C, R, R, R]`: the stage-1 noise.
    pub ss_noise: Tensor,
    /// `[1, C, R, R, R]`: the sampled structure latent.
    pub ss_latent: Tensor,
    /// `[N, C']`: the stage-2 noise, row `i` for voxel `i`.
    pub slat_noise: Tensor,
    /// `[N, C']`: the structured latent, de-normalised.
    pub slat: Tensor,
}

impl RunLatents {
    /// Writes the latents (f32, voxels as i32) as the safetensors file `path`, through a
    /// temporary sibling renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        let f32_host =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?) };
        let flat: Vec<i32> = self.coords.iter().flatten().map(|v| *v as i32).collect();
        let coords = Tensor::from_vec(flat, (self.coords.len(), 4), &Device::Cpu)?;
        let tensors = HashMap::from([
            (COORDS.to_string(), coords),
            (SS_NOISE.to_string(), f32_host(&self.ss_noise)?),
            (SS_LATENT.to_string(), f32_host(&self.ss_latent)?),
            (SLAT_NOISE.to_string(), f32_host(&self.slat_noise)?),
            (SLAT.to_string(), f32_host(&self.slat)?),
        ]);
        let bytes = safetensors::serialize(&tensors, None).map_err(|e| bad_file(path, e))?;
        write_atomically(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::with_suffix;

    fn tensor(values: Vec<f32>, dims: &[usize]) -> Tensor {
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    }

    /// Stage-1 noise `[1, 2, 2, 2, 2]` and stage-2 noise with one row `[i, i]` per voxel.
    fn noise_tensors(rows: usize) -> HashMap<String, Tensor> {
        let slat = (0..rows).flat_map(|i| [i as f32, i as f32]).collect();
        HashMap::from([
            (
                SS_NOISE.to_string(),
                tensor(vec![0.5; 16], &[1, 2, 2, 2, 2]),
            ),
            (SLAT_NOISE.to_string(), tensor(slat, &[rows, 2])),
        ])
    }

    fn coords_tensor(voxels: &[[i32; 4]]) -> Tensor {
        let flat: Vec<i32> = voxels.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (voxels.len(), 4), &Device::Cpu).unwrap()
    }

    fn write(dir: &Path, tensors: &HashMap<String, Tensor>) -> PathBuf {
        let path = dir.join("noise.safetensors");
        candle_core::safetensors::save(tensors, &path).unwrap();
        path
    }

    fn rows(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    const OURS: [[u32; 4]; 3] = [[0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]];

    #[test]
    fn rows_follow_the_voxels() {
        let dir = tempfile::tempdir().unwrap();
        // Without coords: row i is our voxel i.
        let noise = GivenNoise::read(&write(dir.path(), &noise_tensors(3))).unwrap();
        let slat = noise.slat(&OURS, 2, &Device::Cpu).unwrap();
        assert_eq!(rows(&slat), [0.0, 1.0, 2.0]);
        let ss = noise
            .sparse_structure(&[1, 2, 2, 2, 2], &Device::Cpu)
            .unwrap();
        assert_eq!(ss.dims(), [1, 2, 2, 2, 2]);

        // With coords in another order: each voxel takes the row of its own coordinate.
        let mut tensors = noise_tensors(3);
        let listed = [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]];
        tensors.insert(COORDS.to_string(), coords_tensor(&listed));
        let noise = GivenNoise::read(&write(dir.path(), &tensors)).unwrap();
        let slat = noise.slat(&OURS, 2, &Device::Cpu).unwrap();
        assert_eq!(rows(&slat), [1.0, 2.0, 0.0]);
    }

    #[test]
    fn another_structure_is_refused_saying_the_voxel_sets_differ() {
        let dir = tempfile::tempdir().unwrap();
        let noise = GivenNoise::read(&write(dir.path(), &noise_tensors(5))).unwrap();
        let err = noise.slat(&OURS, 2, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("5 rows") && err.contains("3 voxels") && err.contains("voxel sets differ"),
            "{err}"
        );
        let err = noise
            .slat(&OURS[..], 3, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 channels"), "{err}");
        let err = noise
            .sparse_structure(&[1, 8, 16, 16, 16], &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ss_noise has shape [1, 2, 2, 2, 2]"), "{err}");

        // Same count, one voxel elsewhere.
        let mut tensors = noise_tensors(3);
        let listed = [[0, 0, 0, 1], [0, 0, 1, 0], [0, 2, 0, 0]];
        tensors.insert(COORDS.to_string(), coords_tensor(&listed));
        let noise = GivenNoise::read(&write(dir.path(), &tensors)).unwrap();
        let err = noise.slat(&OURS, 2, &Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("voxel sets differ") && err.contains("1 of ours are not in the file"),
            "{err}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |tensors: &HashMap<String, Tensor>, needle: &str| {
            let path = write(dir.path(), tensors);
            let err = GivenNoise::read(&path).unwrap_err().to_string();
            assert!(
                err.contains("noise.safetensors") && err.contains(needle),
                "{needle}: {err}"
            );
        };
        let mut t = noise_tensors(3);
        t.remove(SLAT_NOISE);
        refused(&t, "no tensor \"slat_noise\"");
        let mut t = noise_tensors(3);
        let f64_noise = t[SS_NOISE].to_dtype(DType::F64).unwrap();
        t.insert(SS_NOISE.to_string(), f64_noise);
        refused(&t, "ss_noise is F64, not F32");
        let mut t = noise_tensors(3);
        t.insert(SLAT_NOISE.to_string(), tensor(vec![0.0; 6], &[3, 2, 1]));
        refused(&t, "not rank 2");
        let mut t = noise_tensors(3);
        t.insert(COORDS.to_string(), coords_tensor(&[[0, 0, 0, 0]; 2]));
        refused(&t, "not [3, 4]");
        t.insert(COORDS.to_string(), coords_tensor(&[[0, 0, 0, 0]; 3]));
        refused(&t, "more than once");
        t.insert(COORDS.to_string(), coords_tensor(&[[0, 0, 0, -1]; 3]));
        refused(&t, "negative");
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not tensors").unwrap();
        let err = GivenNoise::read(&junk).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }

    #[test]
    fn saved_latents_read_back_as_noise() {
        let dir = tempfile::tempdir().unwrap();
        let t = noise_tensors(3);
        let latents = RunLatents {
            coords: OURS.to_vec(),
            ss_noise: t[SS_NOISE].clone(),
            ss_latent: t[SS_NOISE].clone(),
            slat_noise: t[SLAT_NOISE].clone(),
            slat: t[SLAT_NOISE].clone(),
        };
        let path = dir.path().join("latents.safetensors");
        latents.save(&path).unwrap();
        assert!(!with_suffix(&path, "tmp").exists());
        let noise = GivenNoise::read(&path).unwrap();
        assert_eq!(noise.coords.as_deref(), Some(&OURS[..]));
        let slat = noise.slat(&OURS, 2, &Device::Cpu).unwrap();
        assert_eq!(rows(&slat), [0.0, 1.0, 2.0]);
        let stored = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(stored[COORDS].dtype(), DType::I32);
        assert_eq!(stored[SS_LATENT].dims(), [1, 2, 2, 2, 2]);
        assert_eq!(stored[SLAT].dims(), [3, 2]);
    }
}
