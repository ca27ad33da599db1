//! GPU parity and speed of the stage-2 flow against the official TRELLIS code (issue 12):
//! `crates/trellis/scripts/slat_flow_parity.py` writes, into DIR, random weights by the
//! official names (`slat_flow.safetensors`), the official outputs of two cases
//! (`io.safetensors`: two batch items on the same voxels, two on different voxels) and
//! `reference.json` (model args, backends, official timings). This program loads the same
//! files, runs the same cases in f32 and in a half dtype, prints the relative errors
//! (‖ours − ref‖₂ / ‖ref‖₂) and its forward time, and writes them to `DIR/ours.json`.
//!
//! Usage: `slat_flow_parity DIR [bf16|f16]` (build with `--features cuda`; runs on the CPU
//! too, slowly). The half run is compared with the official fp16 torso.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use splatforge_nn::test_util::relative_error;
use splatforge_trellis::slat_flow::{SLatFlowConfig, SLatFlowModel};
use splatforge_trellis::sparse::SparseTensor;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn coords_of(t: &Tensor) -> R<Vec<[u32; 4]>> {
    t.to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .map(|row| match row.as_slice() {
            &[b, x, y, z] => Ok([b, x, y, z].map(|v| v as u32)),
            _ => Err("coordinates must be [N, 4]".into()),
        })
        .collect()
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .ok_or("usage: slat_flow_parity DIR [bf16|f16]")?,
    );
    let half = match args.get(2).map(String::as_str) {
        None | Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(other) => return Err(format!("unknown dtype {other}").into()),
    };
    let device = Device::cuda_if_available(0)?;
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let config: SLatFlowConfig = serde_json::from_value(reference["args"].clone())?;
    let weights = [dir.join("slat_flow.safetensors")];
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &device)?;
    let get = |name: &str| {
        io.get(name)
            .cloned()
            .ok_or_else(|| format!("io.safetensors has no {name}"))
    };

    let mut report = serde_json::Map::new();
    for (dtype, reference_output) in [(DType::F32, "out_f32"), (half, "out_f16")] {
        // SAFETY: the file is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &device)? };
        let model = SLatFlowModel::load(&config, vb, dtype)?;
        for case in ["equal", "varlen"] {
            let coords = coords_of(&get(&format!("{case}.coords"))?)?;
            let x = SparseTensor::new(coords.clone(), get(&format!("{case}.x"))?)?;
            let (t, cond) = (get(&format!("{case}.t"))?, get(&format!("{case}.cond"))?);
            let geometry = model.geometry(&coords, &device)?;
            let out = model.forward(&x, &t, &cond, &geometry)?;
            let err = relative_error(&out.feats, &get(&format!("{case}.{reference_output}"))?)?;
            println!(
                "{case} {dtype:?}: {} voxels, relative error {err:.3e}",
                coords.len()
            );
            report.insert(format!("{case}.{dtype:?}.relative_error"), err.into());
            if case == "equal" && dtype == half {
                for _ in 0..3 {
                    model.forward(&x, &t, &cond, &geometry)?;
                }
                device.synchronize()?;
                let start = Instant::now();
                for _ in 0..10 {
                    model.forward(&x, &t, &cond, &geometry)?;
                }
                device.synchronize()?;
                let ms = start.elapsed().as_secs_f64() * 100.0;
                let geometry_start = Instant::now();
                model.geometry(&coords, &device)?;
                let geometry_ms = geometry_start.elapsed().as_secs_f64() * 1e3;
                println!("{case} {dtype:?}: forward {ms:.2} ms (official fp16: {} ms), geometry once per run {geometry_ms:.2} ms", reference["official_f16_forward_ms"]);
                report.insert("forward_ms".into(), ms.into());
                report.insert("geometry_ms".into(), geometry_ms.into());
            }
        }
    }
    std::fs::write(
        dir.join("ours.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
