//! `make_random_flux`: FLUX.1-schnell's diffusers layout with seeded random
//! weights, streamed to disk, loaded through the real loader. The tiny size
//! goes through exactly the code that writes the real 33.7 GB model
//! (recipes recorded without values, shards planned from the shapes, one
//! tensor at a time streamed to each file), with shards small enough that
//! the transformer and T5 take several, as the real ones do. That memory
//! stays bounded at the real size follows from that code: nothing holds more
//! than one tensor's values (see `make_random_flux` and
//! `splatforge_nn::weights::save_random_sharded`); the unit tests of
//! `random_models::flux` check the real size's shapes and shard plan.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use splatforge_diffusion::*;
use splatforge_nn::weights::TensorFile;

mod common;
use common::{all_finite, max_abs_value, offline};

fn opts(seed: u64, dtype: DType) -> TinyOptions {
    TinyOptions { seed, dtype }
}

/// Checks `{sub}/{stem}.safetensors.index.json` against its shards: every
/// tensor of every shard is listed exactly once, under the shard holding
/// it, `total_size` is their bytes; returns the number of shards.
fn check_index(dir: &Path, sub: &str, stem: &str, dtype: DType) -> usize {
    let index = dir.join(sub).join(format!("{stem}.safetensors.index.json"));
    let text = std::fs::read_to_string(&index).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let map: BTreeMap<String, String> = serde_json::from_value(json["weight_map"].clone()).unwrap();
    let mut shards: Vec<&String> = map.values().collect();
    shards.sort();
    shards.dedup();
    let n = shards.len();
    let mut seen = 0;
    let mut bytes = 0;
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(
            *shard,
            &format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1)
        );
        let f = TensorFile::open(&dir.join(sub).join(shard)).unwrap();
        for name in f.names() {
            // A JSON object keeps one of duplicate keys: count them in the text.
            assert_eq!(text.matches(&format!("\"{name}\":")).count(), 1, "{name}");
            assert_eq!(&map[name], *shard, "{name}");
            let t = f.load(name).unwrap().unwrap();
            assert_eq!(t.dtype(), dtype, "{name}");
            bytes += t.elem_count() * dtype.size_in_bytes();
            seen += 1;
        }
    }
    assert_eq!(seen, map.len(), "{index:?} lists tensors no shard holds");
    assert_eq!(json["metadata"]["total_size"], bytes);
    n
}

#[test]
fn tiny_random_flux_streams_shards_loads_and_samples_finite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models/flux");
    let m = make_random_flux(&dir, ModelSize::Tiny, &opts(3, DType::BF16)).unwrap();
    assert_eq!(m.dir, dir);
    // Only the finished folder is left beside it.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("models"))
            .unwrap()
            .count(),
        1
    );
    for f in [
        "model_index.json",
        "transformer/config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder_2/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer_2/tokenizer.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let t_shards = check_index(&dir, "transformer", "diffusion_pytorch_model", DType::BF16);
    let t5_shards = check_index(&dir, "text_encoder_2", "model", DType::BF16);
    assert!(t_shards >= 3 && t5_shards >= 2, "{t_shards} {t5_shards}");
    let t5 =
        std::fs::read_to_string(dir.join("text_encoder_2/model.safetensors.index.json")).unwrap();
    assert!(t5.contains("\"shared.weight\"") && !t5.contains("embed_tokens"));
    let vae = TensorFile::open(&dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    assert!(vae.contains("decoder.mid_block.attentions.0.to_q.weight"));
    let params = m.transformer_params + m.t5_params + m.clip_params + m.vae_params;
    assert_eq!(m.weight_bytes as usize, params * 2, "{m:?}");

    // The tiny make_tiny model has the same tensors (names and shapes).
    let tiny = make_tiny(&tmp.path().join("tiny"), &opts(3, DType::BF16)).unwrap();
    let names = |d: &Path| {
        let idx = d.join("transformer/diffusion_pytorch_model.safetensors.index.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(idx).unwrap()).unwrap();
        let map: BTreeMap<String, String> =
            serde_json::from_value(json["weight_map"].clone()).unwrap();
        map.into_keys().collect::<Vec<_>>()
    };
    assert_eq!(names(&dir), names(&tiny.flux_dir));

    // The real loader, and FLUX.1-schnell's 4 steps: finite, at unit scale.
    let pipe = load_flux(&ModelSource::Diffusers(dir.clone()), &offline(tmp.path())).unwrap();
    let req = FluxRequest {
        prompt: "a red chair".into(),
        steps: 4,
        width: 64,
        height: 64,
        max_sequence_length: 16,
        seed: 42,
        ..Default::default()
    };
    let text = pipe
        .encode_prompt(&req.prompt, req.max_sequence_length)
        .unwrap();
    assert!(all_finite(&text.t5) && all_finite(&text.pooled));
    let mut steps = 0;
    let lat = pipe
        .sample_latents(&text, &req, |_, _| {
            steps += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(steps, 4);
    assert_eq!(lat.dims(), &[1, 16, 8, 8]);
    // Far below bf16's range (3.4e38): each step moves the latents by about one unit.
    let peak = max_abs_value(&lat);
    assert!(all_finite(&lat) && peak < 1e3, "{peak}");
    let images = pipe.decode_latents(&lat).unwrap();
    assert!(all_finite(&images));
    assert_eq!(images.dims(), &[1, 3, 64, 64]);

    // Same seed, same files; a non-empty folder is refused.
    let again = make_random_flux(
        &tmp.path().join("again"),
        ModelSize::Tiny,
        &opts(3, DType::BF16),
    )
    .unwrap();
    let a = TensorFile::open(&dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let b = TensorFile::open(&again.dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let w = "decoder.conv_in.weight";
    let d = (a.load(w).unwrap().unwrap().to_dtype(DType::F32).unwrap()
        - b.load(w).unwrap().unwrap().to_dtype(DType::F32).unwrap())
    .unwrap();
    assert_eq!(max_abs_value(&d), 0.0);
    let e = make_random_flux(&dir, ModelSize::Tiny, &opts(3, DType::BF16)).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}
