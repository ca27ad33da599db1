//! Loading MVDream from a diffusers-layout folder, a single LDM checkpoint,
//! or the Hugging Face cache/hub.
//!
//! # Diffusers layout (`ashawkey/mvdream-sd2.1-diffusers`)
//! `model_index.json`; `unet/config.json` (MVDream's UNet parameters) +
//! `unet/diffusion_pytorch_model[.fp16].safetensors` (MVDream tensor names);
//! `vae/config.json` + `vae/diffusion_pytorch_model[.fp16].safetensors`;
//! `text_encoder/config.json` + `text_encoder/model[.fp16].safetensors`;
//! `tokenizer/tokenizer.json` or `tokenizer/vocab.json` + `merges.txt`;
//! optional `scheduler/scheduler_config.json`. `.bin` PyTorch files are read
//! too. Stored fp32/fp16/bf16 weights are converted to the requested dtype.
//!
//! # LDM checkpoint (`MVDream/MVDream`, `sd-v2.1-base-4view.pt`)
//! One file with `model.diffusion_model.*`, `first_stage_model.*` and
//! `cond_stage_model.model.*` (see [`crate::ldm`] for the name mapping),
//! as `.safetensors` or a PyTorch `.pt`/`.ckpt`. Its configuration is
//! MVDream's `sd-v2-base.yaml` unless a JSON [`LdmConfig`] is given or sits
//! next to the checkpoint as `<stem>.json`. The checkpoint has no tokenizer:
//! we use a `tokenizer.json` (or a `tokenizer/` folder) next to it, else
//! `tokenizer.json` of `openai/clip-vit-large-patch14` from the HF cache
//! (same BPE vocabulary as OpenCLIP), padding with id 0 as `open_clip` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::ddim::DdimConfig;
use crate::error::{DiffusionError, Result};
use crate::hub::{self, FileSource, HubConfig, HubRepo, LocalDir};
use crate::ldm;
use crate::mvdream::{MultiViewUNet, MultiViewUNetConfig};
use crate::pipeline::MvDreamPipeline;
use crate::tokenizer::ClipTokenizer;
use crate::vae::{Vae, VaeConfig};
use crate::weights::{MappedBackend, NameMap, Source, TensorFile};

/// Where MVDream's weights are.
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
        if let Some(rest) = spec.strip_prefix("hf:") {
            let (repo_rev, file) = match rest.split_once(':') {
                Some((a, f)) => (a, Some(f.to_string())),
                None => (rest, None),
            };
            let (repo, revision) = match repo_rev.split_once('@') {
                Some((r, v)) => (r.to_string(), v.to_string()),
                None => (repo_rev.to_string(), "main".to_string()),
            };
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
            repo: hub::MVDREAM_DIFFUSERS_REPO.into(),
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

/// The configuration of an LDM checkpoint, in our JSON form: each part in
/// the same format as the diffusers-layout `config.json` files.
/// `text_encoder.num_hidden_layers` is the number of layers used (23 for
/// MVDream: OpenCLIP's penultimate layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LdmConfig {
    pub unet: MultiViewUNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
    #[serde(default)]
    pub scheduler: DdimConfig,
}

impl LdmConfig {
    /// MVDream `sd-v2.1-base-4view` (`configs/sd-v2-base.yaml`).
    pub fn mvdream_sd21_base_4view() -> Self {
        Self {
            unet: MultiViewUNetConfig::sd21_base_4view(),
            vae: VaeConfig::sd21(),
            text_encoder: ClipTextConfig::sd21(),
            scheduler: DdimConfig::default(),
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DiffusionError::bad_file(path, format!("invalid JSON config: {e}")))
}

fn open_shared(path: &Path) -> Result<Arc<TensorFile>> {
    Ok(Arc::new(TensorFile::open(path)?))
}

fn identity_map() -> NameMap {
    Arc::new(|n: &str| Some(Source::Key(n.to_string())))
}

fn build<T>(what: &str, path: &Path, r: candle_core::Result<T>) -> Result<T> {
    r.map_err(|e| DiffusionError::bad_file(path, format!("cannot build the {what}: {e}")))
}

fn check_dims(unet: &MultiViewUNetConfig, text: &ClipTextConfig, vae: &VaeConfig) -> Result<()> {
    if unet.context_dim != text.hidden_size {
        return Err(DiffusionError::Config(format!(
            "the UNet's context_dim {} differs from the text encoder's hidden_size {}",
            unet.context_dim, text.hidden_size
        )));
    }
    if unet.in_channels != vae.latent_channels || unet.out_channels != vae.latent_channels {
        return Err(DiffusionError::Config(format!(
            "the UNet's in/out channels {}/{} differ from the VAE's latent_channels {}",
            unet.in_channels, unet.out_channels, vae.latent_channels
        )));
    }
    unet.validate().map_err(DiffusionError::Config)?;
    vae.validate().map_err(DiffusionError::Config)?;
    Ok(())
}

/// Loads MVDream from any [`ModelSource`].
pub fn load_mvdream(source: &ModelSource, opts: &LoadOptions) -> Result<MvDreamPipeline> {
    crate::ops::configure_device(&opts.device)?;
    match source {
        ModelSource::Diffusers(dir) => load_diffusers(&LocalDir::new(dir), opts),
        ModelSource::HubDiffusers { repo, revision } => load_diffusers(
            &HubRepo {
                hub: opts.hub.clone(),
                repo: repo.clone(),
                revision: revision.clone(),
            },
            opts,
        ),
        ModelSource::Ldm {
            checkpoint,
            config,
            tokenizer,
        } => load_ldm(checkpoint, config.as_deref(), tokenizer.as_deref(), opts),
        ModelSource::HubLdm {
            repo,
            revision,
            file,
        } => {
            let checkpoint = opts.hub.get(repo, revision, file)?;
            load_ldm(&checkpoint, None, None, opts)
        }
    }
}

const UNET_WEIGHTS: &[&str] = &[
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin",
];
const VAE_WEIGHTS: &[&str] = &[
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.bin",
];
const TEXT_WEIGHTS: &[&str] = &[
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin",
];

/// Loads a diffusers-layout MVDream pipeline from a folder or hub repository.
pub fn load_diffusers(src: &dyn FileSource, opts: &LoadOptions) -> Result<MvDreamPipeline> {
    let index_path = src.find(&["model_index.json"])?;
    let index: serde_json::Value = read_json(&index_path)?;
    if let Some(unet_class) = index
        .get("unet")
        .and_then(|u| u.get(1))
        .and_then(|c| c.as_str())
    {
        if !unet_class.contains("MultiView") {
            return Err(DiffusionError::bad_file(
                &index_path,
                format!("the pipeline's UNet is `{unet_class}`, not MVDream's MultiViewUNetModel"),
            ));
        }
    }
    let unet_cfg: MultiViewUNetConfig = read_json(&src.find(&["unet/config.json"])?)?;
    let vae_cfg: VaeConfig = read_json(&src.find(&["vae/config.json"])?)?;
    let text_cfg: ClipTextConfig = read_json(&src.find(&["text_encoder/config.json"])?)?;
    let sched_cfg: DdimConfig = match src.find_optional(&["scheduler/scheduler_config.json"]) {
        Some(p) => read_json(&p)?,
        None => DdimConfig::default(),
    };
    check_dims(&unet_cfg, &text_cfg, &vae_cfg)?;

    let tokenizer = {
        let dir = match src.find_optional(&["tokenizer/tokenizer.json"]) {
            Some(p) => p,
            None => {
                let v = src.find(&["tokenizer/vocab.json", "tokenizer/tokenizer.json"])?;
                src.find(&["tokenizer/merges.txt"])?;
                v
            }
        };
        // tokenizer_config.json is optional; fetch it so that from_dir sees it.
        let _ = src.find_optional(&["tokenizer/tokenizer_config.json"]);
        ClipTokenizer::from_dir(&hub::parent_or_dot(&dir), text_cfg.max_position_embeddings)?
    };

    let vae_dtype = opts.vae_dtype.unwrap_or(opts.dtype);
    let unet_path = src.find(UNET_WEIGHTS)?;
    let unet_vb = MappedBackend::new(open_shared(&unet_path)?, identity_map(), "unet")
        .into_var_builder(opts.dtype, &opts.device);
    let unet = build("UNet", &unet_path, MultiViewUNet::new(unet_vb, &unet_cfg))?;

    let vae_path = src.find(VAE_WEIGHTS)?;
    let vae_vb = MappedBackend::new(open_shared(&vae_path)?, identity_map(), "vae")
        .into_var_builder(vae_dtype, &opts.device);
    let vae = build("VAE", &vae_path, Vae::new(vae_vb, &vae_cfg))?;

    let text_path = src.find(TEXT_WEIGHTS)?;
    let text_vb = MappedBackend::new(open_shared(&text_path)?, identity_map(), "text_encoder")
        .into_var_builder(opts.dtype, &opts.device);
    let text_encoder = build(
        "text encoder",
        &text_path,
        ClipTextModel::new(text_vb, &text_cfg),
    )?;

    Ok(MvDreamPipeline {
        tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler: sched_cfg,
        device: opts.device.clone(),
        dtype: opts.dtype,
        vae_dtype,
        source: src.describe(),
    })
}

/// Which text tower an LDM checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LdmTextTower {
    /// `cond_stage_model.model.*` (SD 2.x, MVDream).
    OpenClip,
    /// `cond_stage_model.transformer.text_model.*` (SD 1.x).
    HfClip,
}

/// Detects the text tower of an LDM checkpoint.
pub fn ldm_text_tower(file: &TensorFile) -> Result<LdmTextTower> {
    if file.contains(&format!("{}token_embedding.weight", ldm::OPENCLIP_PREFIX)) {
        Ok(LdmTextTower::OpenClip)
    } else if file.contains(&format!(
        "{}text_model.embeddings.token_embedding.weight",
        ldm::HF_CLIP_PREFIX
    )) {
        Ok(LdmTextTower::HfClip)
    } else if file.names().iter().any(|n| n.starts_with(ldm::UNET_PREFIX)) {
        Err(DiffusionError::bad_file(
            file.path(),
            "no text encoder (`cond_stage_model.model.token_embedding.weight`) in this LDM checkpoint",
        ))
    } else {
        Err(DiffusionError::bad_file(
            file.path(),
            format!(
                "not an LDM checkpoint: no `{}*` tensors (a diffusers-layout model is a folder with model_index.json)",
                ldm::UNET_PREFIX
            ),
        ))
    }
}

/// Finds the tokenizer for an LDM checkpoint (see the module docs).
fn ldm_tokenizer(
    checkpoint: &Path,
    explicit: Option<&Path>,
    text: &ClipTextConfig,
    tower: LdmTextTower,
    hub: &HubConfig,
) -> Result<ClipTokenizer> {
    let max = text.max_position_embeddings;
    let dir = hub::parent_or_dot(checkpoint);
    let tok = if let Some(p) = explicit {
        if p.is_dir() {
            ClipTokenizer::from_dir(p, max)?
        } else if p.is_file() {
            ClipTokenizer::from_tokenizer_json(p, max)?
        } else {
            return Err(DiffusionError::MissingFile {
                file: p.to_path_buf(),
                hint: "the tokenizer given does not exist".into(),
            });
        }
    } else if dir.join("tokenizer.json").is_file() {
        ClipTokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), max)?
    } else if dir.join("tokenizer").is_dir() {
        ClipTokenizer::from_dir(&dir.join("tokenizer"), max)?
    } else {
        let p = hub.get(hub::CLIP_TOKENIZER_REPO, "main", "tokenizer.json").map_err(|e| match e {
            DiffusionError::MissingFile { file, hint } => DiffusionError::MissingFile {
                file,
                hint: format!(
                    "{hint}. The LDM checkpoint {} has no tokenizer: put a CLIP tokenizer.json next to it, or pass one",
                    checkpoint.display()
                ),
            },
            other => other,
        })?;
        ClipTokenizer::from_tokenizer_json(&p, max)?
    };
    // open_clip.tokenize pads with 0.
    Ok(if tower == LdmTextTower::OpenClip {
        tok.with_pad_id(0)
    } else {
        tok
    })
}

/// Loads MVDream from a single LDM checkpoint.
pub fn load_ldm(
    checkpoint: &Path,
    config: Option<&Path>,
    tokenizer: Option<&Path>,
    opts: &LoadOptions,
) -> Result<MvDreamPipeline> {
    if !checkpoint.is_file() {
        return Err(DiffusionError::MissingFile {
            file: checkpoint.to_path_buf(),
            hint: format!(
                "MVDream's checkpoint is `{}` in the Hugging Face repository {} (`huggingface-cli download {} {}`), or use the diffusers export {}",
                hub::MVDREAM_CHECKPOINT,
                hub::MVDREAM_REPO,
                hub::MVDREAM_REPO,
                hub::MVDREAM_CHECKPOINT,
                hub::MVDREAM_DIFFUSERS_REPO
            ),
        });
    }
    let cfg: LdmConfig = match config {
        Some(p) => read_json(p)?,
        None => {
            let beside = checkpoint.with_extension("json");
            if beside.is_file() {
                read_json(&beside)?
            } else {
                LdmConfig::mvdream_sd21_base_4view()
            }
        }
    };
    check_dims(&cfg.unet, &cfg.text_encoder, &cfg.vae)?;
    let file = open_shared(checkpoint)?;
    let tower = ldm_text_tower(&file)?;
    let tokenizer = ldm_tokenizer(checkpoint, tokenizer, &cfg.text_encoder, tower, &opts.hub)?;
    let vae_dtype = opts.vae_dtype.unwrap_or(opts.dtype);

    let unet_map: NameMap = Arc::new(|n: &str| Some(Source::Key(ldm::unet_key(n))));
    let unet_vb = MappedBackend::new(file.clone(), unet_map, "unet")
        .into_var_builder(opts.dtype, &opts.device);
    let unet = build("UNet", checkpoint, MultiViewUNet::new(unet_vb, &cfg.unet))?;

    let levels = cfg.vae.block_out_channels.len();
    let vae_map: NameMap = Arc::new(move |n: &str| ldm::vae_key(n, levels).map(Source::Key));
    let vae_vb =
        MappedBackend::new(file.clone(), vae_map, "vae").into_var_builder(vae_dtype, &opts.device);
    let vae = build("VAE", checkpoint, Vae::new(vae_vb, &cfg.vae))?;

    let text_map: NameMap = match tower {
        LdmTextTower::OpenClip => Arc::new(ldm::openclip_source),
        LdmTextTower::HfClip => Arc::new(ldm::hf_clip_source),
    };
    let text_vb = MappedBackend::new(file, text_map, "text_encoder")
        .into_var_builder(opts.dtype, &opts.device);
    let text_encoder = build(
        "text encoder",
        checkpoint,
        ClipTextModel::new(text_vb, &cfg.text_encoder),
    )?;

    Ok(MvDreamPipeline {
        tokenizer,
        text_encoder,
        unet,
        vae,
        scheduler: cfg.scheduler,
        device: opts.device.clone(),
        dtype: opts.dtype,
        vae_dtype,
        source: checkpoint.display().to_string(),
    })
}

/// The weight file(s) of one diffusers component folder `sub` (`unet`,
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
        let shards = crate::weights::shard_files(&index)?
            .iter()
            .map(|f| src.find(&[&format!("{sub}/{f}")]))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Arc::new(TensorFile::open_sharded(&index, &shards)?));
    }
    let all: Vec<String> = singles.into_iter().chain(indexes).chain(bins).collect();
    let p = src.find(&as_refs(&all))?;
    open_shared(&p)
}

/// A `VarBuilder` over a weight file with the stored names.
pub(crate) fn identity_var_builder(
    file: Arc<TensorFile>,
    what: &str,
    dtype: DType,
    device: &Device,
) -> candle_nn::VarBuilder<'static> {
    MappedBackend::new(file, identity_map(), what).into_var_builder(dtype, device)
}

/// Reads a JSON config file of a model source.
pub(crate) fn read_source_json<T: for<'de> Deserialize<'de>>(
    src: &dyn FileSource,
    file: &str,
) -> Result<T> {
    read_json(&src.find(&[file])?)
}

/// Reads the JSON config `file` of a model source and converts it with
/// `convert`, whose error names the file; returns both forms.
pub(crate) fn read_source_config<T: for<'de> Deserialize<'de>, U>(
    src: &dyn FileSource,
    file: &str,
    convert: impl FnOnce(&T) -> std::result::Result<U, String>,
) -> Result<(T, U)> {
    let path = src.find(&[file])?;
    let cfg: T = read_json(&path)?;
    let converted = convert(&cfg).map_err(|m| DiffusionError::bad_file(&path, m))?;
    Ok((cfg, converted))
}

/// Builds a model, turning candle's error into one naming the file.
pub(crate) fn build_named<T>(what: &str, path: &Path, r: candle_core::Result<T>) -> Result<T> {
    build(what, path, r)
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
    ClipTokenizer::from_dir(&hub::parent_or_dot(&p), max_length)
}

/// The validated `vae/config.json` of a diffusers-layout source.
pub(crate) fn diffusers_vae_config(src: &dyn FileSource) -> Result<VaeConfig> {
    let cfg: VaeConfig = read_source_json(src, "vae/config.json")?;
    cfg.validate().map_err(DiffusionError::Config)?;
    Ok(cfg)
}

/// Builds the model of the diffusers component folder `sub` with `model`,
/// over the weights of [`component_weights`] in their stored names, in
/// `dtype` on `device`; `what` names the model in errors.
pub(crate) fn diffusers_component<T>(
    src: &dyn FileSource,
    sub: &str,
    stems: &[&str],
    what: &str,
    dtype: DType,
    device: &Device,
    model: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let file = component_weights(src, sub, stems)?;
    build(
        what,
        file.path(),
        model(identity_var_builder(file.clone(), sub, dtype, device)),
    )
}

/// The VAE of a diffusers-layout source (`vae/`), in `dtype` on `device`.
pub(crate) fn diffusers_vae(
    src: &dyn FileSource,
    cfg: &VaeConfig,
    dtype: DType,
    device: &Device,
) -> Result<Vae> {
    diffusers_component(
        src,
        "vae",
        &["diffusion_pytorch_model"],
        "VAE",
        dtype,
        device,
        |vb| Vae::new(vb, cfg),
    )
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
    diffusers_component(
        src,
        "text_encoder",
        &["model", "pytorch_model"],
        what,
        dtype,
        device,
        |vb| ClipTextModel::new(vb, cfg),
    )
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
