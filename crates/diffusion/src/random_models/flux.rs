//! The tiny FLUX.1-schnell in `black-forest-labs/FLUX.1-schnell`'s
//! diffusers layout, and its transformer in original (BFL) names.

use super::*;

/// Folder of the tiny FLUX.1-schnell in the output folder.
pub const FLUX_DIR: &str = "flux-schnell-diffusers";
/// The tiny FLUX transformer in original (BFL) names.
pub const FLUX_BFL_FILE: &str = "flux-bfl/flux1-schnell-tiny.safetensors";

/// The tiny FLUX transformer: 1 double and 1 single block, 2 heads of 16
/// (RoPE axes 4 + 6 + 6), T5 and CLIP widths 32, 16 latent channels.
pub fn tiny_flux_config() -> FluxTransformerConfig {
    FluxTransformerConfig {
        num_layers: 1,
        num_single_layers: 1,
        attention_head_dim: 16,
        num_attention_heads: 2,
        joint_attention_dim: 32,
        pooled_projection_dim: 32,
        axes_dims_rope: vec![4, 6, 6],
        ..FluxTransformerConfig::schnell()
    }
}

/// The tiny T5 pieces: `<pad>`, `</s>`, `<unk>`, `▁word` for [`TINY_WORDS`],
/// `▁`, and single characters.
pub fn tiny_t5_pieces() -> Vec<(String, f64)> {
    let mut p: Vec<(String, f64)> = vec![
        (T5_PAD.into(), 0.0),
        (T5_EOS.into(), 0.0),
        (T5_UNK.into(), 0.0),
    ];
    for w in TINY_WORDS {
        p.push((format!("\u{2581}{w}"), -(w.len() as f64)));
    }
    p.push(("\u{2581}".into(), -5.0));
    for c in ('a'..='z').chain('0'..='9').chain(",.-'".chars()) {
        p.push((c.to_string(), -10.0));
    }
    p
}

/// The tiny T5 encoder configuration (T5 v1.1: gated GELU, no biases).
pub fn tiny_t5_config(vocab: usize) -> serde_json::Value {
    serde_json::json!({
        "_name_or_path": "google/t5-v1_1-xxl",
        "architectures": ["T5EncoderModel"],
        "d_ff": 64, "d_kv": 8, "d_model": 32,
        "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": true, "is_gated_act": true,
        "layer_norm_epsilon": 1e-6, "model_type": "t5",
        "num_decoder_layers": 2, "num_heads": 4, "num_layers": 2,
        "output_past": true, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": false, "use_cache": true, "vocab_size": vocab
    })
}

/// Converts FLUX tensors from original (BFL) names to diffusers names.
pub fn flux_bfl_to_diffusers(
    bfl: &BTreeMap<String, Tensor>,
    cfg: &FluxTransformerConfig,
) -> Result<BTreeMap<String, Tensor>> {
    let h = cfg.hidden_size();
    let mut out = BTreeMap::new();
    for (name, t) in bfl {
        match flux_diffusers_source(name) {
            Some(Source::Key(k)) => {
                out.insert(k, t.clone());
            }
            Some(Source::SwapHalves(k)) => {
                let n = t.dim(0)? / 2;
                out.insert(
                    k,
                    Tensor::cat(&[t.narrow(0, n, n)?, t.narrow(0, 0, n)?], 0)?,
                );
            }
            Some(Source::Concat(keys)) => {
                let sizes: Vec<usize> = if keys.len() == 3 {
                    vec![h; 3]
                } else {
                    vec![h, h, h, t.dim(0)? - 3 * h]
                };
                let mut off = 0;
                for (k, n) in keys.into_iter().zip(sizes) {
                    out.insert(k, t.narrow(0, off, n)?.contiguous()?);
                    off += n;
                }
            }
            other => {
                return Err(DiffusionError::Config(format!(
                    "no diffusers name for FLUX tensor {name} ({other:?})"
                )))
            }
        }
    }
    Ok(out)
}

/// Writes the tiny FLUX.1-schnell in diffusers layout under `dir/`[`FLUX_DIR`]
/// (transformer and T5 sharded in two files) and the same transformer in
/// original names at `dir/`[`FLUX_BFL_FILE`].
pub fn make_tiny_flux(dir: &Path, opts: &TinyOptions) -> Result<(PathBuf, PathBuf)> {
    let (vocab, merges) = tiny_vocab();
    let root = dir.join(FLUX_DIR);
    for sub in ["transformer", "text_encoder_2", "tokenizer_2", "scheduler"] {
        mkdir(&root.join(sub))?;
    }
    let seed = |what: &str| opts.seed ^ hash_name(what);
    write_json(
        &root.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "FluxPipeline",
            "_diffusers_version": "0.42.1",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;
    // Transformer.
    let tcfg = tiny_flux_config();
    let init = SeededInit::new(seed("flux_transformer"));
    FluxTransformer::new(
        &tcfg.to_candle().map_err(DiffusionError::Config)?,
        init.var_builder(),
    )?;
    let bfl = init.tensors();
    write_json(
        &root.join("transformer/config.json"),
        &with_class(&tcfg, &[("_class_name", "FluxTransformer2DModel".into())]),
    )?;
    save_sharded(
        &flux_bfl_to_diffusers(&bfl, &tcfg)?,
        opts.dtype,
        &root.join("transformer"),
        "diffusion_pytorch_model",
        2,
    )?;
    let bfl_path = dir.join(FLUX_BFL_FILE);
    mkdir(&parent_or_dot(&bfl_path))?;
    save(&bfl, opts.dtype, &bfl_path)?;
    // CLIP-L (quick GELU, pooled output) and its tokenizer (padding with EOS).
    write_clip_text_encoder(
        &root.join("text_encoder"),
        &tiny_clip_text(vocab.len(), "quick_gelu"),
        seed("flux_clip"),
        opts.dtype,
    )?;
    write_clip_tokenizer(&root.join("tokenizer"), &vocab, &merges, EOS, false)?;
    // T5 encoder (sharded) and its unigram tokenizer.
    let pieces = tiny_t5_pieces();
    let t5_json = tiny_t5_config(pieces.len());
    let t5_cfg: candle_transformers::models::t5::Config =
        serde_json::from_value(t5_json.clone())
            .map_err(|e| DiffusionError::Config(e.to_string()))?;
    let init = SeededInit::new(seed("flux_t5"));
    candle_transformers::models::t5::T5EncoderModel::load(init.var_builder(), &t5_cfg)?;
    let mut t5_t = init.tensors();
    if let Some(e) = t5_t.get("encoder.embed_tokens.weight").cloned() {
        t5_t.insert("shared.weight".into(), e);
    }
    write_json(&root.join("text_encoder_2/config.json"), &t5_json)?;
    save_sharded(&t5_t, opts.dtype, &root.join("text_encoder_2"), "model", 2)?;
    let t5_tok = build_t5_tokenizer(pieces).map_err(DiffusionError::Tokenizer)?;
    let tj = root.join("tokenizer_2/tokenizer.json");
    t5_tok
        .save(&tj, true)
        .map_err(|e| DiffusionError::bad_file(&tj, e.to_string()))?;
    write_json(
        &root.join("tokenizer_2/tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "T5Tokenizer", "model_max_length": 512,
            "eos_token": T5_EOS, "pad_token": T5_PAD, "unk_token": T5_UNK
        }),
    )?;
    // VAE: FLUX's 16-channel layout at tiny width.
    let vcfg = VaeConfig {
        block_out_channels: vec![32; 4],
        layers_per_block: 1,
        ..VaeConfig::flux()
    };
    write_vae(&root.join("vae"), &vcfg, seed("flux_vae"), opts.dtype)?;
    write_json(
        &root.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
            "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
            "use_dynamic_shifting": false
        }),
    )?;
    Ok((root, bfl_path))
}
