//! Tests of the structured-latent flow model: the official forward written out, batches
//! against items alone, the sampler's velocities, loading and the checkpoint config.

use super::*;
use crate::blocks::tests::{layer_norm, lin, max_diff, Mat};
use crate::config::{checkpoint_weights, write_checkpoint, Checkpoint};
use crate::sampler::{FlowEulerSampler, SamplerParams};
use candle_core::Module;
use splatforge_nn::weights::{RandomRecorder, SeededInit};
use std::collections::BTreeMap;

fn randn(dims: &[usize], seed: u64) -> Tensor {
    SeededInit::new(seed)
        .var_builder()
        .get_with_hints(
            dims,
            "x",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )
        .unwrap()
}

fn silu(m: &Mat) -> Mat {
    m.map_rows(|r| r.iter().map(|v| v / (1.0 + (-v).exp())).collect())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn downsampling_res_block_follows_its_equations() {
    // Isolated voxels (no neighbours, one per coarse voxel, in the same order): each
    // convolution is its centre tap and pooling halves the features, so the block can
    // be written out row by row.
    let coords = vec![[0, 0, 0, 0], [0, 4, 4, 4], [1, 2, 0, 6]];
    let (cin, cout, emb_dim) = (4, 6, 5);
    let init = SeededInit::new(21);
    let block =
        SparseResBlock3d::load(cin, emb_dim, cout, Resampling::Down, init.var_builder()).unwrap();
    let down = SparseDownsample::new(&coords, 2, &Device::Cpu).unwrap();
    assert_eq!(
        down.coarse_coords(),
        &[[0, 0, 0, 0], [0, 2, 2, 2], [1, 1, 0, 3]]
    );
    let geometry = SlatGeometry {
        coords: coords.clone(),
        levels: vec![
            VoxelLevel::new(&coords, &Device::Cpu).unwrap(),
            VoxelLevel::new(down.coarse_coords(), &Device::Cpu).unwrap(),
        ],
        downsamples: vec![down],
        position: Tensor::zeros((3, 1), DType::F32, &Device::Cpu).unwrap(),
    };
    let x = randn(&[3, cin], 1);
    let emb = randn(&[2, emb_dim], 2);
    let got = block
        .forward(
            &SparseTensor::new(coords, x.clone()).unwrap(),
            &emb,
            &geometry,
            0,
        )
        .unwrap();
    assert_eq!(got.coords, geometry.downsamples[0].coarse_coords());

    let mut w: BTreeMap<String, Tensor> = init.tensors();
    for conv in ["conv1", "conv2"] {
        let k = w[&format!("{conv}.conv.weight")].clone();
        let (o, i) = (k.dim(0).unwrap(), k.dim(4).unwrap());
        let centre = k
            .reshape((o, 27, i))
            .unwrap()
            .narrow(1, 13, 1)
            .unwrap()
            .reshape((o, i))
            .unwrap();
        let bias = w[&format!("{conv}.conv.bias")].clone();
        w.insert(format!("{conv}.weight"), centre);
        w.insert(format!("{conv}.bias"), bias);
    }
    let pooled = Mat::of(&x).map_rows(|r| r.iter().map(|v| v / 2.0).collect());
    let (n1w, n1b) = (Mat::of(&w["norm1.weight"]), Mat::of(&w["norm1.bias"]));
    let h = lin(
        &w,
        "conv1",
        &silu(&layer_norm(&pooled, 1e-6, Some((&n1w, &n1b)))),
    );
    let h = layer_norm(&h, 1e-6, None);
    let e = lin(&w, "emb_layers.1", &silu(&Mat::of(&emb)));
    let batch_of_row = [0, 0, 1];
    let modulated = Mat {
        rows: h.rows,
        cols: h.cols,
        v: (0..h.rows)
            .flat_map(|r| {
                let (h, e) = (h.row(r), e.row(batch_of_row[r]));
                (0..cout).map(move |c| h[c] * (1.0 + e[c]) + e[cout + c])
            })
            .collect(),
    };
    let want = lin(&w, "conv2", &silu(&modulated)).add(&lin(&w, "skip_connection", &pooled));
    let diff = max_diff(&got.feats, &want);
    assert!(diff < 1e-5, "max |Δ| {diff}");
}

/// Two batch items: the first 14 voxels of a blob, and a different blob.
fn two_items() -> Vec<[u32; 4]> {
    let mut coords = Vec::new();
    for (b, offset, count) in [(0u32, 0u32, 14usize), (1, 2, 23)] {
        let mut item: Vec<[u32; 4]> = (0..4u32)
            .flat_map(|x| {
                (0..3u32)
                    .flat_map(move |y| (0..3u32).map(move |z| [b, x + offset, y + offset, z * 2]))
            })
            .collect();
        item.truncate(count);
        coords.extend(item);
    }
    coords
}

/// The rows of batch item `item` alone, renumbered as item 0.
fn item_alone(coords: &[[u32; 4]], item: u32) -> (Vec<[u32; 4]>, Vec<u32>) {
    let rows: Vec<u32> = (0..coords.len() as u32)
        .filter(|&r| coords[r as usize][0] == item)
        .collect();
    let alone = rows
        .iter()
        .map(|&r| {
            let c = coords[r as usize];
            [0, c[1], c[2], c[3]]
        })
        .collect();
    (alone, rows)
}

fn tiny_model(seed: u64) -> SLatFlowModel {
    SLatFlowModel::load(
        &SLatFlowConfig::tiny(),
        SeededInit::new(seed).var_builder(),
        DType::F32,
    )
    .unwrap()
}

fn check_batch_matches_items_alone(coords: Vec<[u32; 4]>) {
    let model = tiny_model(5);
    let cfg = model.config().clone();
    let x = SparseTensor::new(coords.clone(), randn(&[coords.len(), cfg.in_channels], 7)).unwrap();
    let t = Tensor::new(&[300f32, 820.0], &Device::Cpu).unwrap();
    let cond = randn(&[2, 5, cfg.cond_channels], 8);
    let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
    let batched = model.forward(&x, &t, &cond, &geometry).unwrap();
    assert_eq!(batched.coords, coords);
    for item in 0..2u32 {
        let (alone, rows) = item_alone(&coords, item);
        let ids = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
        let x_item =
            SparseTensor::new(alone.clone(), x.feats.index_select(&ids, 0).unwrap()).unwrap();
        let i = item as usize;
        let single = model
            .forward(
                &x_item,
                &t.narrow(0, i, 1).unwrap(),
                &cond.narrow(0, i, 1).unwrap(),
                &model.geometry(&alone, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let diff = max_abs_diff(&single.feats, &batched.feats.index_select(&ids, 0).unwrap());
        assert!(diff < 1e-4, "item {item}: max |Δ| {diff}");
    }
}

#[test]
fn model_follows_the_official_forward() {
    // `SLatFlowModel.forward` written out over the components (each tested on its own):
    // input layer, input res blocks keeping their outputs, APE of the coarse voxels,
    // each item alone through the dense blocks, output res blocks on [h, skip], layer
    // norm (eps 1e-5, no affine), output layer.
    let model = tiny_model(9);
    let cfg = model.config().clone();
    let coords = two_items();
    let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
    let x = randn(&[coords.len(), cfg.in_channels], 1);
    let t = Tensor::new(&[640f32, 75.0], &Device::Cpu).unwrap();
    let cond = randn(&[2, 4, cfg.cond_channels], 2);
    let got = model
        .forward(
            &SparseTensor::new(coords.clone(), x.clone()).unwrap(),
            &t,
            &cond,
            &geometry,
        )
        .unwrap();

    let t_emb = model.t_embedder.forward(&t).unwrap();
    let h = SparseTensor::new(coords.clone(), model.input_layer.forward(&x).unwrap()).unwrap();
    let h0 = model.input_blocks[0]
        .forward(&h, &t_emb, &geometry, 0)
        .unwrap();
    let h1 = model.input_blocks[1]
        .forward(&h0, &t_emb, &geometry, 0)
        .unwrap();
    let coarse = geometry.downsamples[0].coarse_coords();
    assert_eq!(h1.coords, coarse);
    let xyz: Vec<u32> = coarse.iter().flat_map(|c| c[1..].to_vec()).collect();
    let position = AbsolutePositionEmbedder::new(cfg.model_channels, 3)
        .unwrap()
        .embed(&xyz, &Device::Cpu)
        .unwrap();
    let tokens = (&h1.feats + position).unwrap();
    let mut items = Vec::new();
    let mut start = 0;
    for (i, &n) in geometry.levels[1].lens.iter().enumerate() {
        let mut item = tokens.narrow(0, start, n).unwrap().unsqueeze(0).unwrap();
        for block in &model.blocks {
            item = block
                .forward(
                    &item,
                    &t_emb.narrow(0, i, 1).unwrap(),
                    &cond.narrow(0, i, 1).unwrap(),
                )
                .unwrap();
        }
        items.push(item.squeeze(0).unwrap());
        start += n;
    }
    let h = h1.with_feats(Tensor::cat(&items, 0).unwrap()).unwrap();
    let h = h
        .with_feats(Tensor::cat(&[&h.feats, &h1.feats], 1).unwrap())
        .unwrap();
    let h = model.out_blocks[0]
        .forward(&h, &t_emb, &geometry, 1)
        .unwrap();
    assert_eq!(h.coords, coords);
    let h = h
        .with_feats(Tensor::cat(&[&h.feats, &h0.feats], 1).unwrap())
        .unwrap();
    let h = model.out_blocks[1]
        .forward(&h, &t_emb, &geometry, 0)
        .unwrap();
    let mut w = BTreeMap::new();
    w.insert("out.weight".to_string(), model.out_layer.weight().clone());
    w.insert(
        "out.bias".to_string(),
        model.out_layer.bias().unwrap().clone(),
    );
    let want = lin(&w, "out", &layer_norm(&Mat::of(&h.feats), 1e-5, None));
    let diff = max_diff(&got.feats, &want);
    assert!(diff < 1e-4, "max |Δ| {diff}");
}

#[test]
fn items_of_different_lengths_match_each_item_run_alone() {
    check_batch_matches_items_alone(two_items());
}

#[test]
fn items_of_equal_coordinates_match_each_item_run_alone() {
    let (first, _) = item_alone(&two_items(), 1);
    let second = first.iter().map(|c| [1, c[1], c[2], c[3]]);
    check_batch_matches_items_alone(first.iter().copied().chain(second).collect());
}

#[test]
fn sampler_velocities_are_the_model_on_the_voxels() {
    let model = tiny_model(4);
    let coords = two_items();
    let flow = SlatVelocity::new(&model, &coords, &Device::Cpu).unwrap();
    let x = randn(&[coords.len(), 8], 1);
    let (cond, neg) = (
        randn(&[2, 3, 16], 2),
        Tensor::zeros((2, 3, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    let direct = |c: &Tensor| {
        let t = Tensor::new(&[250f32, 250.0], &Device::Cpu).unwrap();
        let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
        model
            .forward(
                &SparseTensor::new(coords.clone(), x.clone()).unwrap(),
                &t,
                c,
                &geometry,
            )
            .unwrap()
            .feats
    };
    let (v_cond, v_neg) = flow.guided_velocities(&x, 250.0, &cond, &neg).unwrap();
    assert!(max_abs_diff(&v_cond, &direct(&cond)) < 1e-5);
    assert!(max_abs_diff(&v_neg, &direct(&neg)) < 1e-5);
    assert!(max_abs_diff(&flow.velocity(&x, 250.0, &cond).unwrap(), &direct(&cond)) < 1e-5);
    let params = SamplerParams {
        steps: 2,
        cfg_strength: 3.0,
        cfg_interval: (0.5, 1.0),
        rescale_t: 3.0,
    };
    let sample = FlowEulerSampler { sigma_min: 1e-5 }
        .sample(&flow, &x, &cond, &neg, &params, |_, _| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(sample.dims(), x.dims());
    let values = sample.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(max_abs_diff(&sample, &x) > 0.0);
}

#[test]
fn loads_a_random_weight_file_by_the_official_names() {
    let cfg = SLatFlowConfig::tiny();
    let recorder = RandomRecorder::new(5);
    SLatFlowModel::load(&cfg, recorder.var_builder(), DType::F32).unwrap();
    let recipes = recorder.recipes();
    for name in [
        "t_embedder.mlp.0.weight",
        "input_layer.weight",
        "input_blocks.0.conv1.conv.weight",
        "input_blocks.1.skip_connection.weight",
        "input_blocks.1.emb_layers.1.bias",
        "blocks.1.self_attn.q_rms_norm.gamma",
        "blocks.0.cross_attn.to_kv.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "out_blocks.0.conv1.conv.weight",
        "out_blocks.1.norm1.bias",
        "out_layer.bias",
    ] {
        assert!(recipes.contains_key(name), "{name} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("ckpts/slat_flow_img_dit_L_64l8p2_fp16");
    write_checkpoint(&stem, CLASS, &cfg, &recipes, DType::F32).unwrap();
    let read = Checkpoint::<SLatFlowConfig>::read(&stem, CLASS).unwrap();
    assert_eq!(read.args, cfg);
    let vb = checkpoint_weights(&stem, DType::F32, &Device::Cpu).unwrap();
    let from_file = SLatFlowModel::load(&cfg, vb, DType::F32).unwrap();
    let seeded = tiny_model(5);
    let coords = two_items();
    let x = SparseTensor::new(coords.clone(), randn(&[coords.len(), cfg.in_channels], 3)).unwrap();
    let t = Tensor::new(&[500f32, 10.0], &Device::Cpu).unwrap();
    let cond = randn(&[2, 3, cfg.cond_channels], 4);
    let geometry = seeded.geometry(&coords, &Device::Cpu).unwrap();
    let a = seeded.forward(&x, &t, &cond, &geometry).unwrap();
    let b = from_file.forward(&x, &t, &cond, &geometry).unwrap();
    assert_eq!(max_abs_diff(&a.feats, &b.feats), 0.0);
    assert_eq!(a.feats.dims(), &[coords.len(), cfg.out_channels]);
}

#[test]
fn image_large_has_the_official_tensor_shapes() {
    let recorder = RandomRecorder::new(1);
    SLatFlowModel::load(
        &SLatFlowConfig::image_large(),
        recorder.var_builder(),
        DType::F16,
    )
    .unwrap();
    let recipes = recorder.recipes();
    // t_embedder 4, input_layer 2, input_blocks 8 + 10, 24 blocks × 20, out_blocks 10 + 10, out_layer 2.
    assert_eq!(recipes.len(), 526);
    for (name, dims) in [
        ("input_layer.weight", vec![128, 8]),
        ("input_blocks.0.conv1.conv.weight", vec![128, 3, 3, 3, 128]),
        ("input_blocks.1.conv1.conv.weight", vec![1024, 3, 3, 3, 128]),
        ("input_blocks.1.skip_connection.weight", vec![1024, 128]),
        ("input_blocks.1.emb_layers.1.weight", vec![2048, 1024]),
        ("blocks.23.self_attn.to_qkv.weight", vec![3072, 1024]),
        ("blocks.23.self_attn.k_rms_norm.gamma", vec![16, 64]),
        ("blocks.0.cross_attn.to_kv.weight", vec![2048, 1024]),
        ("blocks.0.mlp.mlp.0.weight", vec![4096, 1024]),
        ("out_blocks.0.conv1.conv.weight", vec![128, 3, 3, 3, 2048]),
        ("out_blocks.0.skip_connection.weight", vec![128, 2048]),
        ("out_blocks.1.conv1.conv.weight", vec![128, 3, 3, 3, 256]),
        ("out_layer.weight", vec![8, 128]),
    ] {
        assert_eq!(recipes[name].dims(), dims.as_slice(), "{name}");
    }
    assert!(!recipes.contains_key("input_blocks.0.skip_connection.weight"));
    assert!(!recipes.contains_key("blocks.0.cross_attn.q_rms_norm.gamma"));
}

#[test]
fn config_parses_the_checkpoint_args_and_rejects_unsupported_ones() {
    let args = r#"{"resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
        "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 2,
        "num_io_res_blocks": 2, "io_block_channels": [128], "pe_mode": "ape", "qk_rms_norm": true,
        "use_fp16": true}"#;
    let cfg: SLatFlowConfig = serde_json::from_str(args).unwrap();
    assert_eq!(cfg, SLatFlowConfig::image_large());
    cfg.validate().unwrap();
    for bad in [
        SLatFlowConfig {
            pe_mode: "rope".into(),
            ..cfg.clone()
        },
        SLatFlowConfig {
            share_mod: true,
            ..cfg.clone()
        },
        SLatFlowConfig {
            patch_size: 4,
            ..cfg.clone()
        },
        SLatFlowConfig {
            num_heads: Some(5),
            ..cfg.clone()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn denormalize_scales_and_shifts_each_channel() {
    let x = SparseTensor::new(
        vec![[0, 0, 0, 0], [0, 1, 0, 0]],
        Tensor::new(&[[1f32, 2.0], [0.0, -4.0]], &Device::Cpu).unwrap(),
    )
    .unwrap();
    let got = denormalize_slat(&x, &[1.0, -2.0], &[3.0, 0.5]).unwrap();
    assert_eq!(
        got.feats.to_vec2::<f32>().unwrap(),
        vec![vec![4.0, -1.0], vec![1.0, -4.0]]
    );
    assert!(denormalize_slat(&x, &[1.0; 8], &[1.0; 8]).is_err());
}

#[test]
fn rejects_foreign_voxels_and_mismatched_batches() {
    let model = tiny_model(1);
    let coords = two_items();
    let geometry = model.geometry(&coords, &Device::Cpu).unwrap();
    let x = SparseTensor::new(coords.clone(), randn(&[coords.len(), 8], 1)).unwrap();
    let cond = randn(&[2, 3, 16], 2);
    assert!(model
        .forward(
            &x,
            &Tensor::new(&[1f32], &Device::Cpu).unwrap(),
            &cond,
            &geometry
        )
        .is_err());
    let other = model.geometry(&coords[..10], &Device::Cpu).unwrap();
    assert!(model
        .forward(
            &x,
            &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
            &cond,
            &other
        )
        .is_err());
    assert!(model.geometry(&[[0, 8, 0, 0]], &Device::Cpu).is_err());
}
