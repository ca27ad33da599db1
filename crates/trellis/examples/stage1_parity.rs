//! Stage-1 parity dump: writes a random-weight TRELLIS stage-1 folder (published layout,
//! f32 weights), runs each stage-1 part on fixed inputs and saves inputs and outputs to
//! `OUT/stage1_io.safetensors` for `crates/trellis/scripts/parity_stage1.py`, which runs the
//! official modules on the same weights and inputs. Prints each part's wall time.
//!
//! ```text
//! cargo run --release -p splatforge-trellis [--features cuda] --example stage1_parity -- \
//!     OUT [--size tiny|full] [--dtype f32|f16|bf16] [--image RGBA.png] [--seed N] [--steps N]
//! ```

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use splatforge_trellis::preprocess::{decode_image, dinov2_pixels, preprocess};
use splatforge_trellis::sampler::{FlowModel, SamplerParams};
use splatforge_trellis::ss_decoder::occupied_coords;
use splatforge_trellis::stage1::{write_random_stage1, ModelSize, Stage1};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Args {
    out: PathBuf,
    size: ModelSize,
    dtype: DType,
    image: Option<PathBuf>,
    seed: u64,
    steps: Option<usize>,
}

fn parse() -> R<Args> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: stage1_parity OUT [--size tiny|full] [--dtype f32|f16|bf16] [--image RGBA.png] [--seed N] [--steps N]";
    let mut args = Args {
        out: PathBuf::from(it.next().ok_or(usage)?),
        size: ModelSize::Tiny,
        dtype: DType::F32,
        image: None,
        seed: 42,
        steps: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(usage)?;
        match flag.as_str() {
            "--size" => {
                args.size = if value == "full" {
                    ModelSize::Full
                } else {
                    ModelSize::Tiny
                }
            }
            "--dtype" => args.dtype = value.parse::<splatforge_nn::Precision>()?.dtype(),
            "--image" => args.image = Some(PathBuf::from(value)),
            "--seed" => args.seed = value.parse()?,
            "--steps" => args.steps = Some(value.parse()?),
            _ => return Err(usage.into()),
        }
    }
    Ok(args)
}

/// A synthetic RGBA picture: an opaque disc on transparency.
fn disc() -> image::RgbaImage {
    image::RgbaImage::from_fn(300, 240, |x, y| {
        let (dx, dy) = (x as f32 - 140.0, y as f32 - 120.0);
        if dx * dx + dy * dy < 90.0 * 90.0 {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 180, 255])
        } else {
            image::Rgba([0, 0, 0, 0])
        }
    })
}

fn timed<T>(what: &str, device: &Device, f: impl FnOnce() -> R<T>) -> R<T> {
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    println!("{what:<22} {:>9.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(out)
}

fn main() -> R<()> {
    let args = parse()?;
    let device = splatforge_nn::best_device(0);
    let model_dir = args.out.join("model");
    let dinov2_path = write_random_stage1(&model_dir, args.size, DType::F32, args.seed)?;
    let stage1 = Stage1::load(&model_dir, &dinov2_path, args.dtype, &device)?;
    let mut io: HashMap<String, Tensor> = HashMap::new();

    let rgba = match &args.image {
        Some(p) => decode_image(&std::fs::read(p)?)?,
        None => disc(),
    };
    rgba.save(args.out.join("input.png"))?;
    let rgb = timed("preprocess", &device, || Ok(preprocess(&rgba)?))?;
    io.insert(
        "preprocess.rgb".into(),
        Tensor::from_vec(
            rgb.as_raw().iter().map(|v| *v as f32).collect::<Vec<_>>(),
            (518, 518, 3),
            &Device::Cpu,
        )?,
    );

    let pixels = dinov2_pixels(&rgb, &device)?;
    let cond = timed("dinov2", &device, || Ok(stage1.dinov2().encode(&pixels)?))?;
    io.insert("dinov2.pixels".into(), pixels.clone());
    io.insert("dinov2.cond".into(), cond.clone());

    let flow_cfg = stage1.flow().config().clone();
    let r = flow_cfg.resolution;
    let x = splatforge_nn::rng::randn(
        args.seed + 1,
        &[2, flow_cfg.in_channels, r, r, r],
        DType::F32,
        &device,
    )?;
    let t = Tensor::new(&[1000f32, 400.0], &device)?;
    let cond2 = Tensor::cat(&[&cond, &cond.zeros_like()?], 0)?;
    let v = timed("flow forward (B=2)", &device, || {
        Ok(stage1.flow().forward(&x, &t, &cond2)?)
    })?;
    for (k, t) in [
        ("flow.x", x.clone()),
        ("flow.t", t),
        ("flow.cond", cond2),
        ("flow.v", v),
    ] {
        io.insert(k.into(), t);
    }

    let defaults = stage1.pipeline().args.sparse_structure_sampler.params;
    let params = SamplerParams {
        steps: args.steps.unwrap_or(defaults.steps),
        ..defaults
    };
    let noise = splatforge_nn::rng::randn(
        args.seed,
        &[1, flow_cfg.in_channels, r, r, r],
        DType::F32,
        &device,
    )?;
    let neg = cond.zeros_like()?;
    let sampler = stage1.pipeline().args.sparse_structure_sampler.args;
    let latent = timed(
        &format!("sampling ({} steps)", params.steps),
        &device,
        || {
            Ok(
                sampler.sample(stage1.flow(), &noise, &cond, &neg, &params, |_, _| {
                    ControlFlow::Continue(())
                })?,
            )
        },
    )?;
    io.insert("sampler.noise".into(), noise);
    io.insert("sampler.latent".into(), latent.clone());

    let logits = timed("decoder", &device, || {
        Ok(stage1.decoder().forward(&latent)?)
    })?;
    let coords = occupied_coords(&logits)?;
    io.insert("decoder.logits".into(), logits);
    let flat: Vec<f32> = coords.iter().flat_map(|c| c.map(|v| v as f32)).collect();
    io.insert(
        "coords".into(),
        Tensor::from_vec(flat, (coords.len(), 4), &Device::Cpu)?,
    );
    println!("{} occupied voxels", coords.len());

    // One model call at the first step's time, to time a single guided pass.
    timed("guided pass (B=2)", &device, || {
        Ok(stage1
            .flow()
            .guided_velocities(&x.narrow(0, 0, 1)?, 1000.0, &cond, &neg)
            .map(|_| ())?)
    })?;

    let io: HashMap<String, Tensor> = io
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)))
        .collect::<R<_>>()?;
    candle_core::safetensors::save(&io, args.out.join("stage1_io.safetensors"))?;
    let meta = serde_json::json!({
        "size": format!("{:?}", args.size), "dtype": format!("{:?}", args.dtype), "seed": args.seed,
        "sampler": {"steps": params.steps, "cfg_strength": params.cfg_strength, "cfg_interval": [params.cfg_interval.0, params.cfg_interval.1], "rescale_t": params.rescale_t, "sigma_min": sampler.sigma_min},
    });
    std::fs::write(
        args.out.join("stage1_io.json"),
        serde_json::to_string_pretty(&meta)?,
    )?;
    println!("wrote {}", args.out.join("stage1_io.safetensors").display());
    Ok(())
}
