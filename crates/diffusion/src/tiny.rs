//! Tiny random-weight MVDream models with the real tensor names, for tests.
//!
//! [`make_tiny`] writes, under `dir`:
//! * `mvdream-diffusers/`: the diffusers layout of `ashawkey/mvdream-sd2.1-diffusers`
//!   (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`);
//! * `mvdream-ldm/sd-v2.1-base-4view-tiny.safetensors`: the same weights as
//!   one LDM-format checkpoint (`model.diffusion_model.*`, `first_stage_model.*`,
//!   `cond_stage_model.model.*` with OpenCLIP's fused `in_proj` and one more
//!   residual block than is used, like ViT-H's 24 of which MVDream uses 23;
//!   plus the schedule buffers an LDM checkpoint carries), its config
//!   `sd-v2.1-base-4view-tiny.json` and a `tokenizer.json`.
//!
//! Dimensions: UNet `model_channels 32, channel_mult [1, 2], 1 res block per
//! level, head dim 8, context 32, camera_dim 16`; VAE 4 levels of 32 channels
//! (×8 like SD, so 256² images ↔ 32² latents), 1 layer per block; text encoder
//! width 32, 4 heads, 2 layers used (3 stored in the LDM file), vocabulary of
//! about 100 BPE tokens. Weights are seeded random (see [`SeededInit`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::clip_text::{ClipTextConfig, ClipTextModel};
use crate::ddim::DdimConfig;
use crate::error::{DiffusionError, Result};
use crate::ldm;
use crate::loading::LdmConfig;
use crate::mvdream::{MultiViewUNet, MultiViewUNetConfig, PerLevel};
use crate::rng::hash_name;
use crate::tokenizer::{build_clip_tokenizer, BOS, EOS};
use crate::vae::{Vae, VaeConfig};
use crate::weights::{SeededInit, Source};

/// Folder of the diffusers layout inside the output folder.
pub const DIFFUSERS_DIR: &str = "mvdream-diffusers";
/// Folder of the LDM checkpoint inside the output folder.
pub const LDM_DIR: &str = "mvdream-ldm";
/// File name of the LDM checkpoint.
pub const LDM_FILE: &str = "sd-v2.1-base-4view-tiny.safetensors";

/// Options of [`make_tiny`].
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
}

/// The tiny configuration.
pub fn tiny_config() -> LdmConfig {
    LdmConfig {
        unet: MultiViewUNetConfig {
            image_size: 32,
            in_channels: 4,
            out_channels: 4,
            model_channels: 32,
            num_res_blocks: PerLevel::All(1),
            attention_resolutions: vec![4, 2, 1],
            channel_mult: vec![1, 2],
            num_heads: -1,
            num_head_channels: 8,
            transformer_depth: 1,
            context_dim: 32,
            camera_dim: Some(16),
            use_linear_in_transformer: true,
            legacy: false,
            use_scale_shift_norm: false,
            resblock_updown: false,
            conv_resample: true,
            num_classes: None,
            ip_dim: 0,
        },
        vae: VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![32, 32, 32, 32],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
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

fn count(ts: &BTreeMap<String, Tensor>) -> usize {
    ts.values().map(|t| t.elem_count()).sum()
}

/// Writes the tiny models (see the module docs) under `dir`.
pub fn make_tiny(dir: &Path, opts: &TinyOptions) -> Result<TinyModels> {
    let (vocab, merges) = tiny_vocab();
    let mut cfg = tiny_config();
    cfg.text_encoder.vocab_size = vocab.len();

    // Random weights, each component from its own seed.
    let init = |what: &str| SeededInit::new(opts.seed ^ hash_name(what));
    let unet_init = init("unet");
    MultiViewUNet::new(unet_init.var_builder(), &cfg.unet)?;
    let unet_t = unet_init.tensors();

    let vae_init = init("vae");
    Vae::new(vae_init.var_builder(), &cfg.vae)?;
    // Modern diffusers names for the VAE attention (candle asks for the old ones
    // when nothing exists yet).
    let vae_t: BTreeMap<String, Tensor> = vae_init
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let k = k
                .replace(".attentions.0.query.", ".attentions.0.to_q.")
                .replace(".attentions.0.key.", ".attentions.0.to_k.")
                .replace(".attentions.0.value.", ".attentions.0.to_v.")
                .replace(".attentions.0.proj_attn.", ".attentions.0.to_out.0.");
            (k, t)
        })
        .collect();

    // The text tower with one more layer than used, like OpenCLIP ViT-H.
    let text_init = init("text_encoder");
    let mut full_text = cfg.text_encoder.clone();
    full_text.num_hidden_layers += 1;
    ClipTextModel::new(text_init.var_builder(), &full_text)?;
    let text_all = text_init.tensors();
    let unused = format!(
        "text_model.encoder.layers.{}.",
        cfg.text_encoder.num_hidden_layers
    );
    let text_used: BTreeMap<String, Tensor> = text_all
        .iter()
        .filter(|(k, _)| !k.starts_with(&unused))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();

    // ---- diffusers layout ----
    let ddir = dir.join(DIFFUSERS_DIR);
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
    write_json(
        &ddir.join("vae/config.json"),
        &with_class(
            &cfg.vae,
            &[
                ("_class_name", "AutoencoderKL".into()),
                ("act_fn", "silu".into()),
                (
                    "down_block_types",
                    serde_json::json!(vec!["DownEncoderBlock2D"; 4]),
                ),
                (
                    "up_block_types",
                    serde_json::json!(vec!["UpDecoderBlock2D"; 4]),
                ),
                ("sample_size", 256.into()),
            ],
        ),
    )?;
    write_json(
        &ddir.join("text_encoder/config.json"),
        &with_class(
            &cfg.text_encoder,
            &[
                ("architectures", serde_json::json!(["CLIPTextModel"])),
                ("model_type", "clip_text_model".into()),
                ("projection_dim", 32.into()),
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
    save(
        &unet_t,
        opts.dtype,
        &ddir.join("unet/diffusion_pytorch_model.safetensors"),
    )?;
    save(
        &vae_t,
        opts.dtype,
        &ddir.join("vae/diffusion_pytorch_model.safetensors"),
    )?;
    save(
        &text_used,
        opts.dtype,
        &ddir.join("text_encoder/model.safetensors"),
    )?;

    // Tokenizer: tokenizer.json plus the slow tokenizer's files.
    let vocab_map: HashMap<String, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let tok = build_clip_tokenizer(vocab_map.clone(), merges.clone())
        .map_err(DiffusionError::Tokenizer)?;
    let tdir = ddir.join("tokenizer");
    tok.save(tdir.join("tokenizer.json"), true)
        .map_err(|e| DiffusionError::bad_file(tdir.join("tokenizer.json"), e.to_string()))?;
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
            "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!"
        }),
    )?;

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

    Ok(TinyModels {
        diffusers_dir: ddir,
        ldm_checkpoint: ldm_path,
        ldm_config,
        unet_params: count(&unet_t),
        vae_params: count(&vae_t),
        text_params: count(&text_used),
    })
}
