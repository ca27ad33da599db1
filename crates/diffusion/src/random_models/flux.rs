//! Random FLUX.1-schnell in `black-forest-labs/FLUX.1-schnell`'s diffusers
//! layout: the tiny test model ([`make_tiny_flux`], values in memory, with
//! its transformer also in original BFL names) and, streamed to disk at the
//! tiny or the real size, [`make_random_flux`].

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

/// A FLUX weight as [`flux_bfl_to_diffusers`] rearranges it: its values
/// ([`Tensor`]) or only its recipe ([`RandomTensor`], for a model that is
/// streamed to disk and never held in memory).
pub trait FluxWeight: Sized + Clone {
    /// Size of dim 0.
    fn rows(&self) -> Result<usize>;
    /// Rows `start..start + len` as the tensor `name`.
    fn narrow_rows(&self, name: &str, start: usize, len: usize) -> Result<Self>;
    /// The two halves of dim 0 swapped.
    fn swap_halves(&self) -> Result<Self>;
}

impl FluxWeight for Tensor {
    fn rows(&self) -> Result<usize> {
        Ok(self.dim(0)?)
    }

    fn narrow_rows(&self, _name: &str, start: usize, len: usize) -> Result<Self> {
        Ok(self.narrow(0, start, len)?.contiguous()?)
    }

    fn swap_halves(&self) -> Result<Self> {
        let n = self.dim(0)? / 2;
        Ok(Tensor::cat(
            &[self.narrow(0, n, n)?, self.narrow(0, 0, n)?],
            0,
        )?)
    }
}

impl FluxWeight for RandomTensor {
    fn rows(&self) -> Result<usize> {
        Ok(self.dims().first().copied().unwrap_or(0))
    }

    fn narrow_rows(&self, name: &str, start: usize, len: usize) -> Result<Self> {
        Ok(RandomTensor::narrow_rows(self, name, start, len)?)
    }

    fn swap_halves(&self) -> Result<Self> {
        Ok(RandomTensor::swap_halves(self)?)
    }
}

/// Converts FLUX tensors (or their recipes) from original (BFL) names to
/// diffusers names: fused `qkv` / `linear1` split into `to_q`, `to_k`,
/// `to_v` [, `proj_mlp`], the final modulation's halves swapped.
pub fn flux_bfl_to_diffusers<W: FluxWeight>(
    bfl: &BTreeMap<String, W>,
    cfg: &FluxTransformerConfig,
) -> Result<BTreeMap<String, W>> {
    let h = cfg.hidden_size();
    let mut out = BTreeMap::new();
    for (name, t) in bfl {
        match flux_diffusers_source(name) {
            Some(Source::Key(k)) => {
                out.insert(k, t.clone());
            }
            Some(Source::SwapHalves(k)) => {
                out.insert(k, t.swap_halves()?);
            }
            Some(Source::Concat(keys)) => {
                let sizes: Vec<usize> = if keys.len() == 3 {
                    vec![h; 3]
                } else {
                    vec![h, h, h, t.rows()? - 3 * h]
                };
                let mut off = 0;
                for (k, n) in keys.into_iter().zip(sizes) {
                    let part = t.narrow_rows(&k, off, n)?;
                    out.insert(k, part);
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

/// The configurations of a random FLUX.1-schnell.
struct FluxSpec {
    transformer: FluxTransformerConfig,
    /// `text_encoder_2/config.json` (transformers' `T5Config`).
    t5: serde_json::Value,
    clip: ClipTextConfig,
    vae: VaeConfig,
    /// Largest shard of `transformer/` and of `text_encoder_2/` (bytes).
    transformer_shard_bytes: u64,
    t5_shard_bytes: u64,
}

impl FluxSpec {
    fn new(size: ModelSize) -> Self {
        match size {
            ModelSize::Tiny => Self {
                transformer: tiny_flux_config(),
                t5: tiny_t5_config(tiny_t5_pieces().len()),
                clip: tiny_clip_text(tiny_vocab().0.len(), "quick_gelu"),
                vae: VaeConfig {
                    block_out_channels: vec![32; 4],
                    layers_per_block: 1,
                    ..VaeConfig::flux()
                },
                // Small enough that the tiny model's transformer and T5 take
                // several shards, as the real ones do.
                transformer_shard_bytes: 32 << 10,
                t5_shard_bytes: 32 << 10,
            },
            ModelSize::Full => Self {
                transformer: FluxTransformerConfig::schnell(),
                t5: t5_v1_1_xxl_config(),
                // openai/clip-vit-large-patch14's text tower.
                clip: ClipTextConfig {
                    vocab_size: 49408,
                    hidden_size: 768,
                    intermediate_size: 3072,
                    num_hidden_layers: 12,
                    num_attention_heads: 12,
                    max_position_embeddings: 77,
                    hidden_act: "quick_gelu".into(),
                    layer_norm_eps: 1e-5,
                },
                vae: VaeConfig::flux(),
                // diffusers' and transformers' default `max_shard_size`s
                // (10 GB, 5 GB): 3 transformer shards and 2 T5 shards, as published.
                transformer_shard_bytes: 10_000_000_000,
                t5_shard_bytes: 5_000_000_000,
            },
        }
    }
}

/// `google/t5-v1_1-xxl`'s configuration, as FLUX.1-schnell's `text_encoder_2/config.json`.
fn t5_v1_1_xxl_config() -> serde_json::Value {
    serde_json::json!({
        "_name_or_path": "google/t5-v1_1-xxl",
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": 10240, "d_kv": 64, "d_model": 4096,
        "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": true, "is_gated_act": true,
        "layer_norm_epsilon": 1e-6, "model_type": "t5",
        "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
        "output_past": true, "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
        "vocab_size": 32128
    })
}

fn t5_candle_config(json: &serde_json::Value) -> Result<candle_transformers::models::t5::Config> {
    serde_json::from_value(json.clone()).map_err(|e| DiffusionError::Config(e.to_string()))
}

/// Writes what FLUX's diffusers layout holds besides the weights and the
/// CLIP and VAE configurations (written with their weights) into `root`:
/// `model_index.json`, the transformer's and T5's configurations, the CLIP
/// tokenizer (the tiny BPE vocabulary, padding with EOS), the T5 unigram
/// tokenizer ([`tiny_t5_pieces`]) and the flow-matching scheduler.
///
/// The tokenizers are the tiny ones at every size: their ids index the
/// first rows of the real models' token embeddings (49408 and 32128 rows),
/// and the text encoders always run on the padded 77 and
/// `max_sequence_length` tokens, so the cost is the real one.
fn write_flux_layout(root: &Path, spec: &FluxSpec) -> Result<()> {
    let (vocab, merges) = tiny_vocab();
    for sub in ["transformer", "text_encoder_2", "tokenizer_2", "scheduler"] {
        mkdir(&root.join(sub))?;
    }
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
    write_json(
        &root.join("transformer/config.json"),
        &with_class(
            &spec.transformer,
            &[("_class_name", "FluxTransformer2DModel".into())],
        ),
    )?;
    write_json(&root.join("text_encoder_2/config.json"), &spec.t5)?;
    write_clip_tokenizer(&root.join("tokenizer"), &vocab, &merges, EOS, false)?;
    let t5_tok = build_t5_tokenizer(tiny_t5_pieces()).map_err(DiffusionError::Tokenizer)?;
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
    write_json(
        &root.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096,
            "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 1.0,
            "use_dynamic_shifting": false
        }),
    )
}

/// The seed of FLUX component `what` in a model seeded with `seed`.
fn component_seed(seed: u64, what: &str) -> u64 {
    seed ^ hash_name(what)
}

/// Writes the tiny FLUX.1-schnell in diffusers layout under `dir/`[`FLUX_DIR`]
/// (transformer and T5 sharded in two files) and the same transformer in
/// original names at `dir/`[`FLUX_BFL_FILE`].
pub fn make_tiny_flux(dir: &Path, opts: &TinyOptions) -> Result<(PathBuf, PathBuf)> {
    let spec = FluxSpec::new(ModelSize::Tiny);
    let root = dir.join(FLUX_DIR);
    write_flux_layout(&root, &spec)?;
    let seed = |what: &str| component_seed(opts.seed, what);
    // Transformer.
    let tcfg = &spec.transformer;
    let init = SeededInit::new(seed("flux_transformer"));
    FluxTransformer::new(
        &tcfg.to_candle().map_err(DiffusionError::Config)?,
        init.var_builder(),
    )?;
    let bfl = init.tensors();
    save_sharded(
        &flux_bfl_to_diffusers(&bfl, tcfg)?,
        opts.dtype,
        &root.join("transformer"),
        "diffusion_pytorch_model",
        2,
    )?;
    let bfl_path = dir.join(FLUX_BFL_FILE);
    mkdir(&parent_or_dot(&bfl_path))?;
    save(&bfl, opts.dtype, &bfl_path)?;
    // CLIP-L (quick GELU, pooled output).
    write_clip_text_encoder(
        &root.join("text_encoder"),
        &spec.clip,
        seed("flux_clip"),
        opts.dtype,
    )?;
    // T5 encoder (sharded).
    let init = SeededInit::new(seed("flux_t5"));
    candle_transformers::models::t5::T5EncoderModel::load(
        init.var_builder(),
        &t5_candle_config(&spec.t5)?,
    )?;
    let mut t5_t = init.tensors();
    if let Some(e) = t5_t.get("encoder.embed_tokens.weight").cloned() {
        t5_t.insert("shared.weight".into(), e);
    }
    save_sharded(&t5_t, opts.dtype, &root.join("text_encoder_2"), "model", 2)?;
    // VAE: FLUX's 16-channel layout at tiny width.
    write_vae(&root.join("vae"), &spec.vae, seed("flux_vae"), opts.dtype)?;
    Ok((root, bfl_path))
}

/// What [`make_random_flux`] wrote.
#[derive(Debug, Clone)]
pub struct RandomFlux {
    /// The diffusers-layout folder (holds `model_index.json`).
    pub dir: PathBuf,
    /// Parameter counts as stored.
    pub transformer_params: usize,
    pub t5_params: usize,
    pub clip_params: usize,
    pub vae_params: usize,
    /// Bytes of all weights.
    pub weight_bytes: u64,
}

/// Random FLUX weights as recipes, in the names of the published files.
struct FluxRecipes {
    /// diffusers `FluxTransformer2DModel` names.
    transformer: BTreeMap<String, RandomTensor>,
    /// transformers `T5EncoderModel` names; the token embedding as
    /// `shared.weight` only, as the published shards store it.
    t5: BTreeMap<String, RandomTensor>,
    clip: BTreeMap<String, RandomTensor>,
    /// Modern diffusers names.
    vae: BTreeMap<String, RandomTensor>,
}

impl FluxRecipes {
    /// Builds each model through a [`RandomRecorder`]: nothing is allocated,
    /// whatever the size. The transformer is recorded through candle's
    /// `flux::model::Flux`, which asks for the same tensors in the same
    /// (original) names as ours: ours splits the fused `qkv` and `linear1`
    /// and `linear2`'s columns into contiguous copies as it is built, and a
    /// copy of a recorder's zero-stride view is a full allocation (48 GB of
    /// f32 for the real size). The tiny model's load through our loader
    /// checks that the names agree.
    fn new(spec: &FluxSpec, seed: u64) -> Result<Self> {
        let seed = |what: &str| component_seed(seed, what);
        let tr = RandomRecorder::new(seed("flux_transformer"));
        candle_transformers::models::flux::model::Flux::new(
            &spec
                .transformer
                .to_candle()
                .map_err(DiffusionError::Config)?,
            tr.var_builder(),
        )?;
        let transformer = flux_bfl_to_diffusers(&tr.recipes(), &spec.transformer)?;
        let t5 = RandomRecorder::new(seed("flux_t5"));
        candle_transformers::models::t5::T5EncoderModel::load(
            t5.var_builder(),
            &t5_candle_config(&spec.t5)?,
        )?;
        let t5 = t5
            .recipes()
            .into_iter()
            .map(|(k, t)| match k.as_str() {
                "encoder.embed_tokens.weight" => ("shared.weight".to_string(), t),
                _ => (k, t),
            })
            .collect();
        let clip = RandomRecorder::new(seed("flux_clip"));
        ClipTextModel::new(clip.var_builder(), &spec.clip)?;
        Ok(Self {
            transformer,
            t5,
            clip: clip.recipes(),
            vae: vae_recipes(&spec.vae, seed("flux_vae"))?,
        })
    }
}

/// Writes FLUX.1-schnell in the diffusers layout of
/// `black-forest-labs/FLUX.1-schnell` with seeded random weights stored as
/// `opts.dtype` (f32, f16 or bf16) into the folder `dir` itself (`--flux dir`
/// loads it), at the tiny size or the real one ([`ModelSize::Full`]: the
/// transformer's 19 double and 38 single blocks 3072 wide, 11.9 B parameters;
/// the T5 v1.1 XXL encoder, 4.76 B; CLIP-L's text tower, 123 M; the 16-channel
/// VAE, 84 M; 33.7 GB in bf16): `model_index.json`; `transformer/` (config,
/// `diffusion_pytorch_model-0000i-of-0000n.safetensors` shards of at most
/// 10 GB and their `.index.json`); `text_encoder/` (CLIP-L, one file);
/// `text_encoder_2/` (T5, `model-…` shards of at most 5 GB and an index);
/// `tokenizer/`, `tokenizer_2/` (see [`write_flux_layout`]); `vae/`; `scheduler/`.
/// For timing runs where the real weights cannot be had: an operation's time
/// depends on the shapes, not the values, and the initialisation
/// ([`RandomTensor`]) keeps activations at about unit scale, so they stay
/// finite in bf16.
///
/// Memory stays bounded whatever the size: the models are built through a
/// [`RandomRecorder`] (recipes, no values), each file's header is computed
/// from the shapes alone, and values are made one tensor at a time and
/// streamed to their file ([`save_random_sharded`], [`save_random`]), so
/// memory peaks at the largest tensor (the real T5's 32128 × 4096 token
/// embedding: 0.5 GB in f32 plus 0.26 GB in bf16), not at the model's size.
/// The folder is written as a temporary sibling renamed to `dir` when
/// complete: an interrupted run leaves no half-written model. `dir` must not
/// exist or be empty.
pub fn make_random_flux(dir: &Path, size: ModelSize, opts: &TinyOptions) -> Result<RandomFlux> {
    let spec = FluxSpec::new(size);
    let dtype = opts.dtype;
    let bytes =
        |r: &BTreeMap<String, RandomTensor>| count_recipes(r) as u64 * dtype.size_in_bytes() as u64;
    write_folder_atomically(dir, |root| {
        let recipes = FluxRecipes::new(&spec, opts.seed)?;
        write_flux_layout(root, &spec)?;
        let transformer = save_random_sharded(
            &recipes.transformer,
            dtype,
            &root.join("transformer"),
            "diffusion_pytorch_model",
            spec.transformer_shard_bytes,
        )?;
        let t5 = save_random_sharded(
            &recipes.t5,
            dtype,
            &root.join("text_encoder_2"),
            "model",
            spec.t5_shard_bytes,
        )?;
        let clip_dir = root.join("text_encoder");
        mkdir(&clip_dir)?;
        write_json(&clip_dir.join("config.json"), &clip_text_json(&spec.clip))?;
        save_random(&recipes.clip, dtype, &clip_dir.join("model.safetensors"))?;
        let vae_dir = root.join("vae");
        mkdir(&vae_dir)?;
        write_json(&vae_dir.join("config.json"), &vae_json(&spec.vae))?;
        save_random(
            &recipes.vae,
            dtype,
            &vae_dir.join("diffusion_pytorch_model.safetensors"),
        )?;
        Ok(RandomFlux {
            dir: dir.to_path_buf(),
            transformer_params: count_recipes(&recipes.transformer),
            t5_params: count_recipes(&recipes.t5),
            clip_params: count_recipes(&recipes.clip),
            vae_params: count_recipes(&recipes.vae),
            weight_bytes: transformer.total_size
                + t5.total_size
                + bytes(&recipes.clip)
                + bytes(&recipes.vae),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use splatforge_nn::weights::plan_shards;

    /// The full-size model as recipes (nothing allocated): the published
    /// parameter counts, shapes and shard layout, without writing 34 GB.
    #[test]
    fn full_size_recipes_have_the_published_shapes_and_shards() {
        let spec = FluxSpec::new(ModelSize::Full);
        let t0 = std::time::Instant::now();
        let r = FluxRecipes::new(&spec, 0).unwrap();
        // Recording makes no values (nor copies): well under a second even in a
        // debug build, where a copy of the 16.9 B parameters takes minutes.
        assert!(t0.elapsed().as_secs_f64() < 10.0, "{:?}", t0.elapsed());
        let dims = |m: &BTreeMap<String, RandomTensor>, k: &str| m[k].dims().to_vec();
        let t = &r.transformer;
        assert_eq!(dims(t, "x_embedder.weight"), [3072, 64]);
        assert_eq!(dims(t, "context_embedder.weight"), [3072, 4096]);
        assert_eq!(
            dims(t, "time_text_embed.text_embedder.linear_1.weight"),
            [3072, 768]
        );
        assert_eq!(
            dims(t, "transformer_blocks.18.attn.to_q.weight"),
            [3072, 3072]
        );
        assert_eq!(
            dims(t, "transformer_blocks.18.norm1.linear.weight"),
            [18432, 3072]
        );
        assert_eq!(
            dims(t, "single_transformer_blocks.37.proj_mlp.weight"),
            [12288, 3072]
        );
        assert_eq!(
            dims(t, "single_transformer_blocks.37.proj_out.weight"),
            [3072, 15360]
        );
        assert_eq!(dims(t, "norm_out.linear.weight"), [6144, 3072]);
        assert!(!t.contains_key("transformer_blocks.19.attn.to_q.weight"));
        assert!(!t.keys().any(|k| k.contains("guidance")));
        assert_eq!(dims(&r.t5, "shared.weight"), [32128, 4096]);
        assert!(!r.t5.contains_key("encoder.embed_tokens.weight"));
        assert_eq!(
            dims(&r.t5, "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"),
            [10240, 4096]
        );
        assert_eq!(
            dims(&r.clip, "text_model.embeddings.token_embedding.weight"),
            [49408, 768]
        );
        assert_eq!(dims(&r.vae, "decoder.conv_in.weight"), [512, 16, 3, 3]);
        assert!(r
            .vae
            .contains_key("encoder.mid_block.attentions.0.to_q.weight"));

        let params = [&r.transformer, &r.t5, &r.clip, &r.vae].map(count_recipes);
        // FLUX.1-schnell 11.90 B, T5 v1.1 XXL encoder 4.76 B, CLIP-L text 123 M, VAE 84 M.
        assert!(
            (11_850_000_000..11_950_000_000).contains(&params[0]),
            "{params:?}"
        );
        assert_eq!(params[1], 4_762_310_656, "{params:?}");
        assert!(
            (122_000_000..124_000_000).contains(&params[2]),
            "{params:?}"
        );
        assert!((83_000_000..85_000_000).contains(&params[3]), "{params:?}");

        // As published in bf16: 3 transformer shards, 2 T5 shards.
        let t_plan = plan_shards(&r.transformer, DType::BF16, spec.transformer_shard_bytes);
        let t5_plan = plan_shards(&r.t5, DType::BF16, spec.t5_shard_bytes);
        assert_eq!((t_plan.len(), t5_plan.len()), (3, 2));
    }
}
