//! Random-weight models with the real tensor names and file layouts: tiny
//! MVDream, SD-Turbo (SD 2.1 architecture) and FLUX.1-schnell for tests, and
//! MVDream at its real size for timing runs without the real weights.
//!
//! [`make_tiny`] writes, under `dir`:
//! * `mvdream-diffusers/`: the diffusers layout of `ashawkey/mvdream-sd2.1-diffusers`
//!   (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`);
//! * `mvdream-ldm/sd-v2.1-base-4view-tiny.safetensors`: the same weights as
//!   one LDM-format checkpoint (`model.diffusion_model.*`, `first_stage_model.*`,
//!   `cond_stage_model.model.*` with OpenCLIP's fused `in_proj` and one more
//!   residual block than is used, like ViT-H's 24 of which MVDream uses 23;
//!   plus the schedule buffers an LDM checkpoint carries), its config
//!   `sd-v2.1-base-4view-tiny.json` and a `tokenizer.json`;
//! * `sd-turbo-diffusers/` ([`make_tiny_sd`]): `stabilityai/sd-turbo`'s layout
//!   (`unet/` in diffusers `UNet2DConditionModel` names as candle-transformers
//!   reads them, `vae/`, `text_encoder/`, `tokenizer/` as `vocab.json` +
//!   `merges.txt`, an Euler "trailing" `scheduler/`);
//! * `flux-schnell-diffusers/` ([`make_tiny_flux`]): `black-forest-labs/FLUX.1-schnell`'s
//!   layout (`transformer/` in diffusers `FluxTransformer2DModel` names, two
//!   shards and an index; `text_encoder/` CLIP with quick GELU; `text_encoder_2/`
//!   T5 v1.1 encoder, two shards; `tokenizer_2/tokenizer.json` unigram;
//!   16-channel `vae/`; flow-matching `scheduler/`), and the same transformer
//!   in original BFL names in `flux-bfl/flux1-schnell-tiny.safetensors`.
//!
//! [`make_random_mvdream`] writes only the diffusers layout, at the tiny size or
//! at MVDream's real size ([`ModelSize::Full`], for timing runs without the
//! real weights), through the same code as [`make_tiny`].
//! [`make_random_flux`] writes FLUX.1-schnell's diffusers layout at the tiny
//! size or the real one (33.7 GB in bf16), streamed to disk with bounded memory.
//!
//! Dimensions: UNet `model_channels 32, channel_mult [1, 2], 1 res block per
//! level, head dim 8, context 32, camera_dim 16`; VAE 4 levels of 32 channels
//! (×8 like SD, so 256² images ↔ 32² latents), 1 layer per block; text encoder
//! width 32, 4 heads, 2 layers used (3 stored in the LDM file), vocabulary of
//! about 100 BPE tokens. Weights are seeded random (see [`SeededInit`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use splatforge_nn::hub::parent_or_dot;
use splatforge_nn::rng::hash_name;
use splatforge_nn::weights::{
    save_random, save_random_sharded, write_shard_index, RandomRecorder, RandomTensor, SeededInit,
    Source,
};

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::error::{DiffusionError, Result};
use crate::flux::transformer::FluxTransformer;
use crate::flux::{flux_diffusers_source, FluxTransformerConfig};
use crate::mvdream::ldm;
use crate::mvdream::{LdmConfig, MultiViewUNet, MultiViewUNetConfig, PerLevel};
use crate::schedulers::ddim::DdimConfig;
use crate::sd::{PerBlock, SdUNetConfig};
use crate::tokenizer::{
    build_clip_tokenizer, build_t5_tokenizer, BOS, EOS, T5_EOS, T5_PAD, T5_UNK,
};
use crate::vae::{Vae, VaeConfig};

mod flux;
mod sd;

pub use flux::{
    flux_bfl_to_diffusers, make_random_flux, make_tiny_flux, tiny_flux_config, tiny_t5_config,
    tiny_t5_pieces, FluxWeight, RandomFlux, FLUX_BFL_FILE, FLUX_DIR,
};
pub use sd::{make_tiny_sd, tiny_sd_unet_config, SD_DIR};

/// Folder of the diffusers layout inside the output folder.
pub const DIFFUSERS_DIR: &str = "mvdream-diffusers";
/// Folder of the LDM checkpoint inside the output folder.
pub const LDM_DIR: &str = "mvdream-ldm";
/// File name of the LDM checkpoint.
pub const LDM_FILE: &str = "sd-v2.1-base-4view-tiny.safetensors";

/// Options of [`make_tiny`] and [`make_random_mvdream`].
#[derive(Debug, Clone)]
pub struct TinyOptions {
    pub seed: u64,
    /// Stored dtype of all weights (both layouts).
    pub dtype: DType,
}

impl Default for TinyOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            dtype: DType::F32,
        }
    }
}

/// What [`make_tiny`] wrote.
#[derive(Debug, Clone)]
pub struct TinyModels {
    pub diffusers_dir: PathBuf,
    pub ldm_checkpoint: PathBuf,
    pub ldm_config: PathBuf,
    /// Parameter counts (UNet, VAE, text encoder as used).
    pub unet_params: usize,
    pub vae_params: usize,
    pub text_params: usize,
    /// The tiny SD-Turbo (SD 2.1 architecture) in diffusers layout.
    pub sd_dir: PathBuf,
    /// The tiny FLUX.1-schnell in diffusers layout.
    pub flux_dir: PathBuf,
    /// The tiny FLUX transformer in original (BFL) names.
    pub flux_bfl_checkpoint: PathBuf,
}

/// The tiny configuration: MVDream's ([`LdmConfig::mvdream_sd21_base_4view`])
/// at the dimensions of the module docs.
pub fn tiny_config() -> LdmConfig {
    LdmConfig {
        unet: MultiViewUNetConfig {
            model_channels: 32,
            num_res_blocks: PerLevel::All(1),
            channel_mult: vec![1, 2],
            num_head_channels: 8,
            context_dim: 32,
            ..MultiViewUNetConfig::sd21_base_4view()
        },
        vae: VaeConfig {
            block_out_channels: vec![32, 32, 32, 32],
            layers_per_block: 1,
            ..VaeConfig::sd21()
        },
        text_encoder: ClipTextConfig {
            vocab_size: 0, // set from the tokenizer
            hidden_size: 32,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
        },
        scheduler: DdimConfig::default(),
    }
}

/// Words the tiny BPE vocabulary can spell whole.
pub const TINY_WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "car",
    "house",
    "3d",
    "asset",
    "blurry",
    "ugly",
    "low",
    "quality",
    "astronaut",
    "riding",
    "horse",
    "owl",
    "cute",
];

/// The tiny CLIP-style BPE vocabulary and merges: `!` = 0 (the padding token
/// of SD 2.x), single characters with and without `</w>`, the merges that
/// spell [`TINY_WORDS`], then `<|startoftext|>` and `<|endoftext|>`.
pub fn tiny_vocab() -> (Vec<String>, Vec<(String, String)>) {
    let mut vocab: Vec<String> = vec!["!".into(), "!</w>".into()];
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').chain(",.-'".chars()).collect();
    for c in &chars {
        vocab.push(c.to_string());
    }
    for c in &chars {
        vocab.push(format!("{c}</w>"));
    }
    let mut merges: Vec<(String, String)> = vec![];
    for w in TINY_WORDS {
        let cs: Vec<String> = w.chars().map(|c| c.to_string()).collect();
        if cs.len() < 2 {
            continue;
        }
        let mut prefix = cs[0].clone();
        for (i, c) in cs.iter().enumerate().skip(1) {
            let last = i + 1 == cs.len();
            let right = if last { format!("{c}</w>") } else { c.clone() };
            let merged = format!("{prefix}{right}");
            let m = (prefix.clone(), right);
            if !merges.contains(&m) {
                merges.push(m);
                vocab.push(merged.clone());
            }
            prefix = format!("{prefix}{c}");
        }
    }
    vocab.push(BOS.into());
    vocab.push(EOS.into());
    (vocab, merges)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("serialisable") + "\n";
    std::fs::write(path, text).map_err(|e| DiffusionError::io(path, e))
}

fn with_class(v: impl serde::Serialize, extra: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut v = serde_json::to_value(v).expect("serialisable");
    if let serde_json::Value::Object(m) = &mut v {
        for (k, x) in extra {
            m.insert((*k).to_string(), x.clone());
        }
    }
    v
}

fn save(tensors: &BTreeMap<String, Tensor>, dtype: DType, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&map, path)
        .map_err(|e| DiffusionError::bad_file(path, e.to_string()))
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| DiffusionError::io(p, e))
}

/// The sizes of MVDream that [`make_random_mvdream`] writes (and of FLUX.1-schnell
/// that [`make_random_flux`] writes: the tiny configurations of [`make_tiny_flux`],
/// or the published one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSize {
    /// [`tiny_config`]: the MVDream of [`make_tiny`].
    Tiny,
    /// MVDream `sd-v2.1-base-4view` at its real size
    /// ([`LdmConfig::mvdream_sd21_base_4view`]): the UNet of
    /// `MultiViewUNetConfig::sd21_base_4view` (camera_dim 16), SD 2.1's VAE
    /// (128/256/512/512 channels, 2 layers per block), and OpenCLIP ViT-H/14's
    /// text tower (width 1024, 16 heads, MLP 4096, GELU, 77 positions, 49408
    /// tokens; 23 layers, as diffusers stores SD 2.1's penultimate-layer
    /// encoder). 1.29 billion parameters: UNet 868 M, VAE 84 M, text 340 M.
    Full,
}

impl ModelSize {
    /// The configuration. The tiny model's vocabulary is exactly the tiny
    /// tokenizer's ([`tiny_vocab`]), the full model's OpenCLIP's 49408.
    pub fn config(self) -> LdmConfig {
        match self {
            ModelSize::Tiny => {
                let mut cfg = tiny_config();
                cfg.text_encoder.vocab_size = tiny_vocab().0.len();
                cfg
            }
            ModelSize::Full => LdmConfig::mvdream_sd21_base_4view(),
        }
    }
}

/// Random MVDream weights as recipes ([`RandomTensor`]), each component
/// from its own seed.
struct MvDreamRecipes {
    unet: BTreeMap<String, RandomTensor>,
    /// In modern diffusers names.
    vae: BTreeMap<String, RandomTensor>,
    /// The text tower with one more layer than the configuration uses, like
    /// OpenCLIP ViT-H's 24 of which MVDream uses 23.
    text_all: BTreeMap<String, RandomTensor>,
    /// The layers used (what a diffusers `text_encoder/` holds).
    text_used: BTreeMap<String, RandomTensor>,
}

impl MvDreamRecipes {
    fn new(cfg: &LdmConfig, seed: u64) -> Result<Self> {
        let recorder = |what: &str| RandomRecorder::new(seed ^ hash_name(what));
        let unet = recorder("unet");
        MultiViewUNet::new(unet.var_builder(), &cfg.unet)?;

        let vae = vae_recipes(&cfg.vae, seed ^ hash_name("vae"))?;

        let text = recorder("text_encoder");
        let mut full_text = cfg.text_encoder.clone();
        full_text.num_hidden_layers += 1;
        ClipTextModel::new(text.var_builder(), &full_text)?;
        let text_all = text.recipes();
        let unused = format!(
            "text_model.encoder.layers.{}.",
            cfg.text_encoder.num_hidden_layers
        );
        let text_used = text_all
            .iter()
            .filter(|(k, _)| !k.starts_with(&unused))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        Ok(Self {
            unet: unet.recipes(),
            vae,
            text_all,
            text_used,
        })
    }
}

/// The recipes of a random VAE of `cfg`, in modern diffusers names (candle
/// asks for the old attention names when nothing exists yet).
fn vae_recipes(cfg: &VaeConfig, seed: u64) -> Result<BTreeMap<String, RandomTensor>> {
    let vae = RandomRecorder::new(seed);
    Vae::new(vae.var_builder(), cfg)?;
    Ok(vae
        .recipes()
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replace(".attentions.0.query.", ".attentions.0.to_q.")
                .replace(".attentions.0.key.", ".attentions.0.to_k.")
                .replace(".attentions.0.value.", ".attentions.0.to_v.")
                .replace(".attentions.0.proj_attn.", ".attentions.0.to_out.0.");
            (k, t)
        })
        .collect())
}

fn count_recipes(ts: &BTreeMap<String, RandomTensor>) -> usize {
    ts.values().map(RandomTensor::elem_count).sum()
}

fn materialise(ts: &BTreeMap<String, RandomTensor>) -> Result<BTreeMap<String, Tensor>> {
    Ok(ts
        .iter()
        .map(|(k, r)| Ok((k.clone(), r.tensor()?)))
        .collect::<candle_core::Result<_>>()?)
}

/// Writes MVDream in the diffusers layout of `ashawkey/mvdream-sd2.1-diffusers`
/// into `ddir`: `model_index.json`, `unet/`, `vae/`, `text_encoder/` (configs
/// from `cfg`, weights from `recipes` stored as `dtype`), `tokenizer/` (the
/// BPE `vocab` and `merges`), a DDIM `scheduler/`. Returns the tokenizer.
fn write_mvdream_diffusers(
    ddir: &Path,
    cfg: &LdmConfig,
    recipes: &MvDreamRecipes,
    vocab: &[String],
    merges: &[(String, String)],
    dtype: DType,
) -> Result<tokenizers::Tokenizer> {
    if cfg.text_encoder.vocab_size < vocab.len() {
        return Err(DiffusionError::Config(format!(
            "the text encoder's vocab_size {} is smaller than the tokenizer's {} tokens",
            cfg.text_encoder.vocab_size,
            vocab.len()
        )));
    }
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        mkdir(&ddir.join(sub))?;
    }
    write_json(
        &ddir.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "MVDreamPipeline",
            "_diffusers_version": "0.25.0",
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["mv_unet", "MultiViewUNetModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;
    write_json(
        &ddir.join("unet/config.json"),
        &with_class(&cfg.unet, &[("_class_name", "MultiViewUNetModel".into())]),
    )?;
    write_json(&ddir.join("vae/config.json"), &vae_json(&cfg.vae))?;
    write_json(
        &ddir.join("text_encoder/config.json"),
        &with_class(
            &cfg.text_encoder,
            &[
                ("architectures", serde_json::json!(["CLIPTextModel"])),
                ("model_type", "clip_text_model".into()),
                ("projection_dim", cfg.text_encoder.hidden_size.into()),
            ],
        ),
    )?;
    write_json(
        &ddir.join("scheduler/scheduler_config.json"),
        &with_class(
            &cfg.scheduler,
            &[
                ("_class_name", "DDIMScheduler".into()),
                ("clip_sample", false.into()),
            ],
        ),
    )?;
    save_random(
        &recipes.unet,
        dtype,
        &ddir.join("unet/diffusion_pytorch_model.safetensors"),
    )?;
    save_random(
        &recipes.vae,
        dtype,
        &ddir.join("vae/diffusion_pytorch_model.safetensors"),
    )?;
    save_random(
        &recipes.text_used,
        dtype,
        &ddir.join("text_encoder/model.safetensors"),
    )?;
    // Tokenizer: tokenizer.json plus the slow tokenizer's files.
    write_clip_tokenizer(&ddir.join("tokenizer"), vocab, merges, "!", true)
}

/// What [`make_random_mvdream`] wrote.
#[derive(Debug, Clone)]
pub struct RandomMvDream {
    /// The diffusers-layout folder (holds `model_index.json`).
    pub dir: PathBuf,
    /// Parameter counts (UNet, VAE, text encoder as stored).
    pub unet_params: usize,
    pub vae_params: usize,
    pub text_params: usize,
    /// Total size of the three weight files.
    pub weight_bytes: u64,
}

/// Writes only MVDream's diffusers layout (`model_index.json`, `unet/`,
/// `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) of configuration
/// `cfg` (usually [`ModelSize::config`]) with seeded random weights, stored
/// as `opts.dtype` (f32, f16 or bf16), into the folder `dir` itself:
/// `--models dir` loads it. For timing runs where the
/// real weights cannot be had: the time of every operation depends on the
/// shapes, not the values, and the initialisation ([`RandomTensor`]) keeps
/// activations at about unit scale, so they stay finite in bf16/f16.
///
/// The tokenizer is the tiny BPE vocabulary ([`tiny_vocab`]) at either size:
/// its ids (< 130) index the first rows of the full model's 49408-row token
/// embedding, and the loader does not compare the text encoder's
/// `vocab_size` with the tokenizer's size (it must only not be smaller). Prompts encode to other ids than
/// with OpenCLIP's vocabulary (unknown words are spelled letter by letter),
/// but the text encoder always runs on the padded 77-token sequence.
///
/// Values are made one tensor at a time on all cores and streamed to the
/// files (memory peaks at the largest tensor, the full model's 49408 × 1024
/// token embedding), into a temporary sibling folder renamed to `dir` when
/// complete: an interrupted run leaves no half-written model. `dir` must not
/// exist or be empty.
pub fn make_random_mvdream(
    dir: &Path,
    cfg: &LdmConfig,
    opts: &TinyOptions,
) -> Result<RandomMvDream> {
    let (vocab, merges) = tiny_vocab();
    let params = write_folder_atomically(dir, |tmp| {
        let recipes = MvDreamRecipes::new(cfg, opts.seed)?;
        write_mvdream_diffusers(tmp, cfg, &recipes, &vocab, &merges, opts.dtype)?;
        Ok([&recipes.unet, &recipes.vae, &recipes.text_used].map(count_recipes))
    })?;
    let weight_bytes = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]
    .iter()
    .map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0))
    .sum();
    Ok(RandomMvDream {
        dir: dir.to_path_buf(),
        unet_params: params[0],
        vae_params: params[1],
        text_params: params[2],
        weight_bytes,
    })
}

/// Runs `write` on a temporary sibling folder of `dir` and renames it to
/// `dir` when `write` succeeds (removing it when it fails): an interrupted
/// run leaves no half-written model. `dir` must not exist or be empty.
fn write_folder_atomically<T>(dir: &Path, write: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let not_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(DiffusionError::io(dir, e)),
    };
    if not_empty {
        return Err(DiffusionError::InvalidArgument(format!(
            "{} already exists and is not empty: remove it or choose another folder",
            dir.display()
        )));
    }
    let name = dir.file_name().ok_or_else(|| {
        DiffusionError::InvalidArgument(format!("{}: not a folder name", dir.display()))
    })?;
    let parent = parent_or_dot(dir);
    mkdir(&parent)?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of an interrupted run that had the same process id.
    let _ = std::fs::remove_dir_all(&tmp);
    let out = match write(&tmp) {
        Ok(out) => out,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if dir.exists() {
        // Empty (checked above): rename cannot replace a folder.
        std::fs::remove_dir(dir).map_err(|e| DiffusionError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| DiffusionError::io(dir, e))?;
    Ok(out)
}

/// Writes the tiny models (see the module docs) under `dir`.
pub fn make_tiny(dir: &Path, opts: &TinyOptions) -> Result<TinyModels> {
    let (vocab, merges) = tiny_vocab();
    let cfg = ModelSize::Tiny.config();
    let recipes = MvDreamRecipes::new(&cfg, opts.seed)?;

    // ---- diffusers layout ----
    let ddir = dir.join(DIFFUSERS_DIR);
    let tok = write_mvdream_diffusers(&ddir, &cfg, &recipes, &vocab, &merges, opts.dtype)?;
    let unet_t = materialise(&recipes.unet)?;
    let vae_t = materialise(&recipes.vae)?;
    let text_all = materialise(&recipes.text_all)?;

    // ---- LDM checkpoint ----
    let ldir = dir.join(LDM_DIR);
    mkdir(&ldir)?;
    let mut ldm_t: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, t) in &unet_t {
        ldm_t.insert(ldm::unet_key(k), t.clone());
    }
    let levels = cfg.vae.block_out_channels.len();
    for (k, t) in &vae_t {
        let key = ldm::vae_key(k, levels)
            .ok_or_else(|| DiffusionError::Config(format!("no LDM name for VAE tensor {k}")))?;
        // LDM's VAE attention projections are 1×1 convolutions.
        let t = if key.contains(".mid.attn_1.")
            && key.ends_with(".weight")
            && !key.contains(".norm.")
        {
            let (o, i) = t.dims2()?;
            t.reshape((o, i, 1, 1))?
        } else {
            t.clone()
        };
        ldm_t.insert(key, t);
    }
    let mut fused: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
    for (k, t) in &text_all {
        match ldm::openclip_source(k)
            .ok_or_else(|| DiffusionError::Config(format!("no LDM name for text tensor {k}")))?
        {
            Source::Key(key) => {
                ldm_t.insert(key, t.clone());
            }
            Source::Chunk { key, index, .. } => {
                fused.entry(key).or_default()[index] = Some(t.clone());
            }
            other => {
                return Err(DiffusionError::Config(format!(
                    "unexpected text tensor source {other:?}"
                )))
            }
        }
    }
    for (key, parts) in fused {
        let parts: Vec<Tensor> = parts.into_iter().map(|p| p.expect("q, k and v")).collect();
        ldm_t.insert(key, Tensor::cat(&parts, 0)?);
    }
    // What else an MVDream checkpoint carries (unused by us).
    let d = cfg.text_encoder.hidden_size;
    ldm_t.insert(
        format!("{}text_projection", ldm::OPENCLIP_PREFIX),
        SeededInit::new(opts.seed)
            .var_builder()
            .get((d, d), "text_projection")?,
    );
    ldm_t.insert(
        format!("{}logit_scale", ldm::OPENCLIP_PREFIX),
        Tensor::new(&[4.6052f32], &candle_core::Device::Cpu)?.reshape(())?,
    );
    let ac: Vec<f32> = cfg
        .scheduler
        .alphas_cumprod()
        .iter()
        .map(|&a| a as f32)
        .collect();
    let n = ac.len();
    ldm_t.insert(
        "alphas_cumprod".into(),
        Tensor::from_vec(ac, n, &candle_core::Device::Cpu)?,
    );
    let ldm_path = ldir.join(LDM_FILE);
    save(&ldm_t, opts.dtype, &ldm_path)?;
    let ldm_config = ldm_path.with_extension("json");
    write_json(
        &ldm_config,
        &serde_json::to_value(&cfg).expect("serialisable"),
    )?;
    tok.save(ldir.join("tokenizer.json"), true)
        .map_err(|e| DiffusionError::bad_file(ldir.join("tokenizer.json"), e.to_string()))?;

    let sd_dir = make_tiny_sd(dir, opts)?;
    let (flux_dir, flux_bfl_checkpoint) = make_tiny_flux(dir, opts)?;

    Ok(TinyModels {
        diffusers_dir: ddir,
        ldm_checkpoint: ldm_path,
        ldm_config,
        unet_params: count_recipes(&recipes.unet),
        vae_params: count_recipes(&recipes.vae),
        text_params: count_recipes(&recipes.text_used),
        sd_dir,
        flux_dir,
        flux_bfl_checkpoint,
    })
}

/// Writes a CLIP tokenizer folder: `vocab.json`, `merges.txt`,
/// `tokenizer_config.json` (with `pad_token`) and, if `fast`, `tokenizer.json`.
fn write_clip_tokenizer(
    tdir: &Path,
    vocab: &[String],
    merges: &[(String, String)],
    pad_token: &str,
    fast: bool,
) -> Result<tokenizers::Tokenizer> {
    mkdir(tdir)?;
    let vocab_map: HashMap<String, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let tok =
        build_clip_tokenizer(vocab_map, merges.to_vec()).map_err(DiffusionError::Tokenizer)?;
    if fast {
        tok.save(tdir.join("tokenizer.json"), true)
            .map_err(|e| DiffusionError::bad_file(tdir.join("tokenizer.json"), e.to_string()))?;
    }
    let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
        .collect();
    write_json(
        &tdir.join("vocab.json"),
        &serde_json::Value::Object(vocab_json),
    )?;
    let merges_txt: String = std::iter::once("#version: 0.2".to_string())
        .chain(merges.iter().map(|(a, b)| format!("{a} {b}")))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(tdir.join("merges.txt"), merges_txt)
        .map_err(|e| DiffusionError::io(tdir.join("merges.txt"), e))?;
    write_json(
        &tdir.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token
        }),
    )?;
    Ok(tok)
}

/// Writes `tensors` as `n` safetensors shards `{stem}-0000i-of-0000n.safetensors`
/// plus `{stem}.safetensors.index.json`, as transformers/diffusers do for big models.
fn save_sharded(
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    dir: &Path,
    stem: &str,
    n: usize,
) -> Result<()> {
    let names: Vec<&String> = tensors.keys().collect();
    let per = names.len().div_ceil(n);
    let mut weight_map = BTreeMap::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1);
        let part: BTreeMap<String, Tensor> = chunk
            .iter()
            .map(|k| ((*k).clone(), tensors[*k].clone()))
            .collect();
        save(&part, dtype, &dir.join(&file))?;
        for k in chunk {
            weight_map.insert((*k).clone(), file.clone());
        }
    }
    let total_size = tensors
        .values()
        .map(|t| (t.elem_count() * dtype.size_in_bytes()) as u64)
        .sum();
    write_shard_index(dir, stem, &weight_map, total_size)?;
    Ok(())
}

fn tiny_clip_text(vocab: usize, act: &str) -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: vocab,
        hidden_act: act.into(),
        ..tiny_config().text_encoder
    }
}

fn write_clip_text_encoder(
    dir: &Path,
    cfg: &ClipTextConfig,
    seed: u64,
    dtype: DType,
) -> Result<()> {
    mkdir(dir)?;
    let init = SeededInit::new(seed);
    ClipTextModel::new(init.var_builder(), cfg)?;
    write_json(&dir.join("config.json"), &clip_text_json(cfg))?;
    save(&init.tensors(), dtype, &dir.join("model.safetensors"))
}

/// The transformers `text_encoder/config.json` of a `CLIPTextModel` of `cfg`.
fn clip_text_json(cfg: &ClipTextConfig) -> serde_json::Value {
    with_class(
        cfg,
        &[
            ("architectures", serde_json::json!(["CLIPTextModel"])),
            ("model_type", "clip_text_model".into()),
            ("projection_dim", cfg.hidden_size.into()),
            ("bos_token_id", 0.into()),
            ("eos_token_id", 2.into()),
        ],
    )
}

/// The diffusers `vae/config.json` of `cfg`.
fn vae_json(cfg: &VaeConfig) -> serde_json::Value {
    let n = cfg.block_out_channels.len();
    with_class(
        cfg,
        &[
            ("_class_name", "AutoencoderKL".into()),
            ("act_fn", "silu".into()),
            (
                "down_block_types",
                serde_json::json!(vec!["DownEncoderBlock2D"; n]),
            ),
            (
                "up_block_types",
                serde_json::json!(vec!["UpDecoderBlock2D"; n]),
            ),
            ("sample_size", 256.into()),
        ],
    )
}

fn write_vae(dir: &Path, cfg: &VaeConfig, seed: u64, dtype: DType) -> Result<()> {
    mkdir(dir)?;
    let init = SeededInit::new(seed);
    Vae::new(init.var_builder(), cfg)?;
    write_json(&dir.join("config.json"), &vae_json(cfg))?;
    save(
        &init.tensors(),
        dtype,
        &dir.join("diffusion_pytorch_model.safetensors"),
    )
}
