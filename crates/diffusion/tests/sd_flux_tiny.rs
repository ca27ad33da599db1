//! SD-Turbo / SD 2.1 and FLUX.1-schnell text → image on the tiny
//! random-weight models, through the real loading code (diffusers layout,
//! sharded safetensors, the Hugging Face cache layout).

use std::ops::ControlFlow;
use std::path::Path;

use splatforge_diffusion::flux::{flux_transformer_from_file, FLUX_SCHNELL_REPO};
use splatforge_diffusion::schedulers::ddim::{PredictionType, TimestepSpacing};
use splatforge_diffusion::sd::{SdSamplerKind, SD_TURBO_REPO};
use splatforge_diffusion::*;
use splatforge_nn::rng::randn;
use splatforge_nn::weights::TensorFile;

mod common;
use common::{check_image, copy_dir, max_abs, offline};

/// Puts `dir` into a Hugging Face cache as `repo` at `main`; returns load options using it.
fn hub_with(tmp: &Path, repo: &str, dir: &Path) -> LoadOptions {
    let hub = HubConfig {
        cache_dir: tmp.join("hf").join("hub"),
        offline: true,
    };
    let r = hub.repo_dir(repo);
    copy_dir(dir, &r.join("snapshots/c0ffee"));
    std::fs::create_dir_all(r.join("refs")).unwrap();
    std::fs::write(r.join("refs/main"), "c0ffee").unwrap();
    LoadOptions {
        hub,
        ..Default::default()
    }
}

#[test]
fn sd_turbo_and_sd21_text_to_image() {
    let tmp = tempfile::tempdir().unwrap();
    let m = make_tiny(tmp.path(), &TinyOptions::default()).unwrap();
    // Real diffusers tensor names.
    let unet =
        TensorFile::open(&m.sd_dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    for n in [
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "down_blocks.0.attentions.0.proj_in.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.bias",
        "up_blocks.1.attentions.1.transformer_blocks.0.norm3.weight",
        "up_blocks.0.upsamplers.0.conv.weight",
        "conv_norm_out.weight",
    ] {
        assert!(unet.contains(n), "{n}");
    }
    let pipe = load_sd(
        &ModelSource::Diffusers(m.sd_dir.clone()),
        &offline(tmp.path()),
    )
    .unwrap();
    assert_eq!(pipe.scheduler.kind, SdSamplerKind::Euler);
    let req = SdRequest {
        prompt: "a red car".into(),
        width: 32,
        height: 32,
        seed: 3,
        ..Default::default()
    };
    let out = pipe.generate(&req).unwrap();
    check_image(&out.images, &[1, 3, 32, 32], 0.01);
    assert_eq!(out.latents.dims(), &[1, 4, 4, 4]);
    assert_eq!(out.to_rgb_images().unwrap()[0].dimensions(), (32, 32));
    // One Euler step by hand: x = σ·n, x̂₀ = x − σ·ε̂(x/√(σ²+1), 999).
    let sigma =
        splatforge_diffusion::schedulers::euler::EulerScheduler::new(&pipe.scheduler.config, 1)
            .unwrap()
            .sigmas()[0];
    let x = (randn(3, &[1, 4, 4, 4], DType::F32, &Device::Cpu).unwrap() * sigma).unwrap();
    let ctx = pipe.encode_prompt("a red car").unwrap();
    let eps = pipe
        .predict_noise(&(&x / (sigma * sigma + 1.0).sqrt()).unwrap(), 999.0, &ctx)
        .unwrap();
    let x0 = (&x - (eps * sigma).unwrap()).unwrap();
    assert!(
        max_abs(&x0, &out.latents) < 1e-4,
        "{}",
        max_abs(&x0, &out.latents)
    );
    // Seeded.
    assert_eq!(
        max_abs(&pipe.generate(&req).unwrap().images, &out.images),
        0.0
    );
    // A progress callback can stop the sampler after a step.
    common::assert_cancels_after_one_step(|cb| pipe.generate_latents(&req, cb));
    let other = pipe
        .generate(&SdRequest {
            seed: 4,
            ..req.clone()
        })
        .unwrap();
    assert!(max_abs(&other.images, &out.images) > 1e-3);

    // SD 2.1's setting: DDIM, v-prediction, CFG with a negative prompt.
    let mut sd21 = pipe;
    sd21.scheduler.kind = SdSamplerKind::Ddim;
    sd21.scheduler.config.prediction_type = PredictionType::VPrediction;
    sd21.scheduler.config.timestep_spacing = TimestepSpacing::Leading;
    let req21 = SdRequest {
        steps: 2,
        guidance_scale: 5.0,
        negative_prompt: "blurry".into(),
        ..req.clone()
    };
    let a = sd21.generate(&req21).unwrap();
    check_image(&a.images, &[1, 3, 32, 32], 0.01);
    let b = sd21
        .generate(&SdRequest {
            negative_prompt: "ugly".into(),
            ..req21.clone()
        })
        .unwrap();
    assert!(
        max_abs(&a.latents, &b.latents) > 1e-4,
        "the negative prompt matters"
    );
    // Sizes must be multiples of 16 (VAE ×8, one UNet downsampling).
    assert!(sd21.generate(&SdRequest { width: 24, ..req21 }).is_err());

    // The same through the Hugging Face cache layout.
    let opts = hub_with(tmp.path(), SD_TURBO_REPO, &m.sd_dir);
    let hub_pipe = load_sd(&ModelSource::parse(&format!("hf:{SD_TURBO_REPO}")), &opts).unwrap();
    assert_eq!(
        max_abs(&hub_pipe.generate(&req).unwrap().images, &out.images),
        0.0
    );
    // Single checkpoints are refused with a hint.
    let err = load_sd(&ModelSource::parse("/nonexistent/sd.safetensors"), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diffusers-layout"), "{err}");
}

#[test]
fn flux_schnell_text_to_image() {
    let tmp = tempfile::tempdir().unwrap();
    let m = make_tiny(tmp.path(), &TinyOptions::default()).unwrap();
    let index = std::fs::read_to_string(
        m.flux_dir
            .join("transformer/diffusion_pytorch_model.safetensors.index.json"),
    )
    .unwrap();
    for n in [
        "x_embedder.weight",
        "context_embedder.weight",
        "time_text_embed.timestep_embedder.linear_1.weight",
        "time_text_embed.text_embedder.linear_2.bias",
        "transformer_blocks.0.attn.to_q.weight",
        "transformer_blocks.0.attn.add_k_proj.bias",
        "transformer_blocks.0.attn.norm_added_q.weight",
        "transformer_blocks.0.attn.to_add_out.weight",
        "transformer_blocks.0.ff_context.net.0.proj.weight",
        "transformer_blocks.0.norm1_context.linear.weight",
        "single_transformer_blocks.0.proj_mlp.weight",
        "single_transformer_blocks.0.norm.linear.bias",
        "norm_out.linear.weight",
        "proj_out.bias",
    ] {
        assert!(index.contains(&format!("\"{n}\"")), "{n}");
    }
    let pipe = load_flux(
        &ModelSource::Diffusers(m.flux_dir.clone()),
        &offline(tmp.path()),
    )
    .unwrap();
    // Tokenizers: T5 appends </s> and pads with <pad> (0); CLIP pads with EOS.
    let ids = pipe.t5_tokenizer.encode_to("a cute owl", 6).unwrap();
    assert_eq!(ids[3..], [1, 0, 0]);
    assert_eq!(pipe.t5_tokenizer.encode_to("a cute owl", 2).unwrap()[1], 1);
    assert_eq!(pipe.clip_tokenizer.pad_id(), pipe.clip_tokenizer.eos_id());

    let req = FluxRequest {
        prompt: "a cute owl".into(),
        steps: 2,
        width: 32,
        height: 32,
        max_sequence_length: 16,
        seed: 5,
        ..Default::default()
    };
    let mut steps = vec![];
    let lat = pipe
        .generate_latents(&req, |i, n| {
            steps.push((i, n));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(steps, vec![(1, 2), (2, 2)]);
    assert_eq!(lat.dims(), &[1, 16, 4, 4]);
    common::assert_cancels_after_one_step(|cb| pipe.generate_latents(&req, cb));
    let out = pipe.generate(&req).unwrap();
    check_image(&out.images, &[1, 3, 32, 32], 0.01);
    assert_eq!(max_abs(&out.latents, &lat), 0.0);

    // One step by hand: packed noise x, x − v(x, t = 1).
    let one = FluxRequest {
        steps: 1,
        ..req.clone()
    };
    let lat1 = pipe
        .generate_latents(&one, |_, _| ControlFlow::Continue(()))
        .unwrap();
    let noise = randn(5, &[1, 16, 4, 4], DType::F32, &Device::Cpu).unwrap();
    let txt = pipe.encode_t5("a cute owl", 16).unwrap();
    let pooled = pipe.encode_clip("a cute owl").unwrap();
    assert_eq!(pooled.dims(), &[1, 32]);
    let st =
        candle_transformers::models::flux::sampling::State::new(&txt, &pooled, &noise).unwrap();
    let v = pipe
        .velocity(
            &st.img,
            &st.img_ids,
            &st.txt,
            &st.txt_ids,
            1.0,
            &st.vec,
            None,
        )
        .unwrap();
    let x = candle_transformers::models::flux::sampling::unpack(&(&st.img - &v).unwrap(), 32, 32)
        .unwrap();
    assert!(max_abs(&x, &lat1) < 1e-5);

    // The original-names single file gives the same transformer.
    let bfl = flux_transformer_from_file(
        std::sync::Arc::new(TensorFile::open(&m.flux_bfl_checkpoint).unwrap()),
        &pipe.transformer_config,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
    let v_bfl = bfl
        .forward(
            &st.img,
            &st.img_ids,
            &st.txt,
            &st.txt_ids,
            &t,
            &st.vec,
            None,
        )
        .unwrap();
    assert_eq!(max_abs(&v_bfl, &v), 0.0);

    // Hugging Face cache layout (sharded transformer and T5 through the index).
    let opts = hub_with(tmp.path(), FLUX_SCHNELL_REPO, &m.flux_dir);
    let hub_pipe = load_flux(
        &ModelSource::parse(&format!("hf:{FLUX_SCHNELL_REPO}")),
        &opts,
    )
    .unwrap();
    assert_eq!(
        max_abs(
            &hub_pipe
                .generate_latents(&req, |_, _| ControlFlow::Continue(()))
                .unwrap(),
            &lat
        ),
        0.0
    );
    // A missing shard is named.
    std::fs::remove_file(
        m.flux_dir
            .join("text_encoder_2/model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let err = load_flux(
        &ModelSource::Diffusers(m.flux_dir.clone()),
        &offline(tmp.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    // Sides must be multiples of 16.
    assert!(pipe
        .generate_latents(&FluxRequest { width: 40, ..req }, |_, _| {
            ControlFlow::Continue(())
        })
        .is_err());
}

#[test]
fn mvdream_unet_with_one_view_and_no_camera_is_the_sd_unet() {
    use splatforge_diffusion::mvdream::MultiViewUNet;
    use splatforge_diffusion::sd::{PerBlock, SdUNetConfig};
    use splatforge_nn::weights::{MappedBackend, SeededInit};
    // Tiny MVDream without camera, and the diffusers UNet of the same shape.
    let mut mv_cfg = random_models::tiny_config().unet;
    mv_cfg.camera_dim = None;
    let sd_cfg = SdUNetConfig {
        block_out_channels: vec![32, 64],
        down_block_types: vec!["CrossAttnDownBlock2D".into(); 2],
        up_block_types: vec!["CrossAttnUpBlock2D".into(); 2],
        layers_per_block: 1,
        attention_head_dim: PerBlock::Each(vec![4, 8]),
        cross_attention_dim: 32,
        ..SdUNetConfig::sd21()
    };
    let init = SeededInit::new(77);
    let sd = candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel::new(
        init.var_builder(),
        4,
        4,
        false,
        sd_cfg.to_candle().unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("unet.safetensors");
    let tensors: std::collections::HashMap<String, Tensor> = init.tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let file = std::sync::Arc::new(TensorFile::open(&path).unwrap());
    let map = splatforge_diffusion::mvdream::ldm::diffusers_unet_names(&mv_cfg);
    let mv = MultiViewUNet::new(
        MappedBackend::new(file, map, "unet").into_var_builder(DType::F32, &Device::Cpu),
        &mv_cfg,
    )
    .unwrap();
    let x = randn(1, &[2, 4, 8, 8], DType::F32, &Device::Cpu).unwrap();
    let ctx = randn(2, &[2, 7, 32], DType::F32, &Device::Cpu).unwrap();
    let a = sd.forward(&x, 500.0, &ctx).unwrap();
    let t = Tensor::new(&[500f32, 500.0], &Device::Cpu).unwrap();
    let b = mv.forward(&x, &t, &ctx, None, 1).unwrap();
    let scale = max_abs(&a, &a.zeros_like().unwrap());
    let err = max_abs(&a, &b) / scale;
    eprintln!("MVDream (1 view, no camera) vs candle's SD UNet: max rel. error {err:e}");
    // candle's GEGLU uses the tanh GELU, MVDream (and diffusers) the exact one.
    assert!(err < 2e-3, "{err}");
}
