//! The model-independent part of loading: JSON configs and weight files of a
//! model source ([`FileSource`]: a local folder or a hub repository), in the
//! diffusers / transformers layout of one folder per component.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{NnError, Result};
use crate::hub::FileSource;
use crate::weights::{shard_files, MappedBackend, NameMap, Source, TensorFile};

/// Reads and parses the JSON file at `path`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| NnError::bad_file(path, format!("invalid JSON config: {e}")))
}

/// Reads the JSON config `file` of a model source.
pub fn read_source_json<T: for<'de> Deserialize<'de>>(
    src: &dyn FileSource,
    file: &str,
) -> Result<T> {
    read_json(&src.find(&[file])?)
}

/// Reads the JSON config `file` of a model source and converts it with
/// `convert`, whose error names the file; returns both forms.
pub fn read_source_config<T: for<'de> Deserialize<'de>, U>(
    src: &dyn FileSource,
    file: &str,
    convert: impl FnOnce(&T) -> std::result::Result<U, String>,
) -> Result<(T, U)> {
    let path = src.find(&[file])?;
    let cfg: T = read_json(&path)?;
    let converted = convert(&cfg).map_err(|m| NnError::bad_file(&path, m))?;
    Ok((cfg, converted))
}

/// Opens the weight file at `path` for sharing between models.
pub fn open_shared(path: &Path) -> Result<Arc<TensorFile>> {
    Ok(Arc::new(TensorFile::open(path)?))
}

/// The name map that reads every tensor under its own name.
pub fn identity_map() -> NameMap {
    Arc::new(|n: &str| Some(Source::Key(n.to_string())))
}

/// A `VarBuilder` over a weight file with the stored names; `what` names
/// the model in errors.
pub fn identity_var_builder(
    file: Arc<TensorFile>,
    what: &str,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    MappedBackend::new(file, identity_map(), what).into_var_builder(dtype, device)
}

/// Builds a model, turning candle's error into one naming the weight file
/// `path` and the model `what`.
pub fn build_named<T>(what: &str, path: &Path, r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| NnError::bad_file(path, format!("cannot build the {what}: {e}")))
}

/// The weight file(s) of one component folder `sub` (`unet`,
/// `transformer`, `text_encoder_2`, ...): the first of
/// `{sub}/{stem}.safetensors`, `{sub}/{stem}.fp16.safetensors`, a sharded
/// `{sub}/{stem}[.fp16].safetensors.index.json` (its shards fetched too), or
/// `{sub}/{stem}[.fp16].bin`, for each of `stems` in order. The error names
/// the first candidate.
pub fn component_weights(
    src: &dyn FileSource,
    sub: &str,
    stems: &[&str],
) -> Result<Arc<TensorFile>> {
    let mut singles = vec![];
    let mut indexes = vec![];
    let mut bins = vec![];
    for stem in stems {
        for v in ["", ".fp16"] {
            singles.push(format!("{sub}/{stem}{v}.safetensors"));
            indexes.push(format!("{sub}/{stem}{v}.safetensors.index.json"));
            bins.push(format!("{sub}/{stem}{v}.bin"));
        }
    }
    fn as_refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    if let Some(p) = src.find_optional(&as_refs(&singles)) {
        return open_shared(&p);
    }
    if let Some(index) = src.find_optional(&as_refs(&indexes)) {
        let shards = shard_files(&index)?
            .iter()
            .map(|f| src.find(&[&format!("{sub}/{f}")]))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Arc::new(TensorFile::open_sharded(&index, &shards)?));
    }
    let all: Vec<String> = singles.into_iter().chain(indexes).chain(bins).collect();
    let p = src.find(&as_refs(&all))?;
    open_shared(&p)
}

/// Builds the model of the component folder `sub` with `model`, over the
/// weights of [`component_weights`] in their stored names, in `dtype` on
/// `device`; `what` names the model in errors.
pub fn load_component<T>(
    src: &dyn FileSource,
    sub: &str,
    stems: &[&str],
    what: &str,
    dtype: DType,
    device: &Device,
    model: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let file = component_weights(src, sub, stems)?;
    build_named(
        what,
        file.path(),
        model(identity_var_builder(file.clone(), sub, dtype, device)),
    )
}
