//! GPU parity and speed against diffusers (issue 5, item 8 and "Speed"):
//! `tools/diffusion_parity.py` writes full-size random weights made with
//! diffusers (SD 2.1 UNet, AutoencoderKL, a reduced-depth full-width FLUX
//! transformer), fixed inputs and diffusers' outputs into DIR; this program
//! loads the same files through this crate's loading code, reports the
//! relative error of each model, and times the benchmark cases.
//!
//! Usage: `parity DIR [OUT.json]` (build with `--features cuda`; runs on the CPU
//! too, slowly). Relative error = ‖ours − ref‖₂ / ‖ref‖₂ (also max |Δ| / max |ref|).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModel;
use splatforge_diffusion::flux::transformer::FluxTransformer;
use splatforge_diffusion::flux::{flux_transformer_from_file, FluxTransformerConfig};
use splatforge_diffusion::mvdream::ldm::diffusers_unet_names;
use splatforge_diffusion::mvdream::MultiViewUNet;
use splatforge_diffusion::sd::SdUNetConfig;
use splatforge_diffusion::vae::{TilingOptions, Vae, VaeConfig};
use splatforge_nn::weights::{MappedBackend, NameMap, Source, TensorFile};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;
type OpFn<'a> = Box<dyn Fn() -> R<Tensor> + 'a>;

/// Random weights made on the device (speed runs of the full FLUX).
struct RandBackend;

impl SimpleBackend for RandBackend {
    fn get(
        &self,
        s: Shape,
        _: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("RandBackend: no shape for {name}")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> R<T> {
    Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?)
}

fn file(p: &Path) -> R<Arc<TensorFile>> {
    Ok(Arc::new(TensorFile::open(p)?))
}

fn identity(f: Arc<TensorFile>, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    let map: NameMap = Arc::new(|n: &str| Some(Source::Key(n.to_string())));
    MappedBackend::new(f, map, "model").into_var_builder(dtype, dev)
}

/// (‖a − b‖₂ / ‖b‖₂, max |a − b| / max |b|), in f64 on the CPU.
fn rel(a: &Tensor, b: &Tensor) -> R<(f64, f64)> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?;
    let d = (&a - &b)?;
    let l2 = d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt()
        / b.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
    let mx = d.abs()?.max(0)?.to_scalar::<f64>()? / b.abs()?.max(0)?.to_scalar::<f64>()?;
    Ok((l2, mx))
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn parity(&mut self, what: &str, dtype: &str, r: (f64, f64), bound: f64) {
        let ok = r.0 <= bound;
        let line = format!(
            "{{\"kind\":\"parity\",\"model\":\"{what}\",\"dtype\":\"{dtype}\",\"rel_l2\":{:.3e},\"rel_max\":{:.3e},\"bound\":{bound:e},\"pass\":{ok}}}",
            r.0, r.1
        );
        println!("{line}");
        self.lines.push(line);
    }
    fn time(&mut self, what: &str, ms: f64, extra: &str) {
        let line = format!("{{\"kind\":\"time\",\"case\":\"{what}\",\"ms\":{ms:.3}{extra}}}");
        println!("{line}");
        self.lines.push(line);
    }
    /// `y` against the f32 reference, and against diffusers' own bf16 output
    /// when one is given (the bf16 runs).
    fn parity_with_refs(
        &mut self,
        what: &str,
        dtype: &str,
        y: &Tensor,
        f32_ref: &Tensor,
        bf16_ref: Option<Tensor>,
        bound: f64,
    ) -> R<()> {
        self.parity(what, dtype, rel(y, f32_ref)?, bound);
        if let Some(rb) = bf16_ref {
            self.parity(
                &format!("{what} vs diffusers bf16"),
                dtype,
                rel(y, &rb)?,
                bound,
            );
        }
        Ok(())
    }
    fn text(&mut self, what: &str, v: &str) {
        let line = format!(
            "{{\"kind\":\"text\",\"name\":\"{what}\",\"value\":{}}}",
            serde_json::to_string(v).unwrap_or_default()
        );
        println!("{line}");
        self.lines.push(line);
    }
    fn note(&mut self, what: &str, v: f64) {
        let line = format!("{{\"kind\":\"value\",\"name\":\"{what}\",\"value\":{v:.6e}}}");
        println!("{line}");
        self.lines.push(line);
    }
}

/// Median milliseconds of `iters` runs after `warm` warm-ups.
fn bench(dev: &Device, warm: usize, iters: usize, mut f: impl FnMut() -> R<Tensor>) -> R<f64> {
    for _ in 0..warm {
        f()?;
    }
    dev.synchronize()?;
    let mut v = vec![];
    for _ in 0..iters {
        let t = Instant::now();
        let out = f()?;
        drop(out);
        dev.synchronize()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(v[v.len() / 2])
}

/// Writes a CPU dry-run folder from the tiny models (random "references").
fn make_dry(dir: &Path) -> R<()> {
    use splatforge_nn::rng::randn;
    let tmp = dir.join("tiny");
    let m = splatforge_diffusion::make_tiny(&tmp, &Default::default())?;
    let cp = |from: &Path, to: &Path| -> R<()> {
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(from, to)?;
        Ok(())
    };
    for sub in ["unet", "vae"] {
        cp(
            &m.sd_dir.join(sub).join("config.json"),
            &dir.join(sub).join("config.json"),
        )?;
        cp(
            &m.sd_dir
                .join(sub)
                .join("diffusion_pytorch_model.safetensors"),
            &dir.join(sub).join("diffusion_pytorch_model.safetensors"),
        )?;
    }
    cp(
        &m.flux_dir.join("transformer/config.json"),
        &dir.join("flux_small/config.json"),
    )?;
    cp(
        &m.flux_bfl_checkpoint,
        &dir.join("flux_small/diffusion_pytorch_model.safetensors"),
    )?;
    cp(
        &m.flux_dir.join("transformer/config.json"),
        &dir.join("flux_full_config.json"),
    )?;
    let c = Device::Cpu;
    let f = DType::F32;
    let mut io: HashMap<String, Tensor> = HashMap::new();
    io.insert("unet_x".into(), randn(1, &[2, 4, 8, 8], f, &c)?);
    io.insert("unet_ctx".into(), randn(2, &[2, 7, 32], f, &c)?);
    io.insert("unet_t".into(), Tensor::new(&[500f32, 500.0], &c)?);
    io.insert("unet_ref_f32".into(), randn(3, &[2, 4, 8, 8], f, &c)?);
    io.insert("vae_z".into(), randn(4, &[1, 4, 4, 4], f, &c)?);
    io.insert("vae_img".into(), randn(5, &[1, 3, 32, 32], f, &c)?);
    io.insert("vae_dec_ref_f32".into(), randn(6, &[1, 3, 32, 32], f, &c)?);
    io.insert("vae_enc_ref_f32".into(), randn(7, &[1, 4, 4, 4], f, &c)?);
    io.insert("flux_img".into(), randn(8, &[1, 16, 64], f, &c)?);
    io.insert("flux_img_ids".into(), Tensor::zeros((16, 3), f, &c)?);
    io.insert("flux_txt".into(), randn(9, &[1, 8, 32], f, &c)?);
    io.insert("flux_txt_ids".into(), Tensor::zeros((8, 3), f, &c)?);
    io.insert("flux_pooled".into(), randn(10, &[1, 32], f, &c)?);
    io.insert("flux_t".into(), Tensor::new(&[0.75f32], &c)?);
    io.insert("flux_small_ref_f32".into(), randn(11, &[1, 16, 64], f, &c)?);
    candle_core::safetensors::save(&io, dir.join("io.safetensors"))?;
    println!("{}", dir.display());
    Ok(())
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--make-dry") {
        return make_dry(Path::new(
            args.get(2).ok_or("usage: parity --make-dry DIR")?,
        ));
    }
    let dir = PathBuf::from(args.get(1).ok_or("usage: parity DIR [OUT.json]")?);
    // PARITY_QUICK=1 divides the benchmark sizes by 8 (CPU dry runs).
    let q: usize = if std::env::var("PARITY_QUICK").is_ok() {
        8
    } else {
        1
    };
    let out_path = args.get(2).map(PathBuf::from);
    let only: Option<String> = std::env::var("PARITY_ONLY").ok();
    let want = |k: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == k));
    let dev = splatforge_nn::best_device(0);
    eprintln!("device: {dev:?}");
    // The loaders do this; the benchmarks below build models directly.
    splatforge_nn::configure_device(&dev)?;
    let io: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("io.safetensors"), &dev)?;
    let g = |k: &str| -> R<Tensor> {
        Ok(io
            .get(k)
            .ok_or(format!("io.safetensors has no {k}"))?
            .clone())
    };
    let mut rep = Report { lines: vec![] };
    // candle's CPU matmul has no bf16: a CPU dry run uses f32 in its place.
    let bf = if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };

    if want("unet") {
        // ---- SD 2.1 UNet: candle-transformers' UNet2DConditionModel, and MVDream's UNet with one view ----
        let ucfg: SdUNetConfig = read_json(&dir.join("unet/config.json"))?;
        let uf = file(&dir.join("unet/diffusion_pytorch_model.safetensors"))?;
        let (x, ctx) = (g("unet_x")?, g("unet_ctx")?);
        let t = g("unet_t")?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0] as f64;
        let b = x.dim(0)?;
        let mv_cfg = ucfg.to_multiview()?;
        let map = diffusers_unet_names(&mv_cfg);
        for (dt, name, bound) in [(DType::F32, "f32", 1e-3), (bf, "bf16", 2e-2)] {
            let reference = g("unet_ref_f32")?;
            let unet = UNet2DConditionModel::new(
                identity(uf.clone(), dt, &dev),
                ucfg.in_channels,
                ucfg.out_channels,
                false,
                ucfg.to_candle()?,
            )?;
            let y = unet.forward(&x.to_dtype(dt)?, t, &ctx.to_dtype(dt)?)?;
            let bf16_ref = || {
                if dt == bf {
                    g("unet_ref_bf16").ok()
                } else {
                    None
                }
            };
            rep.parity_with_refs(
                "sd21_unet (candle-transformers)",
                name,
                &y,
                &reference,
                bf16_ref(),
                bound,
            )?;
            let mv = MultiViewUNet::new(
                MappedBackend::new(uf.clone(), map.clone(), "unet").into_var_builder(dt, &dev),
                &mv_cfg,
            )?;
            let tt = Tensor::full(t as f32, b, &dev)?;
            let y = mv.forward(&x.to_dtype(dt)?, &tt, &ctx.to_dtype(dt)?, None, 1)?;
            rep.parity_with_refs(
                "mvdream_unet (1 view, no camera)",
                name,
                &y,
                &reference,
                bf16_ref(),
                bound,
            )?;
            if dt == bf {
                // Speed: batch 8 (4 views × CFG) at 32×32 latents.
                let x8 =
                    Tensor::randn(0f32, 1., (8, ucfg.in_channels, 32, 32), &dev)?.to_dtype(bf)?;
                let c8 = Tensor::randn(0f32, 1., (8, 77, ucfg.cross_attention_dim), &dev)?
                    .to_dtype(bf)?;
                let t8 = Tensor::full(500f32, 8, &dev)?;
                let ms = bench(&dev, 10, 30, || Ok(unet.forward(&x8, 500.0, &c8)?))?;
                rep.time(
                    "unet_step_b8_32x32 sd21 (candle-transformers)",
                    ms,
                    ",\"dtype\":\"bf16\"",
                );
                let ms = bench(&dev, 10, 30, || Ok(mv.forward(&x8, &t8, &c8, None, 4)?))?;
                rep.time(
                    "unet_step_b8_32x32 mvdream (4 views)",
                    ms,
                    ",\"dtype\":\"bf16\"",
                );
                let ms = bench(&dev, 10, 30, || Ok(mv.forward(&x8, &t8, &c8, None, 1)?))?;
                rep.time(
                    "unet_step_b8_32x32 mvdream (1 view)",
                    ms,
                    ",\"dtype\":\"bf16\"",
                );
            }
        }
    }

    if want("vae") {
        // ---- AutoencoderKL ----
        let vcfg: VaeConfig = read_json(&dir.join("vae/config.json"))?;
        let vf = file(&dir.join("vae/diffusion_pytorch_model.safetensors"))?;
        let z = g("vae_z")?;
        let img = g("vae_img")?;
        for (dt, name, bound) in [(DType::F32, "f32", 1e-3), (bf, "bf16", 2e-2)] {
            let vae =
                Vae::new(identity(vf.clone(), dt, &dev), &vcfg)?.with_tiling(TilingOptions::off());
            let bf16_ref = |key: &str| if dt == bf { g(key).ok() } else { None };
            let y = vae.decode_raw(&z)?;
            rep.parity_with_refs(
                "vae_decode",
                name,
                &y,
                &g("vae_dec_ref_f32")?,
                bf16_ref("vae_dec_ref_bf16"),
                bound,
            )?;
            let m = vae.encode_raw(&img)?;
            rep.parity_with_refs(
                "vae_encode_mean",
                name,
                &m,
                &g("vae_enc_ref_f32")?,
                bf16_ref("vae_enc_ref_bf16"),
                bound,
            )?;
            // The SDS path's encoder: forward and backward to the images,
            // 4 × 256² (f32 here; bf16 and f16 below).
            let sds_encode = |vae: &Vae, dt: DType| -> R<f64> {
                let imgs = Tensor::rand(0f32, 1., (4, 3, 256, 256), &dev)?;
                bench(&dev, 2, 5, || {
                    let x = candle_core::Var::from_tensor(&imgs.to_dtype(dt)?)?;
                    let grads = vae.encode(x.as_tensor())?.sqr()?.sum_all()?.backward()?;
                    Ok(grads.get(x.as_tensor()).ok_or("no gradient")?.clone())
                })
            };
            rep.time(
                &format!("sds_encode_fwd_bwd_4x256 {name}"),
                sds_encode(&vae, dt)?,
                "",
            );
            if dt == bf {
                let vae16 = Vae::new(identity(vf.clone(), DType::F16, &dev), &vcfg)?
                    .with_tiling(TilingOptions::off());
                match sds_encode(&vae16, DType::F16) {
                    Ok(ms) => rep.time("sds_encode_fwd_bwd_4x256 f16", ms, ""),
                    Err(e) => eprintln!("sds_encode_fwd_bwd_4x256 f16 failed: {e}"),
                }
                let lc = vcfg.latent_channels;
                let z4 = Tensor::randn(0f32, 1., (4, lc, 32, 32), &dev)?;
                let ms = bench(&dev, 2, 10, || Ok(vae.decode_raw(&z4)?))?;
                rep.time("vae_decode_4x256", ms, ",\"dtype\":\"bf16\"");
                // Tiled vs untiled at 1024² (512-px tiles, 64-px overlap), in [0, 1] image units.
                let zl = (Tensor::randn(0f32, 1., (1, lc, 128 / q, 128 / q), &dev)? * 5.0)?;
                let full = vae.with_tiling(TilingOptions::off());
                let a = full.decode(&zl)?;
                let tiled = full.with_tiling(TilingOptions {
                    enabled: true,
                    tile_px: 512 / q,
                    overlap_px: 64 / q,
                });
                let bt = tiled.decode(&zl)?;
                let d = (&a - &bt)?.abs()?.flatten_all()?.to_dtype(DType::F32)?;
                let tag = format!(
                    "vae_tiled_vs_untiled_{}_tile{}_ov{}",
                    1024 / q,
                    512 / q,
                    64 / q
                );
                rep.note(
                    &format!("{tag}_max_abs"),
                    d.max(0)?.to_scalar::<f32>()? as f64,
                );
                rep.note(
                    &format!("{tag}_mean_abs"),
                    d.mean_all()?.to_scalar::<f32>()? as f64,
                );
                let vae = tiled.with_tiling(TilingOptions {
                    enabled: true,
                    tile_px: 1024 / q,
                    overlap_px: 128 / q,
                });
                let z2k = Tensor::randn(0f32, 1., (1, lc, 256 / q, 256 / q), &dev)?;
                let ms_only = bench(&dev, 1, 3, || Ok(vae.decode(&z2k)?))?;
                rep.time(
                    &format!("vae_decode_{}_tiled", 2048 / q),
                    ms_only,
                    &format!(
                        ",\"dtype\":\"bf16\",\"tile\":{},\"overlap\":{}",
                        1024 / q,
                        128 / q
                    ),
                );
            }
        }
    }

    if want("flux") {
        // ---- FLUX transformer, reduced depth at full width (parity) ----
        let fcfg: FluxTransformerConfig = read_json(&dir.join("flux_small/config.json"))?;
        let ff = file(&dir.join("flux_small/diffusion_pytorch_model.safetensors"))?;
        let img = g("flux_img")?;
        let img_ids = g("flux_img_ids")?.unsqueeze(0)?;
        let txt = g("flux_txt")?;
        let txt_ids = g("flux_txt_ids")?.unsqueeze(0)?;
        let pooled = g("flux_pooled")?;
        let ft = g("flux_t")?;
        for (dt, name, bound) in [(DType::F32, "f32", 1e-3), (bf, "bf16", 2e-2)] {
            let m = flux_transformer_from_file(ff.clone(), &fcfg.to_candle()?, dt, &dev)?;
            let c = |t: &Tensor| t.to_dtype(dt);
            let y = m.forward(
                &c(&img)?,
                &c(&img_ids)?,
                &c(&txt)?,
                &c(&txt_ids)?,
                &c(&ft)?,
                &c(&pooled)?,
                None,
            )?;
            let reference = g("flux_small_ref_f32")?;
            let label = format!(
                "flux_transformer ({} double + {} single blocks, full width)",
                fcfg.num_layers, fcfg.num_single_layers
            );
            let bf16_ref = if dt == bf {
                g("flux_small_ref_bf16").ok()
            } else {
                None
            };
            rep.parity_with_refs(&label, name, &y, &reference, bf16_ref, bound)?;
        }
    }

    if want("fluxspeed") {
        // ---- FLUX.1-schnell full size, random weights on the device (speed) ----
        let full: FluxTransformerConfig = read_json(&dir.join("flux_full_config.json"))?;
        let t0 = Instant::now();
        let m = FluxTransformer::new(
            &full.to_candle()?,
            VarBuilder::from_backend(Box::new(RandBackend), bf, dev.clone()),
        )?;
        dev.synchronize()?;
        eprintln!("random FLUX ready in {:.1} s", t0.elapsed().as_secs_f64());
        for side in [512 / q, 1024 / q] {
            let n = (side / 16) * (side / 16);
            let img = Tensor::randn(0f32, 1., (1, n, full.in_channels), &dev)?.to_dtype(bf)?;
            let ids: Vec<f32> = (0..n)
                .flat_map(|i| [0.0, (i / (side / 16)) as f32, (i % (side / 16)) as f32])
                .collect();
            let img_ids = Tensor::from_vec(ids, (1, n, 3), &dev)?.to_dtype(bf)?;
            let txt =
                Tensor::randn(0f32, 1., (1, 256, full.joint_attention_dim), &dev)?.to_dtype(bf)?;
            let txt_ids = Tensor::zeros((1, 256, 3), bf, &dev)?;
            let pooled =
                Tensor::randn(0f32, 1., (1, full.pooled_projection_dim), &dev)?.to_dtype(bf)?;
            let t = Tensor::full(0.75f32, 1, &dev)?.to_dtype(bf)?;
            let ms = bench(&dev, 2, 5, || {
                Ok(m.forward(&img, &img_ids, &txt, &txt_ids, &t, &pooled, None)?)
            })?;
            rep.time(&format!("flux_step_{side}"), ms, ",\"dtype\":\"bf16\"");
        }
    }

    if want("ops") && !dev.is_cpu() {
        fused_ops(&dev, &mut rep)?;
    }
    for plan in splatforge_nn::ops::cudnn_plan_summary() {
        rep.text("cudnn_plan", &plan);
    }

    if let Some(p) = out_path {
        std::fs::write(p, rep.lines.join("\n") + "\n")?;
    }
    Ok(())
}

/// The fused kernels of `splatforge_nn::ops` against the composite
/// path run on the CPU in f32 from the same (rounded) inputs, then single
/// operations timed at the sizes that dominate the benchmarks (bf16): candle's
/// own op next to ours.
fn fused_ops(dev: &Device, rep: &mut Report) -> R<()> {
    use candle_core::Module;
    use splatforge_nn::ops::{
        attention, attention_reference, attention_with, AttentionKernel, GroupNorm,
    };
    let cpu = Device::Cpu;
    let r = |s: &[usize], dt: DType| -> R<Tensor> {
        Ok(Tensor::randn(0f32, 1., s, dev)?.to_dtype(dt)?)
    };
    let f32_cpu = |t: &Tensor| -> R<Tensor> { Ok(t.to_device(&cpu)?.to_dtype(DType::F32)?) };

    // (batch, queries, keys, heads, head dim, dtype)
    let attn_cases = [
        (
            2,
            4096,
            4096,
            5,
            64,
            DType::BF16,
            "mvdream self 32²×4 views",
        ),
        (8, 1024, 77, 5, 64, DType::BF16, "cross to text"),
        (1, 1000, 130, 3, 64, DType::BF16, "ragged tails"),
        (1, 1100, 1100, 4, 128, DType::BF16, "d128 ragged"),
        (2, 300, 77, 2, 64, DType::F16, "f16"),
        (1, 4608, 4608, 24, 128, DType::BF16, "flux 1024²"),
    ];
    for (b, nq, nk, h, d, dt, label) in attn_cases {
        let q = r(&[b, nq, h * d], dt)?;
        let k = r(&[b, nk, h * d], dt)?;
        let v = r(&[b, nk, h * d], dt)?;
        let want = attention_reference(&f32_cpu(&q)?, &f32_cpu(&k)?, &f32_cpu(&v)?, h)?;
        // Both GPU implementations, each against the same reference.
        for (kernel, name) in [
            (AttentionKernel::Fused(0), "fused"),
            (AttentionKernel::Cudnn, "cudnn"),
        ] {
            let what = format!("op attention {label} [{b},{nq},{nk},{h}x{d}] {name}");
            // A shape cuDNN refuses is a failed row with the reason, and the
            // other rows still run.
            let err = match attention_with(&q, &k, &v, h, kernel) {
                Ok(ours) => rel(&ours, &want)?,
                Err(e) => {
                    rep.text(&what, &e.to_string());
                    (f64::NAN, f64::NAN) // "NaN" parses in Python's json; fails the bound
                }
            };
            rep.parity(&what, &format!("{dt:?}"), err, 1e-2);
        }
        // Every block shape of the kernel (cuda/api.h `variant`) computes the
        // same values; the ragged case exercises their tails.
        if label.contains("ragged") {
            for variant in ATTENTION_VARIANTS {
                let ours = attention_with(&q, &k, &v, h, AttentionKernel::Fused(variant))?;
                rep.parity(
                    &format!("op attention {label} variant {variant}"),
                    &format!("{dt:?}"),
                    rel(&ours, &want)?,
                    1e-2,
                );
            }
        }
    }
    let gn_cases: [(&[usize], usize, DType, bool); 5] = [
        (&[4, 128, 256, 256], 32, DType::BF16, true),
        (&[8, 320, 32, 32], 32, DType::F16, true),
        (&[2, 64, 7, 5], 32, DType::F32, false),
        (&[1, 128, 512, 512], 32, DType::BF16, false),
        (&[3, 96, 9, 9], 32, DType::BF16, true),
    ];
    for (shape, groups, dt, silu) in gn_cases {
        let c = shape[1];
        let x = (r(shape, dt)? * 3.0)?.affine(1.0, 5.0)?; // a large mean, as after residual adds
        let (w, b) = (r(&[c], dt)?, r(&[c], dt)?);
        let gn = GroupNorm::new(w.clone(), b.clone(), groups, 1e-6)?;
        let ours = if silu {
            gn.forward_silu(&x)?
        } else {
            gn.forward(&x)?
        };
        let cpu_gn = GroupNorm::new(f32_cpu(&w)?, f32_cpu(&b)?, groups, 1e-6)?;
        let want = if silu {
            cpu_gn.forward_silu(&f32_cpu(&x)?)?
        } else {
            cpu_gn.forward(&f32_cpu(&x)?)?
        };
        let bound = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        rep.parity(
            &format!(
                "op group_norm{} {shape:?}/{groups}",
                if silu { "+silu" } else { "" }
            ),
            &format!("{dt:?}"),
            rel(&ours, &want)?,
            bound,
        );
    }

    for (shape, dt) in [
        (&[2usize, 3, 5, 7][..], DType::BF16),
        (&[4, 128, 64, 64][..], DType::F32),
        (&[1, 4, 9, 8][..], DType::F16),
    ] {
        let x = r(shape, dt)?;
        let ours = splatforge_nn::ops::upsample_nearest2x(&x)?;
        let want = f32_cpu(&x)?.upsample_nearest2d(2 * shape[2], 2 * shape[3])?;
        rep.parity(
            &format!("op upsample_nearest2x {shape:?}"),
            &format!("{dt:?}"),
            rel(&ours, &want)?,
            0.0,
        );
    }
    {
        use splatforge_nn::ops::{linear, LinearEpilogue};
        // (batch, tokens, in, out, dtype): FLUX-like widths, a ragged one, f32.
        for (b, n, k, o, dt) in [
            (1usize, 300usize, 256usize, 384usize, DType::BF16),
            (2, 77, 96, 40, DType::F16),
            (2, 33, 64, 48, DType::F32),
        ] {
            let x = r(&[b, n, k], dt)?;
            let (w, bias) = (r(&[o, k], dt)?, r(&[o], dt)?);
            let (extra, gate, res) = (r(&[b, n, o], dt)?, r(&[b, 1, o], dt)?, r(&[b, n, o], dt)?);
            let layer = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
            let cpu_layer = candle_nn::Linear::new(f32_cpu(&w)?, Some(f32_cpu(&bias)?));
            let (ce, cg, cr) = (f32_cpu(&extra)?, f32_cpu(&gate)?, f32_cpu(&res)?);
            let cases: [(&str, LinearEpilogue, LinearEpilogue); 3] = [
                ("bias", LinearEpilogue::default(), LinearEpilogue::default()),
                (
                    "bias+gelu",
                    LinearEpilogue {
                        gelu: true,
                        ..Default::default()
                    },
                    LinearEpilogue {
                        gelu: true,
                        ..Default::default()
                    },
                ),
                (
                    "extra+gate+residual",
                    LinearEpilogue {
                        extra: Some(&extra),
                        gate: Some(&gate),
                        residual: Some(&res),
                        ..Default::default()
                    },
                    LinearEpilogue {
                        extra: Some(&ce),
                        gate: Some(&cg),
                        residual: Some(&cr),
                        ..Default::default()
                    },
                ),
            ];
            for (label, gpu, cpu) in cases {
                let ours = linear(&x, &layer, gpu)?;
                let want = linear(&f32_cpu(&x)?, &cpu_layer, cpu)?;
                let bound = if dt == DType::F32 { 1e-5 } else { 1e-2 };
                rep.parity(
                    &format!("op linear+{label} [{b},{n},{k}]→{o}"),
                    &format!("{dt:?}"),
                    rel(&ours, &want)?,
                    bound,
                );
            }
        }
    }
    for (b, n, h, d, dt) in [
        (1usize, 300usize, 24usize, 128usize, DType::BF16),
        (2, 37, 3, 64, DType::F32),
        (1, 5, 2, 256, DType::F16),
    ] {
        let x = r(&[b, n, h, d], dt)?;
        let scale = r(&[d], dt)?;
        let angles = Tensor::rand(0f32, 100., (b, n, d / 2), dev)?;
        let (cos, sin) = (angles.cos()?.to_dtype(dt)?, angles.sin()?.to_dtype(dt)?);
        // With the projection's bias in the half-precision cases, without in f32.
        let bias = if dt == DType::F32 {
            None
        } else {
            Some(r(&[h * d], dt)?)
        };
        let cpu_bias = bias.as_ref().map(f32_cpu).transpose()?;
        let ours = splatforge_nn::ops::rms_norm_rope(&x, bias.as_ref(), &scale, &cos, &sin, 1e-6)?;
        let want = splatforge_nn::ops::rms_norm_rope(
            &f32_cpu(&x)?,
            cpu_bias.as_ref(),
            &f32_cpu(&scale)?,
            &f32_cpu(&cos)?,
            &f32_cpu(&sin)?,
            1e-6,
        )?;
        let bound = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        let label = if bias.is_some() { " +bias" } else { "" };
        rep.parity(
            &format!("op rms_norm_rope{label} [{b},{n},{h},{d}]"),
            &format!("{dt:?}"),
            rel(&ours, &want)?,
            bound,
        );
    }
    // Backward passes (the SDS path differentiates the VAE encoder): the
    // gradient of Σ y·m (m random) with respect to x, GPU kernel vs the CPU
    // composite path in f32.
    let grad_of =
        |x: &Tensor, m: &Tensor, f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| -> R<Tensor> {
            let v = candle_core::Var::from_tensor(x)?;
            let y = f(v.as_tensor())?;
            let g = (y.to_dtype(DType::F32)? * m.to_dtype(DType::F32)?.to_device(y.device())?)?
                .sum_all()?
                .backward()?;
            Ok(g.get(v.as_tensor()).ok_or("no gradient")?.clone())
        };
    for (shape, groups, dt, silu) in [
        (&[4usize, 128, 64, 64][..], 32usize, DType::BF16, true),
        (&[2, 64, 7, 5][..], 32, DType::F32, false),
        (&[2, 96, 9, 9][..], 32, DType::F32, true),
    ] {
        let c = shape[1];
        let x = r(shape, dt)?;
        let m = r(shape, DType::F32)?;
        let (w, b) = (r(&[c], dt)?, r(&[c], dt)?);
        let gn = GroupNorm::new(w.clone(), b.clone(), groups, 1e-6)?;
        let cpu_gn = GroupNorm::new(f32_cpu(&w)?, f32_cpu(&b)?, groups, 1e-6)?;
        let ours = grad_of(&x, &m, &|t| {
            if silu {
                gn.forward_silu(t)
            } else {
                gn.forward(t)
            }
        })?;
        let want = grad_of(&f32_cpu(&x)?, &f32_cpu(&m)?, &|t| {
            if silu {
                cpu_gn.forward_silu(t)
            } else {
                cpu_gn.forward(t)
            }
        })?;
        let bound = if dt == DType::F32 { 1e-4 } else { 2e-2 };
        rep.parity(
            &format!(
                "op group_norm{} backward {shape:?}/{groups}",
                if silu { "+silu" } else { "" }
            ),
            &format!("{dt:?}"),
            rel(&ours, &want)?,
            bound,
        );
    }
    #[cfg(feature = "cudnn")]
    for (shape, k, pad, stride, dt) in [
        (
            &[2usize, 64, 32, 32][..],
            64usize,
            1usize,
            1usize,
            DType::BF16,
        ),
        (&[2, 32, 17, 17][..], 48, 0, 2, DType::F32),
        (&[4, 3, 64, 64][..], 128, 1, 1, DType::F32),
    ] {
        let x = r(shape, dt)?;
        let wt = r(&[k, shape[1], 3, 3], dt)?;
        let bias = r(&[k], dt)?;
        let cfg = candle_nn::Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        let ours_conv = splatforge_nn::ops::Conv2d::new(candle_nn::Conv2d::new(
            wt.clone(),
            Some(bias.clone()),
            cfg,
        ));
        let cpu_conv = candle_nn::Conv2d::new(f32_cpu(&wt)?, Some(f32_cpu(&bias)?), cfg);
        let y_ours = ours_conv.forward(&x)?;
        let y_cpu = candle_core::Module::forward(&cpu_conv, &f32_cpu(&x)?)?;
        rep.parity(
            &format!("op conv2d (cuDNN) {shape:?}→{k} pad {pad} stride {stride}"),
            &format!("{dt:?}"),
            rel(&y_ours, &y_cpu)?,
            if dt == DType::F32 { 1e-5 } else { 1e-2 },
        );
        let m = r(y_ours.dims(), DType::F32)?;
        let ours = grad_of(&x, &m, &|t| ours_conv.forward(t))?;
        let want = grad_of(&f32_cpu(&x)?, &f32_cpu(&m)?, &|t| {
            candle_core::Module::forward(&cpu_conv, t)
        })?;
        rep.parity(
            &format!("op conv2d (cuDNN) backward {shape:?}→{k} pad {pad} stride {stride}"),
            &format!("{dt:?}"),
            rel(&ours, &want)?,
            if dt == DType::F32 { 1e-5 } else { 2e-2 },
        );
    }

    let bf = DType::BF16;
    let x = r(&[4, 128, 256, 256], bf)?;
    let w = r(&[128, 128, 3, 3], bf)?;
    let x5 = r(&[4, 512, 64, 64], bf)?;
    let w5 = r(&[512, 512, 3, 3], bf)?;
    let x3 = r(&[8, 320, 32, 32], bf)?;
    let w3 = r(&[320, 320, 3, 3], bf)?;
    let (g, be) = (r(&[128], bf)?, r(&[128], bf)?);
    let gn_nn = candle_nn::GroupNorm::new(g.clone(), be.clone(), 128, 32, 1e-6)?;
    let gn = GroupNorm::new(g, be, 32, 1e-6)?;
    let xu = r(&[4, 128, 128, 128], bf)?;
    let va = [
        r(&[1, 16384, 512], bf)?,
        r(&[1, 16384, 512], bf)?,
        r(&[1, 16384, 512], bf)?,
    ];
    let fl = [
        r(&[1, 4352, 24 * 128], bf)?,
        r(&[1, 4352, 24 * 128], bf)?,
        r(&[1, 4352, 24 * 128], bf)?,
    ];
    let mv = [
        r(&[2, 4096, 320], bf)?,
        r(&[2, 4096, 320], bf)?,
        r(&[2, 4096, 320], bf)?,
    ];
    let (a, b) = (r(&[4352, 3072], bf)?, r(&[3072, 12288], bf)?);
    let conv = |w: &Tensor| -> R<splatforge_nn::ops::Conv2d> {
        let cfg = candle_nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bias = r(&[w.dim(0)?], bf)?;
        Ok(splatforge_nn::ops::Conv2d::new(candle_nn::Conv2d::new(
            w.clone(),
            Some(bias),
            cfg,
        )))
    };
    let (cv, cv5, cv3) = (conv(&w)?, conv(&w5)?, conv(&w3)?);
    let (xl, wl, bl) = (
        r(&[8, 1024, 320], bf)?,
        r(&[1280, 320], bf)?,
        r(&[1280], bf)?,
    );
    let lin = candle_nn::Linear::new(wl.clone(), Some(bl.clone()));
    let ops: Vec<(&str, OpFn)> = vec![
        (
            "op_conv3x3_4x128x256",
            Box::new(|| Ok(x.conv2d(&w, 1, 1, 1, 1)?)),
        ),
        (
            "op_conv3x3_4x512x64",
            Box::new(|| Ok(x5.conv2d(&w5, 1, 1, 1, 1)?)),
        ),
        (
            "op_conv3x3_8x320x32",
            Box::new(|| Ok(x3.conv2d(&w3, 1, 1, 1, 1)?)),
        ),
        (
            "op_group_norm_4x128x256 (candle-nn)",
            Box::new(|| Ok(gn_nn.forward(&x)?)),
        ),
        (
            "op_group_norm_4x128x256+silu (candle-nn)",
            Box::new(|| Ok(gn_nn.forward(&x)?.silu()?)),
        ),
        (
            "op_group_norm_4x128x256 (fused)",
            Box::new(|| Ok(gn.forward(&x)?)),
        ),
        (
            "op_group_norm_4x128x256+silu (fused)",
            Box::new(|| Ok(gn.forward_silu(&x)?)),
        ),
        ("op_silu_4x128x256", Box::new(|| Ok(x.silu()?))),
        (
            "op_upsample2x_4x128x128",
            Box::new(|| Ok(xu.upsample_nearest2d(256, 256)?)),
        ),
        (
            "op_upsample2x_4x128x128 (ops)",
            Box::new(|| Ok(splatforge_nn::ops::upsample_nearest2x(&xu)?)),
        ),
        (
            "op_attention_vae_1x16384x512 (composite)",
            Box::new(|| Ok(attention(&va[0], &va[1], &va[2], 1)?)),
        ),
        (
            "op_attention_24x4352x128 (materialised)",
            Box::new(|| Ok(attention_reference(&fl[0], &fl[1], &fl[2], 24)?)),
        ),
        (
            "op_attention_mvdream_2x4096x5x64 (materialised)",
            Box::new(|| Ok(attention_reference(&mv[0], &mv[1], &mv[2], 5)?)),
        ),
        ("op_matmul_4352x3072x12288", Box::new(|| Ok(a.matmul(&b)?))),
        (
            "op_conv3x3_4x128x256 (ops::Conv2d)",
            Box::new(|| Ok(cv.forward(&x)?)),
        ),
        (
            "op_conv3x3_4x512x64 (ops::Conv2d)",
            Box::new(|| Ok(cv5.forward(&x5)?)),
        ),
        (
            "op_conv3x3_8x320x32 (ops::Conv2d)",
            Box::new(|| Ok(cv3.forward(&x3)?)),
        ),
        (
            "op_linear_8x1024x320x1280 (candle-nn, batched)",
            Box::new(|| Ok(lin.forward(&xl)?)),
        ),
        (
            "op_linear_8x1024x320x1280 (ops::linear)",
            Box::new(|| Ok(splatforge_nn::ops::linear(&xl, &lin, Default::default())?)),
        ),
        (
            "op_linear_8x1024x320x1280 (flattened)",
            Box::new(|| {
                Ok(xl
                    .reshape((8192, 320))?
                    .matmul(&wl.t()?)?
                    .broadcast_add(&bl)?)
            }),
        ),
    ];
    for (name, f) in ops {
        let ms = bench(dev, 3, 10, &f)?;
        rep.time(name, ms, ",\"dtype\":\"bf16\"");
    }
    // Both GPU attentions at the shapes of the models (tools/diffusion_parity.py
    // times torch's SDPA at the same names).
    for (name, b, nq, nk, h, d) in ATTENTION_SHAPES {
        let q = r(&[b, nq, h * d], bf)?;
        let (k, v) = (r(&[b, nk, h * d], bf)?, r(&[b, nk, h * d], bf)?);
        for (kernel, label) in [
            (AttentionKernel::Fused(0), "fused"),
            (AttentionKernel::Cudnn, "cudnn"),
        ] {
            match bench(dev, 3, 10, || Ok(attention_with(&q, &k, &v, h, kernel)?)) {
                Ok(ms) => rep.time(&format!("{name} ({label})"), ms, ",\"dtype\":\"bf16\""),
                Err(e) => rep.text(&format!("{name} ({label})"), &e.to_string()),
            }
        }
    }
    for line in splatforge_nn::ops::cudnn_plan_summary() {
        rep.text("cudnn plan", &line);
    }
    // The block shapes against each other (the default is tuned from these).
    for variant in ATTENTION_VARIANTS {
        let flux = bench(dev, 3, 10, || {
            Ok(attention_with(
                &fl[0],
                &fl[1],
                &fl[2],
                24,
                AttentionKernel::Fused(variant),
            )?)
        })?;
        rep.time(
            &format!("op_attention_24x4352x128 (fused, variant {variant})"),
            flux,
            ",\"dtype\":\"bf16\"",
        );
        let mvd = bench(dev, 3, 10, || {
            Ok(attention_with(
                &mv[0],
                &mv[1],
                &mv[2],
                5,
                AttentionKernel::Fused(variant),
            )?)
        })?;
        rep.time(
            &format!("op_attention_mvdream_2x4096x5x64 (fused, variant {variant})"),
            mvd,
            ",\"dtype\":\"bf16\"",
        );
    }
    Ok(())
}

/// The attention kernel's forced block shapes (`variant` in cuda/api.h).
const ATTENTION_VARIANTS: [u32; 4] = [1, 2, 3, 4];

/// Attention timings: (name, batch, queries, keys, heads, head dim). FLUX at
/// 1024² (4096 image + 256 text tokens), MVDream's 4-view self-attention at
/// 32² with CFG, TRELLIS' stage-1 self- and cross-attention (16³ tokens, the
/// 1374 DINOv2 tokens) and stage-2 self-attention at a real object's ~5k
/// coarse tokens and the scattered random structure's ~17k, DINOv2 itself.
/// Keep in step with `ATTENTION_SHAPES` in tools/diffusion_parity.py.
const ATTENTION_SHAPES: [(&str, usize, usize, usize, usize, usize); 7] = [
    ("op_attention_24x4352x128", 1, 4352, 4352, 24, 128),
    ("op_attention_mvdream_2x4096x5x64", 2, 4096, 4096, 5, 64),
    (
        "op_attention_trellis_ss_2x4096x16x64",
        2,
        4096,
        4096,
        16,
        64,
    ),
    (
        "op_attention_trellis_cross_2x4096x1374x16x64",
        2,
        4096,
        1374,
        16,
        64,
    ),
    (
        "op_attention_trellis_slat_2x5000x16x64",
        2,
        5000,
        5000,
        16,
        64,
    ),
    (
        "op_attention_trellis_slat_2x17000x16x64",
        2,
        17000,
        17000,
        16,
        64,
    ),
    ("op_attention_dinov2_1x1374x16x64", 1, 1374, 1374, 16, 64),
];
