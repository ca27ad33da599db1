//! `make_random_mvdream`: MVDream's diffusers layout with seeded random
//! weights, loaded through the real loader. The tiny size runs by default;
//! `full_size_writes_loads_and_runs` (about 1.3 billion parameters, several
//! GB of memory) is ignored: run it with
//! `cargo test --release -p splatforge-diffusion --test random_mvdream -- --ignored`.

use splatforge_diffusion::random_models::tiny_vocab;
use splatforge_diffusion::*;
use splatforge_nn::weights::TensorFile;

mod common;
use common::{all_finite, offline};

fn request() -> MvDreamRequest {
    MvDreamRequest {
        prompt: "a red car".into(),
        negative_prompt: "blurry".into(),
        steps: 2,
        guidance_scale: 7.5,
        seed: 4,
        image_size: 32,
        ..Default::default()
    }
}

fn opts(seed: u64, dtype: DType) -> TinyOptions {
    TinyOptions { seed, dtype }
}

#[test]
fn tiny_random_mvdream_loads_and_gives_finite_views_in_f32_and_f16() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models/mvdream");
    let cfg = ModelSize::Tiny.config();
    let m = make_random_mvdream(&dir, &cfg, &opts(3, DType::BF16)).unwrap();
    assert_eq!(m.dir, dir);
    assert!(
        dir.join("model_index.json").is_file()
            && dir.join("scheduler/scheduler_config.json").is_file()
    );
    // Only the finished folder is left beside it.
    let siblings: Vec<_> = std::fs::read_dir(tmp.path().join("models"))
        .unwrap()
        .collect();
    assert_eq!(siblings.len(), 1);
    let unet = TensorFile::open(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(unet.first_dtype(), Some(DType::BF16));
    let stored: usize = (m.unet_params + m.vae_params + m.text_params) * 2;
    assert!(
        m.weight_bytes as usize > stored && (m.weight_bytes as usize) < stored + 200_000,
        "{m:?}"
    );

    // The same seed gives make_tiny's diffusers model, tensor for tensor.
    let t = make_tiny(&tmp.path().join("tiny"), &opts(3, DType::BF16)).unwrap();
    assert_eq!(
        (t.unet_params, t.vae_params, t.text_params),
        (m.unet_params, m.vae_params, m.text_params)
    );
    for f in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(t.diffusers_dir.join(f)).unwrap(),
            "{f}"
        );
    }

    // candle's CPU matmul has no bf16; f16 has the narrower range (max 65504),
    // so finite f16 activations mean finite bf16 ones (same range as f32).
    for dtype in [DType::F32, DType::F16] {
        let o = LoadOptions {
            dtype,
            ..offline(tmp.path())
        };
        let p = load_mvdream(&ModelSource::Diffusers(dir.clone()), &o).unwrap();
        let out = p.generate(&request()).unwrap();
        assert_eq!(out.images.dims(), &[4, 3, 32, 32]);
        assert!(
            all_finite(&out.latents) && all_finite(&out.images),
            "{dtype:?}"
        );
    }
}

#[test]
fn a_text_encoder_vocabulary_larger_than_the_tokenizer_loads() {
    // As the full-size model: 49408 embedding rows, a ~120-token tokenizer.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = ModelSize::Tiny.config();
    let tokens = tiny_vocab().0.len();
    cfg.text_encoder.vocab_size = 4 * tokens;
    let dir = tmp.path().join("big-vocab");
    make_random_mvdream(&dir, &cfg, &opts(1, DType::F32)).unwrap();
    let text = TensorFile::open(&dir.join("text_encoder/model.safetensors")).unwrap();
    let emb = text
        .load("text_model.embeddings.token_embedding.weight")
        .unwrap()
        .unwrap();
    assert_eq!(emb.dims(), &[4 * tokens, 32]);
    let p = load_mvdream(&ModelSource::Diffusers(dir), &offline(tmp.path())).unwrap();
    assert!(all_finite(
        &p.generate(&MvDreamRequest {
            steps: 1,
            ..request()
        })
        .unwrap()
        .images
    ));

    cfg.text_encoder.vocab_size = tokens - 1;
    let e = make_random_mvdream(&tmp.path().join("small-vocab"), &cfg, &opts(1, DType::F32))
        .unwrap_err();
    assert!(e.to_string().contains("vocab_size"), "{e}");
    assert!(!tmp.path().join("small-vocab").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "a failed write leaves nothing behind");
}

#[test]
fn an_existing_folder_must_be_empty_and_bad_dtypes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelSize::Tiny.config();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    make_random_mvdream(&empty, &cfg, &opts(0, DType::F16)).unwrap();
    let e = make_random_mvdream(&empty, &cfg, &opts(0, DType::F16)).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let e = make_random_mvdream(&tmp.path().join("u8"), &cfg, &opts(0, DType::U8)).unwrap_err();
    assert!(e.to_string().contains("bf16"), "{e}");
    assert!(!tmp.path().join("u8").exists());
}

#[test]
#[ignore = "full size: ~1.3 B parameters, 2.6 GB of bf16 files, ~6 GB of memory to load in f32"]
fn full_size_writes_loads_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mvdream-full");
    let cfg = ModelSize::Full.config();
    let t0 = std::time::Instant::now();
    let m = make_random_mvdream(&dir, &cfg, &opts(0, DType::BF16)).unwrap();
    eprintln!("wrote {m:?} in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(m.text_params, clip_text::parameter_count(&cfg.text_encoder));
    let total = m.unet_params + m.vae_params + m.text_params;
    assert!((1_250_000_000..1_350_000_000).contains(&total), "{total}");
    let unet = TensorFile::open(&dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(
        unet.load("input_blocks.0.0.weight")
            .unwrap()
            .unwrap()
            .dims(),
        &[320, 4, 3, 3]
    );

    let p = load_mvdream(&ModelSource::Diffusers(dir), &offline(tmp.path())).unwrap();
    let t0 = std::time::Instant::now();
    let out = p
        .generate(&MvDreamRequest {
            steps: 1,
            image_size: 64,
            ..request()
        })
        .unwrap();
    eprintln!(
        "64², 1 DDIM step with CFG + decode, f32 on the CPU: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(all_finite(&out.latents) && all_finite(&out.images));
}
