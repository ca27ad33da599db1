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

/// The tensor of the matte's last convolution (`decoder.conv_out1`), whose output goes
/// through the sigmoid.
const OUTPUT_CONV_WEIGHT: &str = "decoder.conv_out1.0.weight";

/// How much [`write_random_birefnet_with_contrast`] scales the output convolution: enough
/// that the tiny model's logits spread over about ±10, so the matte holds both clear
/// foreground (> 0.8, what TRELLIS' crop keeps) and clear background.
pub const RANDOM_MATTE_CONTRAST: f32 = 16.0;

/// [`write_random_birefnet`] with the output convolution's weights multiplied by `gain`. An
/// untrained BiRefNet's matte sits near 0.5 everywhere (0.35–0.7 for the tiny model), in
/// which TRELLIS' crop finds no object (no pixel above 0.8); with the gain the random
/// matte is decisive, as a trained one is, so the image pipeline runs end to end on random
/// weights. Timing is unaffected (the values, not the shapes, change).
pub fn write_random_birefnet_with_contrast(
    config: &BiRefNetConfig,
    seed: u64,
    dtype: DType,
    path: &Path,
    gain: f32,
) -> Result<usize> {
    let mut recipes = state_dict_tensors(config, seed)?;
    let out = recipes.get_mut(OUTPUT_CONV_WEIGHT).ok_or_else(|| {
        crate::MatteError::Config(format!("no `{OUTPUT_CONV_WEIGHT}` in the model"))
    })?;
    let values = out.values().into_iter().map(|v| v * gain).collect();
    *out = RandomTensor::given(out.dims(), values)?;
    save_random(&recipes, dtype, path)?;
    Ok(recipes.len())
}
