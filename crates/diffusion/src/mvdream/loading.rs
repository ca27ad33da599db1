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
//! `cond_stage_model.model.*` (see [`super::ldm`] for the name mapping),
//! as `.safetensors` or a PyTorch `.pt`/`.ckpt`. Its configuration is
//! MVDream's `sd-v2-base.yaml` unless a JSON [`LdmConfig`] is given or sits
//! next to the checkpoint as `<stem>.json`. The checkpoint has no tokenizer:
//! we use a `tokenizer.json` (or a `tokenizer/` folder) next to it, else
//! `tokenizer.json` of `openai/clip-vit-large-patch14` from the HF cache
//! (same BPE vocabulary as OpenCLIP), padding with id 0 as `open_clip` does.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use splatforge_nn::hub::{parent_or_dot, FileSource, HubConfig, HubRepo, LocalDir};
use splatforge_nn::loading::{build_named, identity_map, open_shared, read_json};
use splatforge_nn::weights::{MappedBackend, NameMap, Source, TensorFile};
use splatforge_nn::NnError;

use super::ldm;
use super::pipeline::MvDreamPipeline;
use super::unet::{MultiViewUNet, MultiViewUNetConfig};
use super::{CHECKPOINT, CHECKPOINT_REPO, CLIP_TOKENIZER_REPO, DIFFUSERS_REPO};
use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{DiffusionError, Result};
use crate::loading::{LoadOptions, ModelSource};
use crate::schedulers::ddim::DdimConfig;
use crate::tokenizer::ClipTokenizer;
use crate::vae::{Vae, VaeConfig};

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

/// A local diffusers-layout MVDream folder; a missing file's error says
/// where to get MVDream.
fn local_dir(root: &Path) -> LocalDir {
    LocalDir {
        root: root.to_path_buf(),
        hint: format!(
            "expected a diffusers-layout MVDream folder such as a snapshot of the Hugging Face repository {DIFFUSERS_REPO} (`huggingface-cli download {DIFFUSERS_REPO}`)"
        ),
    }
}

/// Loads MVDream from any [`ModelSource`].
pub fn load_mvdream(source: &ModelSource, opts: &LoadOptions) -> Result<MvDreamPipeline> {
    splatforge_nn::configure_device(&opts.device)?;
    match source {
        ModelSource::Diffusers(dir) => load_diffusers(&local_dir(dir), opts),
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
        ClipTokenizer::from_dir(&parent_or_dot(&dir), text_cfg.max_position_embeddings)?
    };

    let vae_dtype = opts.vae_dtype.unwrap_or(opts.dtype);
    let unet_path = src.find(UNET_WEIGHTS)?;
    let unet_vb = MappedBackend::new(open_shared(&unet_path)?, identity_map(), "unet")
        .into_var_builder(opts.dtype, &opts.device);
    let unet = build_named("UNet", &unet_path, MultiViewUNet::new(unet_vb, &unet_cfg))?;

    let vae_path = src.find(VAE_WEIGHTS)?;
    let vae_vb = MappedBackend::new(open_shared(&vae_path)?, identity_map(), "vae")
        .into_var_builder(vae_dtype, &opts.device);
    let vae = build_named("VAE", &vae_path, Vae::new(vae_vb, &vae_cfg))?;

    let text_path = src.find(TEXT_WEIGHTS)?;
    let text_vb = MappedBackend::new(open_shared(&text_path)?, identity_map(), "text_encoder")
        .into_var_builder(opts.dtype, &opts.device);
    let text_encoder = build_named(
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
    let dir = parent_or_dot(checkpoint);
    let tok = if let Some(p) = explicit {
        if p.is_dir() {
            ClipTokenizer::from_dir(p, max)?
        } else if p.is_file() {
            ClipTokenizer::from_tokenizer_json(p, max)?
        } else {
            return Err(NnError::MissingFile {
                file: p.to_path_buf(),
                hint: "the tokenizer given does not exist".into(),
            }
            .into());
        }
    } else if dir.join("tokenizer.json").is_file() {
        ClipTokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), max)?
    } else if dir.join("tokenizer").is_dir() {
        ClipTokenizer::from_dir(&dir.join("tokenizer"), max)?
    } else {
        let p = hub.get(CLIP_TOKENIZER_REPO, "main", "tokenizer.json").map_err(|e| match e {
            NnError::MissingFile { file, hint } => NnError::MissingFile {
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
        return Err(NnError::MissingFile {
            file: checkpoint.to_path_buf(),
            hint: format!(
                "MVDream's checkpoint is `{}` in the Hugging Face repository {} (`huggingface-cli download {} {}`), or use the diffusers export {}",
                CHECKPOINT,
                CHECKPOINT_REPO,
                CHECKPOINT_REPO,
                CHECKPOINT,
                DIFFUSERS_REPO
            ),
        }
.into());
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
    let unet = build_named("UNet", checkpoint, MultiViewUNet::new(unet_vb, &cfg.unet))?;

    let levels = cfg.vae.block_out_channels.len();
    let vae_map: NameMap = Arc::new(move |n: &str| ldm::vae_key(n, levels).map(Source::Key));
    let vae_vb =
        MappedBackend::new(file.clone(), vae_map, "vae").into_var_builder(vae_dtype, &opts.device);
    let vae = build_named("VAE", checkpoint, Vae::new(vae_vb, &cfg.vae))?;

    let text_map: NameMap = match tower {
        LdmTextTower::OpenClip => Arc::new(ldm::openclip_source),
        LdmTextTower::HfClip => Arc::new(ldm::hf_clip_source),
    };
    let text_vb = MappedBackend::new(file, text_map, "text_encoder")
        .into_var_builder(opts.dtype, &opts.device);
    let text_encoder = build_named(
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
