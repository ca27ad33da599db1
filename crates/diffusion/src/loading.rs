//! What every model family of this crate loads from: where the weights are
//! ([`ModelSource`]), device and precision ([`LoadOptions`]), and the
//! components shared by the diffusers layouts of MVDream, SD and FLUX (VAE,
//! CLIP text encoder, tokenizer). Model-independent loading (weight files,
//! folders, the hub) is `splatforge_nn`'s.

use std::path::PathBuf;

use candle_core::{DType, Device};
use splatforge_nn::hub::{parent_or_dot, FileSource, HubConfig, HubRepo, HubSpec, LocalDir};
use splatforge_nn::loading::{load_component, read_source_json};

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{DiffusionError, Result};
use crate::tokenizer::ClipTokenizer;
use crate::vae::{Vae, VaeConfig};

/// Where a model's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A diffusers-layout folder.
    Diffusers(PathBuf),
    /// A single LDM checkpoint, with optional config JSON and tokenizer
    /// (`tokenizer.json` file or tokenizer folder).
    Ldm {
        checkpoint: PathBuf,
        config: Option<PathBuf>,
        tokenizer: Option<PathBuf>,
    },
    /// A diffusers-layout repository on the Hugging Face hub (through the cache).
    HubDiffusers { repo: String, revision: String },
    /// An LDM checkpoint file in a Hugging Face repository (through the cache).
    HubLdm {
        repo: String,
        revision: String,
        file: String,
    },
}

impl ModelSource {
    /// A folder → diffusers layout; a file → LDM checkpoint; `hf:ORG/NAME[@REV]`
    /// → hub diffusers repo; `hf:ORG/NAME[@REV]:FILE` → hub LDM checkpoint.
    pub fn parse(spec: &str) -> Self {
        if let Some(HubSpec {
            repo,
            revision,
            file,
        }) = HubSpec::parse(spec)
        {
            return match file {
                Some(file) => ModelSource::HubLdm {
                    repo,
                    revision,
                    file,
                },
                None => ModelSource::HubDiffusers { repo, revision },
            };
        }
        let p = PathBuf::from(spec);
        if p.is_dir() {
            ModelSource::Diffusers(p)
        } else {
            ModelSource::Ldm {
                checkpoint: p,
                config: None,
                tokenizer: None,
            }
        }
    }

    /// MVDream's diffusers export on the hub.
    pub fn mvdream_hub() -> Self {
        ModelSource::HubDiffusers {
            repo: crate::mvdream::DIFFUSERS_REPO.into(),
            revision: "main".into(),
        }
    }
}

/// Device and precision.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// UNet and text encoder dtype.
    pub dtype: DType,
    /// VAE dtype (`None`: same as `dtype`).
    pub vae_dtype: Option<DType>,
    pub hub: HubConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            vae_dtype: None,
            hub: HubConfig::from_env(),
        }
    }
}

/// The CLIP tokenizer of a diffusers-layout source (`tokenizer/tokenizer.json`,
/// or `tokenizer/vocab.json` + `merges.txt`), padding to `max_length` tokens.
pub(crate) fn diffusers_clip_tokenizer(
    src: &dyn FileSource,
    max_length: usize,
) -> Result<ClipTokenizer> {
    let p = src.find(&["tokenizer/tokenizer.json", "tokenizer/vocab.json"])?;
    if p.ends_with("vocab.json") {
        src.find(&["tokenizer/merges.txt"])?;
    }
    // tokenizer_config.json is optional; fetch it so that from_dir sees it.
    let _ = src.find_optional(&["tokenizer/tokenizer_config.json"]);
    ClipTokenizer::from_dir(&parent_or_dot(&p), max_length)
}

/// The validated `vae/config.json` of a diffusers-layout source.
pub(crate) fn diffusers_vae_config(src: &dyn FileSource) -> Result<VaeConfig> {
    let cfg: VaeConfig = read_source_json(src, "vae/config.json")?;
    cfg.validate().map_err(DiffusionError::Config)?;
    Ok(cfg)
}

/// The VAE of a diffusers-layout source (`vae/`), in `dtype` on `device`.
pub(crate) fn diffusers_vae(
    src: &dyn FileSource,
    cfg: &VaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<Vae> {
    Ok(load_component(
        src,
        "vae",
        &["diffusion_pytorch_model"],
        "VAE",
        dtype,
        device,
        |vb| Vae::new(vb, cfg),
    )?)
}

/// The CLIP text encoder of a diffusers-layout source (`text_encoder/`), in
/// `dtype` on `device`; `what` names it in errors.
pub(crate) fn diffusers_clip_text(
    src: &dyn FileSource,
    cfg: &ClipTextConfig,
    what: &str,
    dtype: DType,
    device: &Device,
) -> Result<ClipTextModel> {
    Ok(load_component(
        src,
        "text_encoder",
        &["model", "pytorch_model"],
        what,
        dtype,
        device,
        |vb| ClipTextModel::new(vb, cfg),
    )?)
}

/// The local folder or hub repository of a diffusers-layout source; `hint`
/// says where to get the model when a file is missing.
pub(crate) fn diffusers_source(
    source: &ModelSource,
    opts: &LoadOptions,
    hint: &str,
    what: &str,
) -> Result<Box<dyn FileSource>> {
    match source {
        ModelSource::Diffusers(dir) => Ok(Box::new(LocalDir {
            root: dir.clone(),
            hint: hint.to_string(),
        })),
        ModelSource::HubDiffusers { repo, revision } => Ok(Box::new(HubRepo {
            hub: opts.hub.clone(),
            repo: repo.clone(),
            revision: revision.clone(),
        })),
        ModelSource::Ldm { checkpoint, .. } => Err(DiffusionError::Config(format!(
            "{what} loads from a diffusers-layout folder or hub repository, not a single checkpoint ({}); {hint}",
            checkpoint.display()
        ))),
        ModelSource::HubLdm { repo, file, .. } => Err(DiffusionError::Config(format!(
            "{what} loads from a diffusers-layout folder or hub repository, not a single checkpoint ({repo}:{file}); {hint}"
        ))),
    }
}
