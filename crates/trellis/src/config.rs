//! TRELLIS' configuration files: `pipeline.json` (models, samplers, SLat normalisation, the
//! image conditioning model) and the checkpoint wrapper `ckpts/<name>.json`
//! (`{"name": <class>, "args": {...}}`) next to `ckpts/<name>.safetensors`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use splatforge_nn::hub::HubConfig;
use splatforge_nn::weights::{save_random, MappedBackend, RandomTensor, Source, TensorFile};
use splatforge_nn::NnError;

use crate::sampler::{FlowEulerSampler, SamplerParams};
use crate::{Result, TrellisError};

/// A sampler entry of `pipeline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerSpec {
    /// The official sampler class; only `FlowEulerGuidanceIntervalSampler` is run.
    pub name: String,
    pub args: FlowEulerSampler,
    pub params: SamplerParams,
}

/// `slat_normalization`: per-channel statistics of the structured latent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlatNormalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// `args` of `pipeline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineArgs {
    /// Model role (`sparse_structure_flow_model`, …) → checkpoint stem relative to the
    /// pipeline folder (`ckpts/ss_flow_img_dit_L_16l8_fp16`).
    pub models: BTreeMap<String, String>,
    pub sparse_structure_sampler: SamplerSpec,
    pub slat_sampler: SamplerSpec,
    pub slat_normalization: SlatNormalization,
    /// The torch-hub DINOv2 entry point (`dinov2_vitl14_reg`).
    pub image_cond_model: String,
}

/// `pipeline.json` of a TRELLIS image-to-3D model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    pub name: String,
    pub args: PipelineArgs,
}

/// The sampler class this crate implements.
pub const GUIDANCE_INTERVAL_SAMPLER: &str = "FlowEulerGuidanceIntervalSampler";
/// The pipeline class this crate implements.
pub const IMAGE_TO_3D_PIPELINE: &str = "TrellisImageTo3DPipeline";

/// The model roles a TRELLIS image-to-3D Gaussian run needs.
pub const REQUIRED_MODELS: [&str; 4] = [
    "sparse_structure_flow_model",
    "sparse_structure_decoder",
    "slat_flow_model",
    "slat_decoder_gs",
];

impl PipelineConfig {
    /// `microsoft/TRELLIS-image-large`'s `pipeline.json`, the source of our presets'
    /// defaults, as published at
    /// <https://huggingface.co/JeffreyXiang/TRELLIS-image-large/blob/main/pipeline.json> (the
    /// repository's name before it moved to `microsoft/`): both samplers
    /// `FlowEulerGuidanceIntervalSampler(sigma_min=1e-5)` with 25 steps, `cfg_strength` 5.0,
    /// `cfg_interval` [0.5, 1.0], `rescale_t` 3.0. (The official README's example overrides,
    /// 12 steps with cfg 7.5 and 3, are not the file's values.)
    pub fn image_large() -> Self {
        let sampler = SamplerSpec {
            name: GUIDANCE_INTERVAL_SAMPLER.into(),
            args: FlowEulerSampler { sigma_min: 1e-5 },
            params: SamplerParams {
                steps: 25,
                cfg_strength: 5.0,
                cfg_interval: (0.5, 1.0),
                rescale_t: 3.0,
            },
        };
        let models = [
            ("sparse_structure_decoder", "ckpts/ss_dec_conv3d_16l8_fp16"),
            (
                "sparse_structure_flow_model",
                "ckpts/ss_flow_img_dit_L_16l8_fp16",
            ),
            ("slat_decoder_gs", "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16"),
            ("slat_decoder_rf", "ckpts/slat_dec_rf_swin8_B_64l8r16_fp16"),
            (
                "slat_decoder_mesh",
                "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
            ),
            ("slat_flow_model", "ckpts/slat_flow_img_dit_L_64l8p2_fp16"),
        ];
        Self {
            name: IMAGE_TO_3D_PIPELINE.into(),
            args: PipelineArgs {
                models: models
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                sparse_structure_sampler: sampler.clone(),
                slat_sampler: sampler,
                slat_normalization: SlatNormalization {
                    mean: vec![
                        -2.1687545776367188,
                        -0.004347046371549368,
                        -0.13352349400520325,
                        -0.08418072760105133,
                        -0.5271206498146057,
                        0.7238689064979553,
                        -1.1414450407028198,
                        1.2039363384246826,
                    ],
                    std: vec![
                        2.377650737762451,
                        2.386378288269043,
                        2.124418020248413,
                        2.1748552322387695,
                        2.663944721221924,
                        2.371192216873169,
                        2.6217446327209473,
                        2.684523105621338,
                    ],
                },
                image_cond_model: "dinov2_vitl14_reg".into(),
            },
        }
    }

    /// Reads and checks `pipeline.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| bad_file(path, e))?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|e| bad_file(path, format!("not a TRELLIS pipeline.json: {e}")))?;
        config.validate().map_err(|e| bad_file(path, e))?;
        Ok(config)
    }

    /// The checks [`read`](Self::read) makes: the pipeline and sampler classes this crate
    /// implements, the models it needs, usable sampler parameters and statistics.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.name != IMAGE_TO_3D_PIPELINE {
            return Err(format!(
                "pipeline `{}` is not {IMAGE_TO_3D_PIPELINE}",
                self.name
            ));
        }
        let a = &self.args;
        if let Some(missing) = REQUIRED_MODELS.iter().find(|m| !a.models.contains_key(**m)) {
            return Err(format!("no `{missing}` in `models`"));
        }
        if let Some(stem) = a
            .models
            .values()
            .find(|s| s.contains("..") || Path::new(s).is_absolute())
        {
            return Err(format!(
                "checkpoint `{stem}` must be a path inside the pipeline folder"
            ));
        }
        for (role, s) in [
            ("sparse_structure_sampler", &a.sparse_structure_sampler),
            ("slat_sampler", &a.slat_sampler),
        ] {
            if s.name != GUIDANCE_INTERVAL_SAMPLER {
                return Err(format!(
                    "{role}: sampler `{}` is not {GUIDANCE_INTERVAL_SAMPLER}",
                    s.name
                ));
            }
            let p = &s.params;
            if p.steps == 0 || p.rescale_t <= 0.0 || !p.cfg_strength.is_finite() {
                return Err(format!("{role}: unusable parameters {p:?}"));
            }
        }
        let n = &a.slat_normalization;
        if n.mean.is_empty()
            || n.mean.len() != n.std.len()
            || n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(
                "slat_normalization: mean and std must have the same non-zero length, std positive"
                    .into(),
            );
        }
        Ok(())
    }

    /// The checkpoint stem of `role` under the pipeline folder `dir`.
    pub fn checkpoint_stem(&self, dir: &Path, role: &str) -> Result<PathBuf> {
        let stem = self
            .args
            .models
            .get(role)
            .ok_or_else(|| TrellisError::Config(format!("pipeline.json names no `{role}`")))?;
        Ok(dir.join(stem))
    }
}

/// The published TRELLIS image-to-3D model on the Hugging Face hub.
pub const TRELLIS_IMAGE_LARGE_REPO: &str = "microsoft/TRELLIS-image-large";

/// Where a TRELLIS model is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrellisSource {
    /// A folder with `pipeline.json` and the `ckpts/` it names.
    Local(PathBuf),
    /// A Hugging Face repository (`hf:ORG/NAME[@REVISION]`), read through the cache.
    Hub { repo: String, revision: String },
}

impl TrellisSource {
    /// `hf:ORG/NAME[@REVISION]` → hub repository; anything else → local folder.
    pub fn parse(spec: &str) -> Self {
        match spec.strip_prefix("hf:") {
            Some(rest) => {
                let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
                Self::Hub {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                }
            }
            None => Self::Local(PathBuf::from(spec)),
        }
    }

    /// The folder holding `pipeline.json` and the checkpoints of `roles` (their `.json` and
    /// `.safetensors`), taken from the hub cache (downloaded unless offline) for a hub source.
    pub fn resolve(&self, hub: &HubConfig, roles: &[&str]) -> Result<PathBuf> {
        match self {
            Self::Local(dir) => {
                if !dir.join("pipeline.json").is_file() {
                    return Err(bad_file(
                        dir,
                        "no pipeline.json in this folder (expected a TRELLIS model folder)",
                    ));
                }
                Ok(dir.clone())
            }
            Self::Hub { repo, revision } => {
                let get = |file: &str| hub.get(repo, revision, file).map_err(hub_error);
                let pipeline_path = get("pipeline.json")?;
                let pipeline = PipelineConfig::read(&pipeline_path)?;
                for role in roles {
                    let stem = pipeline.args.models.get(*role).ok_or_else(|| {
                        TrellisError::Config(format!("pipeline.json of {repo} names no `{role}`"))
                    })?;
                    get(&format!("{stem}.json"))?;
                    get(&format!("{stem}.safetensors"))?;
                }
                let dir = pipeline_path
                    .parent()
                    .ok_or_else(|| bad_file(&pipeline_path, "has no folder"))?;
                Ok(dir.to_path_buf())
            }
        }
    }
}

/// A hub error as ours: a missing file keeps its path and the hint how to get it.
pub(crate) fn hub_error(e: NnError) -> TrellisError {
    match e {
        NnError::MissingFile { file, hint } => TrellisError::BadFile {
            path: file,
            message: hint,
        },
        other => TrellisError::Config(other.to_string()),
    }
}

/// A checkpoint's `ckpts/<name>.json`: the official class and its constructor arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<A> {
    pub name: String,
    pub args: A,
}

impl<A: DeserializeOwned> Checkpoint<A> {
    /// Reads `<stem>.json`, which must describe class `class`.
    pub fn read(stem: &Path, class: &str) -> Result<Self> {
        let path = with_suffix(stem, "json");
        let text = std::fs::read_to_string(&path).map_err(|e| bad_file(&path, e))?;
        let ckpt: Self = serde_json::from_str(&text)
            .map_err(|e| bad_file(&path, format!("not a {class} checkpoint description: {e}")))?;
        if ckpt.name != class {
            return Err(bad_file(
                &path,
                format!("describes a `{}`, not a `{class}`", ckpt.name),
            ));
        }
        Ok(ckpt)
    }
}

/// `<stem>.<ext>` (the stem may itself contain dots, as the official names do not).
pub fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// A `VarBuilder` over `<stem>.safetensors`, tensors read by their own names and converted
/// to `dtype` on `device`.
pub fn checkpoint_weights(
    stem: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let path = with_suffix(stem, "safetensors");
    weights_with_names(
        &path,
        Arc::new(|name: &str| Some(Source::Key(name.to_string()))),
        dtype,
        device,
    )
}

/// A `VarBuilder` over one weight file (safetensors or PyTorch checkpoint) with `map` from
/// module tensor names to the file's.
pub fn weights_with_names(
    path: &Path,
    map: splatforge_nn::weights::NameMap,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let file = TensorFile::open(path).map_err(|e| bad_file(path, e))?;
    let what = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(MappedBackend::new(Arc::new(file), map, what).into_var_builder(dtype, device))
}

/// Writes a checkpoint as the official pipeline stores it: `<stem>.json` (class and
/// arguments) and `<stem>.safetensors` (the recorded random tensors, stored as `dtype`),
/// each through a temporary file renamed into place.
pub fn write_checkpoint<A: Serialize>(
    stem: &Path,
    class: &str,
    args: &A,
    tensors: &BTreeMap<String, RandomTensor>,
    dtype: DType,
) -> Result<()> {
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).map_err(|e| bad_file(dir, e))?;
    }
    save_random(tensors, dtype, &with_suffix(stem, "safetensors"))
        .map_err(|e| bad_file(stem, e))?;
    let json = serde_json::to_string_pretty(&Checkpoint {
        name: class.to_string(),
        args,
    })
    .map_err(|e| TrellisError::Config(e.to_string()))?;
    write_atomically(&with_suffix(stem, "json"), json.as_bytes())
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, "tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad_file(path, e)
    })
}

pub(crate) fn bad_file(path: &Path, message: impl std::fmt::Display) -> TrellisError {
    TrellisError::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_large_preset_round_trips_through_pipeline_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.json");
        let preset = PipelineConfig::image_large();
        std::fs::write(&path, serde_json::to_string_pretty(&preset).unwrap()).unwrap();
        let read = PipelineConfig::read(&path).unwrap();
        assert_eq!(read, preset);
        assert_eq!(
            read.args.sparse_structure_sampler.params.cfg_interval,
            (0.5, 1.0)
        );
        assert_eq!(
            read.checkpoint_stem(dir.path(), "slat_flow_model").unwrap(),
            dir.path().join("ckpts/slat_flow_img_dit_L_64l8p2_fp16")
        );
    }

    #[test]
    fn the_preset_is_the_published_pipeline_json() {
        // https://huggingface.co/JeffreyXiang/TRELLIS-image-large/blob/main/pipeline.json
        let published = r#"{
            "name": "TrellisImageTo3DPipeline",
            "args": {
                "models": {
                    "sparse_structure_decoder": "ckpts/ss_dec_conv3d_16l8_fp16",
                    "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_L_16l8_fp16",
                    "slat_decoder_gs": "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16",
                    "slat_decoder_rf": "ckpts/slat_dec_rf_swin8_B_64l8r16_fp16",
                    "slat_decoder_mesh": "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16",
                    "slat_flow_model": "ckpts/slat_flow_img_dit_L_64l8p2_fp16"
                },
                "sparse_structure_sampler": {
                    "name": "FlowEulerGuidanceIntervalSampler",
                    "args": {"sigma_min": 1e-5},
                    "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
                },
                "slat_sampler": {
                    "name": "FlowEulerGuidanceIntervalSampler",
                    "args": {"sigma_min": 1e-5},
                    "params": {"steps": 25, "cfg_strength": 5.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
                },
                "slat_normalization": {
                    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
                             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
                    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
                            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338]
                },
                "image_cond_model": "dinov2_vitl14_reg"
            }
        }"#;
        let parsed: PipelineConfig = serde_json::from_str(published).unwrap();
        assert_eq!(parsed, PipelineConfig::image_large());
    }

    #[test]
    fn pipeline_json_in_the_official_layout_parses() {
        // The official file's layout (arrays for the interval, extra keys ignored).
        let text = r#"{"name": "TrellisImageTo3DPipeline", "args": {
            "models": {"sparse_structure_flow_model": "ckpts/a", "sparse_structure_decoder": "ckpts/b",
                       "slat_flow_model": "ckpts/c", "slat_decoder_gs": "ckpts/d"},
            "sparse_structure_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05},
                "params": {"steps": 12, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
            "slat_sampler": {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-05},
                "params": {"steps": 12, "cfg_strength": 3.0, "cfg_interval": [0.5, 0.95], "rescale_t": 3.0}},
            "slat_normalization": {"mean": [0.5], "std": [2.0]},
            "image_cond_model": "dinov2_vitl14_reg", "extra": 1}}"#;
        let c: PipelineConfig = serde_json::from_str(text).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.args.slat_sampler.params.cfg_interval, (0.5, 0.95));
        assert_eq!(c.args.slat_sampler.args.sigma_min, 1e-5);
    }

    #[test]
    fn bad_pipeline_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.json");
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            PipelineConfig::read(&path),
            Err(TrellisError::BadFile { .. })
        ));
        let mut c = PipelineConfig::image_large();
        c.args.models.remove("slat_decoder_gs");
        assert!(c.validate().unwrap_err().contains("slat_decoder_gs"));
        let mut c = PipelineConfig::image_large();
        c.args
            .models
            .insert("slat_flow_model".into(), "../../etc/x".into());
        assert!(c.validate().is_err());
        let mut c = PipelineConfig::image_large();
        c.args.slat_sampler.name = "FlowEulerSampler".into();
        assert!(c.validate().is_err());
        let mut c = PipelineConfig::image_large();
        c.args.slat_normalization.std[0] = 0.0;
        assert!(c.validate().is_err());
        assert!(PipelineConfig::read(&dir.path().join("missing.json")).is_err());
    }

    #[test]
    fn hub_sources_resolve_from_the_cache() {
        assert_eq!(
            TrellisSource::parse("hf:microsoft/TRELLIS-image-large"),
            TrellisSource::Hub {
                repo: TRELLIS_IMAGE_LARGE_REPO.into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            TrellisSource::parse("hf:a/b@v2"),
            TrellisSource::Hub {
                repo: "a/b".into(),
                revision: "v2".into()
            }
        );
        assert_eq!(
            TrellisSource::parse("models/trellis"),
            TrellisSource::Local("models/trellis".into())
        );

        let cache = tempfile::tempdir().unwrap();
        let hub = HubConfig {
            cache_dir: cache.path().to_path_buf(),
            offline: true,
        };
        let repo_dir = hub.repo_dir(TRELLIS_IMAGE_LARGE_REPO);
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs/main"), "abc123").unwrap();
        let snapshot = repo_dir.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        let preset = PipelineConfig::image_large();
        std::fs::write(
            snapshot.join("pipeline.json"),
            serde_json::to_string(&preset).unwrap(),
        )
        .unwrap();
        let source = TrellisSource::parse("hf:microsoft/TRELLIS-image-large");
        let role = ["sparse_structure_decoder"];
        // Offline without the checkpoint: the error names the file and how to get it.
        let err = source.resolve(&hub, &role).unwrap_err().to_string();
        assert!(
            err.contains("ss_dec_conv3d_16l8_fp16.json")
                && err.contains("huggingface-cli download"),
            "{err}"
        );
        let stem = preset
            .checkpoint_stem(&snapshot, "sparse_structure_decoder")
            .unwrap();
        write_checkpoint(
            &stem,
            "SparseStructureDecoder",
            &1,
            &BTreeMap::new(),
            DType::F32,
        )
        .unwrap();
        assert_eq!(source.resolve(&hub, &role).unwrap(), snapshot);
        assert!(TrellisSource::Local(cache.path().to_path_buf())
            .resolve(&hub, &role)
            .is_err());
        assert_eq!(
            TrellisSource::Local(snapshot.clone())
                .resolve(&hub, &role)
                .unwrap(),
            snapshot
        );
    }

    #[test]
    fn checkpoint_json_names_its_class() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Args {
            width: usize,
        }
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("ckpts/model_fp16");
        write_checkpoint(
            &stem,
            "Model",
            &Args { width: 3 },
            &BTreeMap::new(),
            DType::F16,
        )
        .unwrap();
        assert_eq!(
            Checkpoint::<Args>::read(&stem, "Model").unwrap().args,
            Args { width: 3 }
        );
        assert!(Checkpoint::<Args>::read(&stem, "Other").is_err());
        assert!(with_suffix(&stem, "safetensors").is_file());
    }
}
