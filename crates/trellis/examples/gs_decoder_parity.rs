//! GPU parity and speed of the Gaussian decoder against the official `SLatGaussianDecoder`
//! (issue 12), the Rust half; `crates/trellis/scripts/gs_decoder_parity.py` is the Python half.
//!
//! Usage:
//! - `gs_decoder_parity write DIR [--full]`: random weights with the official names
//!   (`DIR/decoder.safetensors`, f32; `--full`: TRELLIS-image-large's decoder, else the tiny
//!   test decoder), the checkpoint JSON (`DIR/decoder.json`, `{"name", "args"}`, as `ckpts/<name>.json`) and a latent
//!   (`DIR/latent.safetensors`: `coords` i64 `[N, 4]`, `feats` f32 `[N, 8]`; `--full`: a
//!   sphere shell in the 64³ grid, about 15k voxels, as stage 2 produces; else 300 random voxels
//!   in two batch items).
//! - `gs_decoder_parity run DIR [--dtype f32|f16|bf16] [--repeat N]`: loads those files (GPU 0
//!   when built with `--features cuda`), writes the network output
//!   (`DIR/ours_<dtype>.safetensors`, `feats` f32) and the first item's Gaussians as a PLY
//!   (`DIR/ours_<dtype>.ply`), and prints one JSON line of timings (median of `--repeat` runs,
//!   model load excluded): network, Gaussian conversion, PLY encoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use splatforge_nn::weights::RandomRecorder;
use splatforge_splat::io::write_atomic;
use splatforge_splat::ply::{write_ply, PlyWriteOptions};
use splatforge_splat::rng::SplitMix64;
use splatforge_trellis::config::write_checkpoint;
use splatforge_trellis::gs_decoder::{GaussianDecoder, GaussianDecoderConfig, CHECKPOINT_CLASS};
use splatforge_trellis::sparse::SparseTensor;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag_value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("write"), Some(dir)) => write(Path::new(dir), args.iter().any(|a| a == "--full")),
        (Some("run"), Some(dir)) => {
            let dtype = match flag_value("--dtype").as_deref().unwrap_or("f32") {
                "f32" => DType::F32,
                "f16" => DType::F16,
                "bf16" => DType::BF16,
                other => return Err(format!("--dtype {other}: want f32, f16 or bf16").into()),
            };
            let repeat = flag_value("--repeat").map_or(Ok(5), |v| v.parse::<usize>())?.max(1);
            run(Path::new(dir), dtype, repeat)
        }
        _ => Err("usage: gs_decoder_parity write DIR [--full] | run DIR [--dtype f32|f16|bf16] [--repeat N]".into()),
    }
}

/// Voxels of a sphere shell (radius 28, 1.5 voxels thick) in the 64³ grid, one batch item.
fn shell_voxels() -> Vec<[u32; 4]> {
    let mut coords = Vec::new();
    for x in 0..64u32 {
        for y in 0..64u32 {
            for z in 0..64u32 {
                let d = [x, y, z].map(|v| v as f64 + 0.5 - 32.0);
                let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                if (r - 28.0).abs() < 0.75 {
                    coords.push([0, x, y, z]);
                }
            }
        }
    }
    coords
}

/// `per_item` distinct random voxels of a `res`³ grid for each of two batch items.
fn random_voxels(rng: &mut SplitMix64, per_item: usize, res: u32) -> Vec<[u32; 4]> {
    let mut coords = Vec::new();
    for b in 0..2 {
        let mut seen = std::collections::HashSet::new();
        while seen.len() < per_item {
            let c = [0; 3].map(|_| rng.below(res as usize) as u32);
            if seen.insert(c) {
                coords.push([b, c[0], c[1], c[2]]);
            }
        }
    }
    coords
}

fn write(dir: &Path, full: bool) -> R<()> {
    std::fs::create_dir_all(dir)?;
    let config = if full {
        GaussianDecoderConfig::trellis_image_large()
    } else {
        GaussianDecoderConfig::tiny()
    };
    let recorder = RandomRecorder::new(12);
    GaussianDecoder::load(config.clone(), DType::F32, recorder.var_builder())?;
    let recipes = recorder.recipes();
    write_checkpoint(
        &dir.join("decoder"),
        CHECKPOINT_CLASS,
        &config,
        &recipes,
        DType::F32,
    )?;

    let mut rng = SplitMix64::new(34);
    let coords = if full {
        shell_voxels()
    } else {
        random_voxels(&mut rng, 150, config.resolution)
    };
    let rows = coords.len();
    let flat: Vec<i64> = coords.iter().flat_map(|c| c.map(i64::from)).collect();
    let feats: Vec<f32> = (0..rows * config.latent_channels)
        .map(|_| rng.normal() as f32)
        .collect();
    let tensors = HashMap::from([
        (
            "coords".to_string(),
            Tensor::from_vec(flat, (rows, 4), &Device::Cpu)?,
        ),
        (
            "feats".to_string(),
            Tensor::from_vec(feats, (rows, config.latent_channels), &Device::Cpu)?,
        ),
    ]);
    candle_core::safetensors::save(&tensors, dir.join("latent.safetensors"))?;
    println!(
        "{{\"written\":\"{}\",\"voxels\":{rows},\"full\":{full}}}",
        dir.display()
    );
    Ok(())
}

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn run(dir: &Path, dtype: DType, repeat: usize) -> R<()> {
    let device = Device::cuda_if_available(0)?;
    let decoder = GaussianDecoder::from_checkpoint(&dir.join("decoder"), dtype, &device)?;

    let latent = candle_core::safetensors::load(dir.join("latent.safetensors"), &Device::Cpu)?;
    let coords: Vec<[u32; 4]> = latent["coords"]
        .to_vec2::<i64>()?
        .into_iter()
        .map(|r| std::array::from_fn(|i| r[i] as u32))
        .collect();
    let latent = SparseTensor::new(coords, latent["feats"].to_device(&device)?)?;

    let mut network = Vec::new();
    let mut output = None;
    for _ in 0..repeat + 1 {
        device.synchronize()?;
        let start = Instant::now();
        let out = decoder.forward(&latent)?;
        device.synchronize()?;
        network.push(start.elapsed().as_secs_f64() * 1e3);
        output = Some(out);
    }
    network.remove(0); // warm-up
    let output = output.ok_or("no run")?;
    let start = Instant::now();
    let gaussians = decoder
        .representation()
        .to_gaussians(&output)?
        .into_iter()
        .next()
        .ok_or("no batch item")?;
    let convert_ms = start.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let ply = write_ply(&gaussians, PlyWriteOptions { normals: true })?;
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;

    let name = format!("ours_{}", format!("{dtype:?}").to_lowercase());
    let feats = output.feats.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    candle_core::safetensors::save(
        &HashMap::from([("feats".to_string(), feats)]),
        dir.join(format!("{name}.safetensors")),
    )?;
    let ply_path: PathBuf = dir.join(format!("{name}.ply"));
    write_atomic(&ply_path, &ply)?;
    println!(
        "{{\"dtype\":\"{dtype:?}\",\"device\":\"{device:?}\",\"voxels\":{},\"gaussians\":{},\"network_ms\":{:.3},\"to_gaussians_ms\":{convert_ms:.3},\"ply_encode_ms\":{encode_ms:.3},\"ply_bytes\":{}}}",
        latent.len(),
        gaussians.len(),
        median_ms(network),
        ply.len()
    );
    Ok(())
}
