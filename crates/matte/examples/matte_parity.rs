//! BiRefNet parity dump for `crates/matte/scripts/birefnet_parity.py`.
//!
//! `write` makes a random-weight checkpoint under the published names (`DIR/model.safetensors`,
//! f32) and a test picture (`DIR/input.png`); `run` loads the checkpoint like any published
//! one, mattes the picture in the given dtype on the best device and saves the network input,
//! the logits and the matte (`DIR/ours_<fp32|bf16|fp16>.safetensors`: `input [1, 3, S, S]`,
//! `logits [1, 1, S, S]`, `alpha [H, W]`, all f32), `--weights` loads another file or `hf:` spec instead (output
//! `ours_<precision>_<T>.safetensors`); with `--time`, also the wall time of a second run (which must give the same matte).
//!
//! ```text
//! cargo run --release -p splatforge-matte [--features cuda] --example matte_parity -- \
//!     write DIR [--model tiny|swin-l|swin-t] [--seed N]
//! cargo run --release -p splatforge-matte [--features cuda] --example matte_parity -- \
//!     run DIR [--dtype f32|bf16|f16] [--size S] [--time 1] [--weights SPEC --tag T]
//! cargo run --release -p splatforge-matte --features cuda --example matte_parity -- ops DIR
//! ```
//!
//! `ops` checks the GPU path of `ops::deform_conv2d` against its CPU path at the decoder's
//! shapes (64 channels in, 256 out, kernels 1, 3 and 7, sides 32 to 256, offsets of a few
//! pixels, modulators in (0, 2)): relative error (‖gpu − cpu‖₂ / ‖cpu‖₂; bounds f32 1e-3 — run
//! with NVIDIA_TF32_OVERRIDE=0 — bf16 2e-2) and the GPU time per call (median of 10). It
//! saves each case's inputs and GPU outputs as `DIR/deform_k<K>_s<S>.safetensors` for
//! `crates/matte/scripts/deform_parity.py` (torchvision's `deform_conv2d` on the same tensors).
//! Exit status 1 when a case is off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Tensor};
use image::RgbImage;
use splatforge_matte::preprocess::{alpha_from_logits, network_input};
use splatforge_matte::random::write_random_birefnet;
use splatforge_matte::{BiRefNetConfig, Matte};
use splatforge_nn::test_util::{median_ms, relative_error};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: matte_parity write DIR [--model tiny|swin-l|swin-t] [--seed N]\n       matte_parity run DIR [--dtype f32|bf16|f16] [--size S] [--time 1] [--weights SPEC --tag T]\n       matte_parity ops DIR";

/// A 640×480 picture: a shaded disc and a bar on a gradient background (not square, so that
/// the resizes on the way in and out both matter).
fn picture() -> RgbImage {
    RgbImage::from_fn(640, 480, |x, y| {
        let (dx, dy) = (x as f32 - 300.0, y as f32 - 250.0);
        let disc = dx * dx + dy * dy < 150.0 * 150.0;
        let bar = (450..520).contains(&x) && (60..420).contains(&y);
        if disc {
            image::Rgb([200, (100.0 + dx * 0.3) as u8, (60.0 + dy * 0.3) as u8])
        } else if bar {
            image::Rgb([30, 90, 200])
        } else {
            image::Rgb([(230 - y / 8) as u8, (230 - x / 16) as u8, 225])
        }
    })
}

fn flags(rest: &[String]) -> R<HashMap<String, String>> {
    if rest.len() % 2 != 0 {
        return Err(USAGE.into());
    }
    Ok(rest
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect())
}

fn write(dir: &Path, flags: &HashMap<String, String>) -> R<()> {
    let config = match flags.get("--model").map(String::as_str).unwrap_or("tiny") {
        "tiny" => BiRefNetConfig::tiny(),
        "swin-l" => BiRefNetConfig::birefnet(),
        "swin-t" => BiRefNetConfig::birefnet_lite(),
        other => return Err(format!("unknown model {other}\n{USAGE}").into()),
    };
    let seed: u64 = flags
        .get("--seed")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(7);
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let n = write_random_birefnet(&config, seed, DType::F32, &dir.join("model.safetensors"))?;
    picture().save(dir.join("input.png"))?;
    println!(
        "wrote {n} tensors ({:?} backbone, input {}²) to {} in {:.1} s",
        config.backbone,
        config.size,
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(dir: &Path, flags: &HashMap<String, String>) -> R<()> {
    let precision: splatforge_nn::Precision = flags
        .get("--dtype")
        .map(String::as_str)
        .unwrap_or("f32")
        .parse()?;
    let dtype = precision.dtype();
    let size: usize = flags
        .get("--size")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1024);
    let device = splatforge_nn::best_device(0);
    let t = Instant::now();
    let default_weights = dir.join("model.safetensors");
    let weights = match flags.get("--weights") {
        Some(w) => w.clone(),
        None => default_weights.to_str().ok_or("path")?.to_string(),
    };
    let matte = Matte::load_sized(&weights, size, dtype, &device)?;
    println!("loaded in {:.2} s on {device:?}", t.elapsed().as_secs_f64());
    let img = image::open(dir.join("input.png"))?.to_rgb8();
    let input = network_input(&img, size, dtype, &device)?;
    let logits = matte.model().forward(&input)?;
    let alpha = alpha_from_logits(&logits, img.width(), img.height())?;
    if flags.contains_key("--time") {
        device.synchronize()?;
        let t = Instant::now();
        let again = matte.alpha(&img)?;
        device.synchronize()?;
        println!(
            "second run (preprocess + network + matte): {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        if again != alpha {
            return Err("two runs differ".into());
        }
    }
    let cpu = candle_core::Device::Cpu;
    let tensors: HashMap<String, Tensor> = HashMap::from([
        (
            "input".to_string(),
            input.to_dtype(DType::F32)?.to_device(&cpu)?,
        ),
        (
            "logits".to_string(),
            logits.to_dtype(DType::F32)?.to_device(&cpu)?,
        ),
        (
            "alpha".to_string(),
            Tensor::from_vec(alpha, (img.height() as usize, img.width() as usize), &cpu)?,
        ),
    ]);
    let out = match flags.get("--tag") {
        Some(tag) => dir.join(format!("ours_{precision}_{tag}.safetensors")),
        None => dir.join(format!("ours_{precision}.safetensors")),
    };
    candle_core::safetensors::save(&tensors, &out)?;
    println!("saved {}", out.display());
    Ok(())
}

fn ops(dir: &Path) -> R<()> {
    use splatforge_nn::ops::deform_conv2d;
    use splatforge_nn::rng::randn;
    let cpu = candle_core::Device::Cpu;
    let gpu = candle_core::Device::new_cuda(0)?;
    std::fs::create_dir_all(dir)?;
    let (c, o) = (64, 256);
    let mut ok = true;
    for (i, (k, side)) in [1, 3, 7]
        .into_iter()
        .flat_map(|k| [32, 64, 128, 256].map(|s| (k, s)))
        .enumerate()
    {
        let seed = 100 + 10 * i as u64;
        let taps = k * k;
        let x = randn(seed, &[1, c, side, side], DType::F32, &cpu)?;
        let offset = (randn(seed + 1, &[1, 2 * taps, side, side], DType::F32, &cpu)? * 2.0)?;
        // As the model makes them: 2·sigmoid of a convolution.
        let mask = (candle_nn::ops::sigmoid(&randn(
            seed + 2,
            &[1, taps, side, side],
            DType::F32,
            &cpu,
        )?)? * 2.0)?;
        let weight =
            (randn(seed + 3, &[o, c, k, k], DType::F32, &cpu)? * ((c * taps) as f64).powf(-0.5))?;
        let pad = k / 2;
        let reference = deform_conv2d(&x, &offset, &mask, &weight, None, 1, pad)?;
        let mut saved = HashMap::from([
            ("x".to_string(), x.clone()),
            ("offset".to_string(), offset.clone()),
            ("mask".to_string(), mask.clone()),
            ("weight".to_string(), weight.clone()),
            ("ours_cpu".to_string(), reference.clone()),
        ]);
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::BF16, 2e-2)] {
            let on_gpu = |t: &Tensor| t.to_dtype(dtype)?.to_device(&gpu);
            let (xg, og, mg, wg) = (
                on_gpu(&x)?,
                on_gpu(&offset)?,
                on_gpu(&mask)?,
                on_gpu(&weight)?,
            );
            let y = deform_conv2d(&xg, &og, &mg, &wg, None, 1, pad)?;
            let err = relative_error(&y, &reference)?;
            let ms = median_ms(&gpu, || {
                deform_conv2d(&xg, &og, &mg, &wg, None, 1, pad).map(|_| ())
            })?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "deform_conv2d x [1, {c}, {side}, {side}] k {k} → {o} {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {:.3} ms per call",
                if pass { "PASS" } else { "FAIL" },
                ms
            );
            saved.insert(
                format!("ours_{}", dtype.as_str()),
                y.to_dtype(DType::F32)?.to_device(&cpu)?,
            );
        }
        candle_core::safetensors::save(
            &saved,
            dir.join(format!("deform_k{k}_s{side}.safetensors")),
        )?;
    }
    if ok {
        Ok(())
    } else {
        Err("a deform_conv2d case is off".into())
    }
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err(USAGE.into());
    }
    let dir = PathBuf::from(&args[1]);
    let flags = flags(&args[2..])?;
    match args[0].as_str() {
        "write" => write(&dir, &flags),
        "run" => run(&dir, &flags),
        "ops" => ops(&dir),
        _ => Err(USAGE.into()),
    }
}
