//! BiRefNet checkpoints with seeded random weights under the published names: tiny ones for
//! tests, full-size Swin-L and Swin-T ones for timing and GPU parity. The file holds the
//! official model's whole state dict (the training-only side outputs included) except its
//! non-float buffers (`attn.relative_position_index`, BatchNorm's `num_batches_tracked`),
//! which the official model recomputes / does not read at inference.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::DType;
use splatforge_nn::weights::{save_random, RandomRecorder, RandomTensor};

use crate::birefnet::BiRefNet;
use crate::config::BiRefNetConfig;
use crate::decoder::Decoder;
use crate::Result;

/// The recipes of every tensor inference reads (what the loader asks a file for), by name.
pub fn inference_tensors(
    config: &BiRefNetConfig,
    seed: u64,
) -> Result<BTreeMap<String, RandomTensor>> {
    let rec = RandomRecorder::new(seed);
    BiRefNet::load(config, rec.var_builder())?;
    Ok(rec.recipes())
}

/// The recipes of the official state dict's float tensors: [`inference_tensors`] plus the
/// training-only side outputs.
pub fn state_dict_tensors(
    config: &BiRefNetConfig,
    seed: u64,
) -> Result<BTreeMap<String, RandomTensor>> {
    let rec = RandomRecorder::new(seed);
    let vb = rec.var_builder();
    BiRefNet::load(config, vb.clone())?;
    Decoder::record_training_only(config, vb.pp("decoder"))?;
    Ok(rec.recipes())
}

/// Writes a random BiRefNet of `config` (seed `seed`) to `path` as safetensors in `dtype`
/// (f32, f16 or bf16); returns the number of tensors written.
pub fn write_random_birefnet(
    config: &BiRefNetConfig,
    seed: u64,
    dtype: DType,
    path: &Path,
) -> Result<usize> {
    let recipes = state_dict_tensors(config, seed)?;
    save_random(&recipes, dtype, path)?;
    Ok(recipes.len())
}
