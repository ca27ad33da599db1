//! BiRefNet end to end on tiny random models (CPU), loading (files, prefixes, missing
//! tensors), and the published models' tensor names and shapes.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use image::RgbImage;
use splatforge_matte::random::{inference_tensors, state_dict_tensors, write_random_birefnet};
use splatforge_matte::{BiRefNet, BiRefNetConfig, Matte};
use splatforge_nn::weights::{save_random, SeededInit};

const SEED: u64 = 13;

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = (x as i32 - w as i32 / 2).pow(2) + (y as i32 - h as i32 / 2).pow(2)
            < (w.min(h) as i32 / 3).pow(2);
        if inside {
            image::Rgb([200, (x * 5) as u8, (y * 7) as u8])
        } else {
            image::Rgb([240, 240, 235])
        }
    })
}

fn tiny_seeded() -> Matte {
    let init = SeededInit::new(SEED);
    let model = BiRefNet::load(&BiRefNetConfig::tiny(), init.var_builder()).unwrap();
    Matte::new(model, DType::F32, &Device::Cpu)
}

#[test]
fn tiny_model_mattes_at_the_input_size() {
    let matte = tiny_seeded();
    let img = photo(50, 37);
    let a = matte.alpha(&img).unwrap();
    assert_eq!(a.len(), 50 * 37);
    assert!(a.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    let (lo, hi) = a
        .iter()
        .fold((1f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(hi - lo > 1e-4, "a constant matte ({lo}..{hi})");
    assert_eq!(matte.alpha(&img).unwrap(), a, "not deterministic");
    let gray = matte.alpha_image(&img).unwrap();
    assert_eq!(gray.dimensions(), (50, 37));
    assert_eq!(gray.as_raw()[7], (a[7] * 255.0).round() as u8);
    assert!(matte.alpha(&RgbImage::new(0, 4)).is_err());
}

#[test]
fn random_file_loads_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let config = BiRefNetConfig::tiny();
    let path = dir.path().join("model.safetensors");
    let written = write_random_birefnet(&config, SEED, DType::F32, &path).unwrap();
    assert_eq!(written, state_dict_tensors(&config, SEED).unwrap().len());
    let img = photo(40, 40);
    let want = tiny_seeded().alpha(&img).unwrap();
    // The file, and the folder holding it (Hugging Face layout).
    for spec in [&path, dir.path()] {
        let loaded = Matte::load_sized(
            spec.to_str().unwrap(),
            config.size,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(loaded.model().config(), &config);
        assert_eq!(loaded.alpha(&img).unwrap(), want);
    }
}

#[test]
fn prefixed_checkpoints_and_missing_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let config = BiRefNetConfig::tiny();
    let recipes = state_dict_tensors(&config, SEED).unwrap();
    let img = photo(32, 24);
    let want = tiny_seeded().alpha(&img).unwrap();

    // torch.compile + DDP checkpoints carry `module._orig_mod.` (utils.check_state_dict).
    let prefixed: BTreeMap<_, _> = recipes
        .iter()
        .map(|(k, v)| (format!("module._orig_mod.{k}"), v.clone()))
        .collect();
    let path = dir.path().join("compiled.safetensors");
    save_random(&prefixed, DType::F32, &path).unwrap();
    let m = Matte::load_sized(
        path.to_str().unwrap(),
        config.size,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.alpha(&img).unwrap(), want);

    let mut missing = recipes.clone();
    missing.remove("decoder.conv_out1.0.weight").unwrap();
    let path = dir.path().join("missing.safetensors");
    save_random(&missing, DType::F32, &path).unwrap();
    let err = Matte::load_sized(
        path.to_str().unwrap(),
        config.size,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("decoder.conv_out1.0.weight"), "{err}");
    assert!(err.contains("missing.safetensors"), "{err}");

    let mut no_backbone = recipes;
    no_backbone.remove("bb.patch_embed.proj.weight").unwrap();
    let path = dir.path().join("nobb.safetensors");
    save_random(&no_backbone, DType::F32, &path).unwrap();
    let err = Matte::load_sized(
        path.to_str().unwrap(),
        config.size,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bb.patch_embed.proj.weight"), "{err}");

    let err = Matte::load(
        dir.path().join("absent.safetensors").to_str().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}

/// The training-only tensors of the official state dict: `conv_ms_spvn_{4,3,2}`
/// (`ms_supervision`) and `gdt_convs_pred_{4,3,2}.0` (`out_ref`), weight and bias each.
fn training_only() -> Vec<String> {
    let mut v = Vec::new();
    for l in [2, 3, 4] {
        for p in ["weight", "bias"] {
            v.push(format!("decoder.conv_ms_spvn_{l}.{p}"));
            v.push(format!("decoder.gdt_convs_pred_{l}.0.{p}"));
        }
    }
    v.sort();
    v
}

/// Counts from the module definitions (`swin_v1.py`, `birefnet.py`, `decoder_blocks.py`,
/// `aspp.py`, `deform_conv.py`): the official state dict has 14 entries per Swin block (13
/// float + `relative_position_index`), 4 for the patch embedding, 3 per patch merging, 8 for
/// `norm0..3`; 66 per `BasicDecBlk` (8 BatchNorms of 5 entries, `num_batches_tracked`
/// included); the decoder 331 (4 blocks, 5 `SimpleConvs` of 4, `conv_out1` 2, 3 laterals of 2,
/// `conv_ms_spvn` 6, `gdt_convs` 21, `gdt_convs_pred` 6, `gdt_convs_attn` 6). 43 BatchNorms in
/// all. Swin-L: 24 blocks → 754 entries, 687 float; Swin-T: 12 blocks → 586, 531.
fn check_published(config: &BiRefNetConfig, float_entries: usize, known: &[(&str, &[usize])]) {
    let all = state_dict_tensors(config, 0).unwrap();
    assert_eq!(all.len(), float_entries);
    for (name, dims) in known {
        let got = all.get(*name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(got.dims(), *dims, "{name}");
    }
    let asked = inference_tensors(config, 0).unwrap();
    let extra: Vec<String> = all
        .keys()
        .filter(|k| !asked.contains_key(*k))
        .cloned()
        .collect();
    assert_eq!(extra, training_only());
    assert!(asked.keys().all(|k| all.contains_key(k)));
}

#[test]
fn swin_l_state_dict() {
    check_published(
        &BiRefNetConfig::birefnet(),
        687,
        &[
            ("bb.patch_embed.proj.weight", &[192, 3, 4, 4]),
            (
                "bb.layers.0.blocks.0.attn.relative_position_bias_table",
                &[529, 6],
            ),
            ("bb.layers.2.blocks.17.attn.qkv.weight", &[2304, 768]),
            ("bb.layers.3.blocks.1.mlp.fc1.weight", &[6144, 1536]),
            ("bb.layers.2.downsample.reduction.weight", &[1536, 3072]),
            ("bb.layers.2.downsample.norm.weight", &[3072]),
            ("bb.norm3.weight", &[1536]),
            ("squeeze_module.0.conv_in.weight", &[64, 5760, 3, 3]),
            (
                "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.offset_conv.weight",
                &[98, 64, 7, 7],
            ),
            (
                "squeeze_module.0.dec_att.aspp_deforms.2.atrous_conv.modulator_conv.weight",
                &[49, 64, 7, 7],
            ),
            (
                "squeeze_module.0.dec_att.aspp1.atrous_conv.regular_conv.weight",
                &[256, 64, 1, 1],
            ),
            (
                "squeeze_module.0.dec_att.global_avg_pool.1.weight",
                &[256, 64, 1, 1],
            ),
            ("squeeze_module.0.dec_att.conv1.weight", &[64, 1280, 1, 1]),
            ("squeeze_module.0.bn_out.running_var", &[3072]),
            ("decoder.ipt_blk5.conv1.weight", &[64, 3072, 3, 3]),
            ("decoder.ipt_blk1.conv_out.weight", &[48, 64, 3, 3]),
            ("decoder.decoder_block4.conv_in.weight", &[64, 3456, 3, 3]),
            ("decoder.decoder_block1.conv_out.weight", &[192, 64, 3, 3]),
            ("decoder.conv_out1.0.weight", &[1, 240, 1, 1]),
            ("decoder.lateral_block4.conv.weight", &[1536, 1536, 1, 1]),
            ("decoder.gdt_convs_4.0.weight", &[16, 1536, 3, 3]),
            ("decoder.gdt_convs_4.1.running_mean", &[16]),
            ("decoder.gdt_convs_attn_2.0.weight", &[1, 16, 1, 1]),
            ("decoder.conv_ms_spvn_4.weight", &[1, 1536, 1, 1]),
        ],
    );
}

#[test]
fn swin_t_state_dict() {
    check_published(
        &BiRefNetConfig::birefnet_lite(),
        531,
        &[
            ("bb.patch_embed.proj.weight", &[96, 3, 4, 4]),
            (
                "bb.layers.0.blocks.0.attn.relative_position_bias_table",
                &[169, 3],
            ),
            ("bb.layers.2.blocks.5.attn.proj.weight", &[384, 384]),
            ("squeeze_module.0.conv_in.weight", &[64, 2880, 3, 3]),
            ("decoder.ipt_blk5.conv_out.weight", &[192, 64, 3, 3]),
            ("decoder.decoder_block4.conv_in.weight", &[64, 1728, 3, 3]),
            ("decoder.conv_out1.0.weight", &[1, 120, 1, 1]),
        ],
    );
}

#[test]
fn hub_specs_resolve_through_the_cache() {
    use splatforge_matte::loading::{resolve, BIREFNET_REPO};
    use splatforge_nn::hub::HubConfig;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubConfig {
        cache_dir: dir.path().to_path_buf(),
        offline: true,
    };
    let repo = hub.repo_dir(BIREFNET_REPO);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "c0ffee\n").unwrap();
    let snapshot = repo.join("snapshots/c0ffee");
    std::fs::create_dir_all(&snapshot).unwrap();
    let config = BiRefNetConfig::tiny();
    write_random_birefnet(
        &config,
        SEED,
        DType::F32,
        &snapshot.join("model.safetensors"),
    )
    .unwrap();

    let path = resolve("hf:ZhengPeng7/BiRefNet", &hub).unwrap();
    assert_eq!(path, snapshot.join("model.safetensors"));
    let err = resolve(
        "hf:ZhengPeng7/BiRefNet:BiRefNet-general-epoch_244.pth",
        &hub,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("BiRefNet-general-epoch_244.pth"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    // A folder without model.safetensors names what it looked for.
    let err = resolve(dir.path().to_str().unwrap(), &hub)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
