//! End-to-end tests of MVDream text → 4 views on the tiny random-weight
//! models, through the real loading code (diffusers layout, LDM checkpoint,
//! Hugging Face cache layout). Small images (32² → 4² latents) keep the
//! debug-build run time down; `views_at_256` runs the real output size
//! (ignored by default: run it with `--release -- --ignored`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use splatforge_diffusion::tokenizer::ClipTokenizer;
use splatforge_diffusion::*;

mod common;
use common::{all_finite, check_image, copy_dir, max_abs, max_abs_value, offline};

fn tiny(dir: &Path) -> TinyModels {
    tiny_stored_as(dir, DType::F32)
}

/// The tiny models with their weights stored as `dtype`.
fn tiny_stored_as(dir: &Path, dtype: DType) -> TinyModels {
    make_tiny(dir, &TinyOptions { seed: 11, dtype }).unwrap()
}

fn ldm(m: &TinyModels) -> ModelSource {
    ModelSource::Ldm {
        checkpoint: m.ldm_checkpoint.clone(),
        config: None,
        tokenizer: None,
    }
}

fn request(seed: u64) -> MvDreamRequest {
    MvDreamRequest {
        prompt: "a cute owl".into(),
        negative_prompt: "blurry, ugly".into(),
        steps: 2,
        guidance_scale: 4.0,
        seed,
        image_size: 32,
        ..Default::default()
    }
}

fn latents(p: &MvDreamPipeline, req: &MvDreamRequest) -> Tensor {
    p.generate_latents(req, |_, _| ControlFlow::Continue(()))
        .unwrap()
}

#[test]
fn text_to_four_views_on_both_layouts_gives_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let opts = offline(tmp.path());
    let a = load_mvdream(&ModelSource::Diffusers(m.diffusers_dir.clone()), &opts).unwrap();
    let b = load_mvdream(&ldm(&m), &opts).unwrap();

    // Same tokens, same text embeddings.
    assert_eq!(
        a.tokenizer.encode("a cute owl").unwrap(),
        b.tokenizer.encode("a cute owl").unwrap()
    );
    let ea = a.encode_prompt("a red car").unwrap();
    assert_eq!(ea.dims(), &[1, 77, 32]);
    assert_eq!(max_abs(&ea, &b.encode_prompt("a red car").unwrap()), 0.0);

    let req = request(7);
    let mut steps = vec![];
    let oa = a
        .generate_with_progress(&req, |i, n| {
            steps.push((i, n));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(steps, vec![(1, 2), (2, 2)]);
    // Cancelled from the progress callback after the first step.
    common::assert_cancels_after_one_step(|cb| a.generate_latents(&req, cb));
    let ob = b.generate(&req).unwrap();
    check_image(&oa.images, &[4, 3, 32, 32], 0.05);
    assert_eq!(oa.latents.dims(), &[4, 4, 4, 4]);
    assert_eq!(max_abs(&oa.latents, &ob.latents), 0.0);
    assert_eq!(max_abs(&oa.images, &ob.images), 0.0);

    // The UNet's camera inputs: MVDream's rig (the render cameras of the
    // same views are splatforge-pipeline's, tested there).
    assert_eq!(
        oa.camera_embeddings,
        mvdream::camera::camera_embeddings(4, 15.0, 0.0, 360.0)
    );
    let imgs = oa.to_rgb_images().unwrap();
    assert_eq!(imgs.len(), 4);
    assert_eq!(imgs[0].dimensions(), (32, 32));
}

#[test]
fn generation_is_seeded_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let p = load_mvdream(
        &ModelSource::Diffusers(m.diffusers_dir),
        &offline(tmp.path()),
    )
    .unwrap();
    let x1 = latents(&p, &request(3));
    let x2 = latents(&p, &request(3));
    let y = latents(&p, &request(4));
    assert_eq!(max_abs(&x1, &x2), 0.0);
    assert!(max_abs(&x1, &y) > 1e-3);
    assert!(all_finite(&x1));
}

#[test]
fn guidance_uses_the_negative_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let p = load_mvdream(&ldm(&m), &offline(tmp.path())).unwrap();
    let with = |g: f64, neg: &str| {
        latents(
            &p,
            &MvDreamRequest {
                guidance_scale: g,
                negative_prompt: neg.into(),
                ..request(5)
            },
        )
    };
    // Without guidance the negative prompt is unused.
    assert_eq!(max_abs(&with(1.0, "ugly"), &with(1.0, "blue dog")), 0.0);
    // With guidance it matters, and so does the scale.
    let g4 = with(4.0, "ugly");
    assert!(max_abs(&g4, &with(4.0, "blue dog")) > 1e-4);
    assert!(max_abs(&g4, &with(1.0, "ugly")) > 1e-4);
    assert!(max_abs(&g4, &with(8.0, "ugly")) > 1e-4);
    // The prompt matters too.
    let other = latents(
        &p,
        &MvDreamRequest {
            prompt: "a red car".into(),
            ..request(5)
        },
    );
    assert!(max_abs(&g4, &other) > 1e-4);
}

#[test]
fn half_precision_files_load_and_match_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let m32 = tiny(&tmp.path().join("f32"));
    let m16 = tiny_stored_as(&tmp.path().join("f16"), DType::F16);
    let mb = tiny_stored_as(&tmp.path().join("bf16"), DType::BF16);
    let opts = offline(tmp.path());
    let req = MvDreamRequest {
        steps: 1,
        ..request(1)
    };
    let reference = latents(
        &load_mvdream(&ModelSource::Diffusers(m32.diffusers_dir), &opts).unwrap(),
        &req,
    );
    let scale = max_abs_value(&reference);
    for (m, tol) in [(m16, 0.01f32), (mb, 0.05)] {
        for src in [ModelSource::Diffusers(m.diffusers_dir.clone()), ldm(&m)] {
            let p = load_mvdream(&src, &opts).unwrap();
            let d = max_abs(&latents(&p, &req), &reference);
            assert!(d <= tol * scale, "{src:?}: {d} vs scale {scale}");
        }
    }
}

#[test]
fn missing_files_are_named_with_where_to_get_them() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let opts = offline(tmp.path());
    let err = |src: &ModelSource| load_mvdream(src, &opts).unwrap_err().to_string();

    std::fs::remove_file(
        m.diffusers_dir
            .join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let e = err(&ModelSource::Diffusers(m.diffusers_dir.clone()));
    assert!(
        e.contains("vae/diffusion_pytorch_model.safetensors")
            && e.contains("ashawkey/mvdream-sd2.1-diffusers"),
        "{e}"
    );

    std::fs::remove_file(m.diffusers_dir.join("unet/config.json")).unwrap();
    let e = err(&ModelSource::Diffusers(m.diffusers_dir.clone()));
    assert!(e.contains("unet/config.json"), "{e}");

    std::fs::remove_file(m.diffusers_dir.join("model_index.json")).unwrap();
    assert!(err(&ModelSource::Diffusers(m.diffusers_dir.clone())).contains("model_index.json"));

    let e = err(&ModelSource::Ldm {
        checkpoint: tmp.path().join("sd-v2.1-base-4view.pt"),
        config: None,
        tokenizer: None,
    });
    assert!(
        e.contains("sd-v2.1-base-4view.pt") && e.contains("MVDream/MVDream"),
        "{e}"
    );

    // An LDM checkpoint without a tokenizer beside it, offline.
    std::fs::remove_file(m.ldm_checkpoint.with_file_name("tokenizer.json")).unwrap();
    let e = err(&ldm(&m));
    assert!(
        e.contains("tokenizer.json")
            && e.contains("openai/clip-vit-large-patch14")
            && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );

    // A hub repository that is not in the cache, offline.
    let e = err(&ModelSource::mvdream_hub());
    assert!(
        e.contains("model_index.json") && e.contains("ashawkey/mvdream-sd2.1-diffusers"),
        "{e}"
    );
    let e = err(&ModelSource::HubLdm {
        repo: "MVDream/MVDream".into(),
        revision: "main".into(),
        file: "sd-v2.1-base-4view.pt".into(),
    });
    assert!(
        e.contains("sd-v2.1-base-4view.pt") && e.contains("MVDream/MVDream"),
        "{e}"
    );
}

#[test]
fn inconsistent_config_and_weights_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let mut cfg: LdmConfig =
        serde_json::from_str(&std::fs::read_to_string(&m.ldm_config).unwrap()).unwrap();
    cfg.unet.num_head_channels = 16; // fine for the shapes…
    cfg.unet.transformer_depth = 2; // …but there is no second transformer block
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&cfg).unwrap()).unwrap();
    let src = ModelSource::Ldm {
        checkpoint: m.ldm_checkpoint.clone(),
        config: Some(bad.clone()),
        tokenizer: None,
    };
    let e = load_mvdream(&src, &offline(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("transformer_blocks.1") && e.contains(m.ldm_checkpoint.to_str().unwrap()),
        "{e}"
    );

    cfg.unet.transformer_depth = 1;
    cfg.unet.model_channels = 64;
    std::fs::write(&bad, serde_json::to_string(&cfg).unwrap()).unwrap();
    let e = load_mvdream(&src, &offline(tmp.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("shape") && e.contains("model.diffusion_model."),
        "{e}"
    );

    // A diffusers folder given as an LDM checkpoint.
    let e = load_mvdream(
        &ModelSource::Ldm {
            checkpoint: m
                .diffusers_dir
                .join("unet/diffusion_pytorch_model.safetensors"),
            config: Some(m.ldm_config.clone()),
            tokenizer: None,
        },
        &offline(tmp.path()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not an LDM checkpoint"), "{e}");
}

#[test]
fn hugging_face_cache_layout_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let hub_dir = tmp.path().join("hf-home").join("hub");
    let hub = HubConfig::from_vars(
        None,
        Some(tmp.path().join("hf-home").display().to_string()),
        None,
        Some("1".into()),
    );
    assert_eq!(hub.cache_dir, hub_dir);
    assert!(hub.offline);
    // Diffusers repo at a commit, `main` pointing to it.
    let repo = hub.repo_dir("ashawkey/mvdream-sd2.1-diffusers");
    copy_dir(&m.diffusers_dir, &repo.join("snapshots/0123abcd"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    // LDM checkpoint repo with its tokenizer and config in the same snapshot.
    let lrepo = hub.repo_dir("MVDream/MVDream");
    copy_dir(
        m.ldm_checkpoint.parent().unwrap(),
        &lrepo.join("snapshots/feedbeef"),
    );
    std::fs::create_dir_all(lrepo.join("refs")).unwrap();
    std::fs::write(lrepo.join("refs/main"), "feedbeef\n").unwrap();

    let opts = LoadOptions {
        hub,
        ..Default::default()
    };
    let from_hub = load_mvdream(&ModelSource::mvdream_hub(), &opts).unwrap();
    assert!(from_hub.source.contains("ashawkey/mvdream-sd2.1-diffusers"));
    let spec = format!("hf:MVDream/MVDream:{}", random_models::LDM_FILE);
    let ldm_hub = load_mvdream(&ModelSource::parse(&spec), &opts).unwrap();
    let local = load_mvdream(
        &ModelSource::Diffusers(m.diffusers_dir.clone()),
        &offline(tmp.path()),
    )
    .unwrap();
    let req = MvDreamRequest {
        steps: 1,
        ..request(2)
    };
    let x = latents(&local, &req);
    assert_eq!(max_abs(&x, &latents(&from_hub, &req)), 0.0);
    assert_eq!(max_abs(&x, &latents(&ldm_hub, &req)), 0.0);
}

#[test]
fn model_source_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        ModelSource::parse(tmp.path().to_str().unwrap()),
        ModelSource::Diffusers(tmp.path().to_path_buf())
    );
    assert_eq!(
        ModelSource::parse("x.pt"),
        ModelSource::Ldm {
            checkpoint: PathBuf::from("x.pt"),
            config: None,
            tokenizer: None
        }
    );
    assert_eq!(
        ModelSource::parse("hf:a/b"),
        ModelSource::HubDiffusers {
            repo: "a/b".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        ModelSource::parse("hf:a/b@v2:m.pt"),
        ModelSource::HubLdm {
            repo: "a/b".into(),
            revision: "v2".into(),
            file: "m.pt".into()
        }
    );
}

#[test]
fn tokenizer_json_and_slow_tokenizer_files_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let dir = m.diffusers_dir.join("tokenizer");
    let fast = ClipTokenizer::from_dir(&dir, 77).unwrap();
    let slow =
        ClipTokenizer::from_vocab_merges(&dir.join("vocab.json"), &dir.join("merges.txt"), 77)
            .unwrap()
            .with_pad_id(0);
    assert_eq!((fast.pad_id(), fast.max_length()), (0, 77));
    let long = "a cute owl riding a horse ".repeat(30);
    for text in [
        "a cute owl, 3d asset",
        "The  RED\tcar.",
        "",
        "astronauts ñ blurry-ugly 3D",
        long.as_str(),
    ] {
        let a = fast.encode(text).unwrap();
        assert_eq!(a, slow.encode(text).unwrap(), "{text:?}");
        assert_eq!(a.len(), 77);
        assert_eq!(a[0], fast.bos_id());
        assert!(a.contains(&fast.eos_id()));
    }
    // Whole words are single tokens, case and spacing do not matter.
    let ids = fast.encode("A  Cute OWL").unwrap();
    assert_eq!(ids[4], fast.eos_id());
    assert_eq!(ids[5..], vec![0; 72][..]);
    assert_eq!(fast.encode("a cute owl").unwrap(), ids);
    // Truncation keeps the end-of-text token last.
    let ids = fast.encode(&long).unwrap();
    assert_eq!(ids[76], fast.eos_id());
    assert!(!ids[1..76].contains(&fast.eos_id()));
}

#[test]
#[ignore = "slow in debug builds: run with `cargo test --release -p splatforge-diffusion -- --ignored`"]
fn views_at_256() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny(tmp.path());
    let p = load_mvdream(&ldm(&m), &offline(tmp.path())).unwrap();
    let t0 = std::time::Instant::now();
    let out = p
        .generate(&MvDreamRequest {
            image_size: 256,
            steps: 4,
            ..request(9)
        })
        .unwrap();
    eprintln!(
        "256²: 4 DDIM steps with CFG + decode in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(out.images.dims(), &[4, 3, 256, 256]);
    assert_eq!(out.latents.dims(), &[4, 4, 32, 32]);
    assert!(all_finite(&out.images));
}
