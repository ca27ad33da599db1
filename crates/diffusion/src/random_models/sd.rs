//! The tiny SD-Turbo (SD 2.1 architecture) in `stabilityai/sd-turbo`'s
//! diffusers layout.

use super::*;

/// Folder of the tiny SD-Turbo (SD 2.1 architecture) in the output folder.
pub const SD_DIR: &str = "sd-turbo-diffusers";

/// The tiny SD UNet: 2 levels (32, 64 channels; cross-attention on the
/// first), 1 layer per block, 2 and 4 heads, context 32.
pub fn tiny_sd_unet_config() -> SdUNetConfig {
    SdUNetConfig {
        block_out_channels: vec![32, 64],
        down_block_types: vec!["CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
        up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into()],
        layers_per_block: 1,
        attention_head_dim: PerBlock::Each(vec![2, 4]),
        cross_attention_dim: 32,
        sample_size: Some(4),
        ..SdUNetConfig::sd21()
    }
}

/// Writes the tiny SD-Turbo in diffusers layout under `dir/`[`SD_DIR`].
pub fn make_tiny_sd(dir: &Path, opts: &TinyOptions) -> Result<PathBuf> {
    let (vocab, merges) = tiny_vocab();
    let root = dir.join(SD_DIR);
    mkdir(&root.join("unet"))?;
    mkdir(&root.join("scheduler"))?;
    let seed = |what: &str| opts.seed ^ hash_name(what);
    write_json(
        &root.join("model_index.json"),
        &serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.42.1",
            "feature_extractor": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]
        }),
    )?;
    let ucfg = tiny_sd_unet_config();
    let init = SeededInit::new(seed("sd_unet"));
    UNet2DConditionModel::new(
        init.var_builder(),
        ucfg.in_channels,
        ucfg.out_channels,
        false,
        ucfg.to_candle().map_err(DiffusionError::Config)?,
    )?;
    write_json(
        &root.join("unet/config.json"),
        &with_class(
            &ucfg,
            &[
                ("_class_name", "UNet2DConditionModel".into()),
                ("act_fn", "silu".into()),
                ("upcast_attention", false.into()),
            ],
        ),
    )?;
    save(
        &init.tensors(),
        opts.dtype,
        &root.join("unet/diffusion_pytorch_model.safetensors"),
    )?;
    write_vae(
        &root.join("vae"),
        &tiny_config().vae,
        seed("sd_vae"),
        opts.dtype,
    )?;
    write_clip_text_encoder(
        &root.join("text_encoder"),
        &tiny_clip_text(vocab.len(), "gelu"),
        seed("sd_text_encoder"),
        opts.dtype,
    )?;
    write_clip_tokenizer(&root.join("tokenizer"), &vocab, &merges, "!", false)?;
    write_json(
        &root.join("scheduler/scheduler_config.json"),
        &serde_json::json!({
            "_class_name": "EulerDiscreteScheduler",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "interpolation_type": "linear", "num_train_timesteps": 1000,
            "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "trailing",
            "timestep_type": "discrete", "use_karras_sigmas": false
        }),
    )?;
    Ok(root)
}
