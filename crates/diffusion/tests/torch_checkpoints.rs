//! PyTorch checkpoints (`torch.save` zip files) through `candle_core::pickle`.
//! The fixtures were written by `scripts/torch_checkpoints.py` with torch 2.11.

use std::path::{Path, PathBuf};

use splatforge_diffusion::*;
use splatforge_nn::weights::TensorFile;

mod common;
use common::f32s;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check_small(f: &TensorFile) {
    let get = |n: &str| f.load(n).unwrap().unwrap_or_else(|| panic!("{n} missing"));
    let a = get("a.f32");
    assert_eq!((a.dims(), a.dtype()), (&[3usize, 4][..], DType::F32));
    assert_eq!(f32s(&a), (0..12).map(|x| x as f32).collect::<Vec<_>>());
    let b = get("b.f16");
    assert_eq!((b.dims(), b.dtype()), (&[2usize, 3][..], DType::F16));
    assert_eq!(f32s(&b), (0..6).map(|x| x as f32 / 8.0).collect::<Vec<_>>());
    let c = get("c.bf16");
    assert_eq!(c.dtype(), DType::BF16);
    assert_eq!(f32s(&c), vec![-1.5, -0.5, 0.5, 1.5]);
    // arange(6).reshape(2, 3).t(): a transposed (Fortran-order) tensor.
    let d = get("d.transposed");
    assert_eq!(d.dims(), &[3, 2]);
    assert_eq!(f32s(&d), vec![0., 3., 1., 4., 2., 5.]);
    // arange(10)[2:6]: a view with a storage offset.
    assert_eq!(f32s(&get("e.slice")), vec![2., 3., 4., 5.]);
    assert_eq!(get("f.i64").to_vec1::<i64>().unwrap(), vec![1, 2, 3]);
    assert_eq!(f32s(&get("g.scalar")), vec![4.5]);
    assert!(f.load("nope").unwrap().is_none());
}

#[test]
fn flat_state_dict() {
    let f = TensorFile::open(&fixture("small.pt")).unwrap();
    assert_eq!(f.names().len(), 7);
    check_small(&f);
}

#[test]
fn state_dict_under_a_key() {
    let f = TensorFile::open(&fixture("small.ckpt")).unwrap();
    assert_eq!(f.names().len(), 7);
    check_small(&f);
}

#[test]
fn legacy_format_says_how_to_convert() {
    let e = TensorFile::open(&fixture("small-legacy.pt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("small-legacy.pt") && e.contains("safetensors") && e.contains("python -c"),
        "{e}"
    );
    let e = TensorFile::open(&fixture("missing.pt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pt"), "{e}");
}

/// The tiny LDM model saved by torch (`scripts/torch_checkpoints.py` on the
/// output of `make_tiny` with the default options) gives the same views as
/// its safetensors form. Not committed (6 MB): set SPLATFORGE_TORCH_TINY_DIR
/// to the folder with tiny.pt, tiny.ckpt and tiny-fp16.pt.
#[test]
#[ignore = "needs SPLATFORGE_TORCH_TINY_DIR (see the doc comment)"]
fn tiny_model_from_torch_checkpoints() {
    let dir = PathBuf::from(
        std::env::var("SPLATFORGE_TORCH_TINY_DIR").expect("SPLATFORGE_TORCH_TINY_DIR"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let m = make_tiny(tmp.path(), &TinyOptions::default()).unwrap();
    let opts = LoadOptions {
        hub: HubConfig {
            cache_dir: tmp.path().join("hub"),
            offline: true,
        },
        ..Default::default()
    };
    let tok = m.ldm_checkpoint.with_file_name("tokenizer.json");
    let load = |p: PathBuf| {
        mvdream::load_mvdream(
            &ModelSource::Ldm {
                checkpoint: p,
                config: Some(m.ldm_config.clone()),
                tokenizer: Some(tok.clone()),
            },
            &opts,
        )
        .unwrap()
    };
    let req = MvDreamRequest {
        prompt: "a cute owl".into(),
        steps: 2,
        guidance_scale: 4.0,
        image_size: 32,
        seed: 3,
        ..Default::default()
    };
    let reference = load(m.ldm_checkpoint.clone()).generate(&req).unwrap();
    for (name, tol) in [
        ("tiny.pt", 0.0f32),
        ("tiny.ckpt", 0.0),
        ("tiny-fp16.pt", 0.02),
    ] {
        let out = load(dir.join(name)).generate(&req).unwrap();
        let d = common::max_abs(&out.images, &reference.images);
        eprintln!("{name}: max |Δ image| = {d}");
        assert!(d <= tol, "{name}: {d}");
    }
}
