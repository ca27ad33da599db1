//! TRELLIS' GPU-only op paths against their CPU paths on the same random tensors, at the
//! models' shapes: the structure decoder's 3-D convolution (cuDNN's graph API,
//! `ops::conv3d`; CPU: im2col on candle ops), the blocks' LayerNorm + adaLN modulation
//! (`ops::layer_norm_modulate`; CPU: candle-nn's `layer_norm` and broadcast ops), their QK
//! RMSNorm (`ops::multi_head_rms_norm`; CPU: candle-nn's `rms_norm`) and the decoder's
//! LayerNorm over channels + SiLU (`ops::channel_layer_norm`; CPU: permutes around the
//! composite). Prints the
//! relative error (‖gpu − cpu‖₂ / ‖cpu‖₂; bounds f32 1e-3 — run with NVIDIA_TF32_OVERRIDE=0
//! — half precision 2e-2) and the GPU time per call. Exit status 1 when a case is off.
//!
//! Usage: `ops_parity` (build with `--features cudnn`; `tools/gpu-suite.sh`, suite ops).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use splatforge_nn::ops;
use splatforge_nn::test_util::relative_error;
use splatforge_trellis::ss_decoder::Conv3d;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The mean GPU time of `calls` calls of `f`, in ms (after the one the caller made).
fn ms_per_call(gpu: &Device, calls: usize, f: impl Fn() -> R<Tensor>) -> R<f64> {
    gpu.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..calls {
        f()?;
    }
    gpu.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() * 1e3 / calls as f64)
}

fn main() -> R<()> {
    let gpu = Device::new_cuda(0)?;
    // (batch, in, out, side): the decoder's input layer, a 512-wide block at 16³, a
    // 128-wide block at 32³ and a 32-wide block at 64³.
    let cases = [
        (1, 8, 512, 16),
        (1, 512, 512, 16),
        (1, 128, 128, 32),
        (1, 32, 32, 64),
    ];
    let mut ok = true;
    for (i, &(b, cin, cout, side)) in cases.iter().enumerate() {
        let x = splatforge_nn::rng::randn(
            10 + i as u64,
            &[b, cin, side, side, side],
            DType::F32,
            &Device::Cpu,
        )?;
        let bound = ((cin * 27) as f64).powf(-0.5);
        let w = (splatforge_nn::rng::randn(
            20 + i as u64,
            &[cout, cin, 3, 3, 3],
            DType::F32,
            &Device::Cpu,
        )? * bound)?;
        let bias =
            (splatforge_nn::rng::randn(30 + i as u64, &[cout], DType::F32, &Device::Cpu)? * bound)?;
        let load = |dtype: DType, device: &Device| -> R<Conv3d> {
            let tensors = [
                ("weight".to_string(), w.clone()),
                ("bias".to_string(), bias.clone()),
            ];
            let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), dtype, device);
            Ok(Conv3d::load(cin, cout, 3, vb)?)
        };
        let reference = load(DType::F32, &Device::Cpu)?.forward(&x)?;
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::F16, 2e-2)] {
            let conv = load(dtype, &gpu)?;
            let xg = x.to_device(&gpu)?.to_dtype(dtype)?;
            let y = conv.forward(&xg)?;
            let ms = ms_per_call(&gpu, 10, || Ok(conv.forward(&xg)?))?;
            let err = relative_error(&y, &reference)?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "conv3d x [{b}, {cin}, {side}³] → {cout} {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {ms:.3} ms per call",
                if pass { "PASS" } else { "FAIL" }
            );
        }
    }
    // (x dims, modulation rows): the stage-1 blocks (2 items × 4,096 tokens, one term row
    // per item), stage 2's resblocks (one term row per voxel), the plain norm.
    let norm_cases: [(&[usize], Option<&[usize]>); 3] = [
        (&[2, 4096, 1024], Some(&[2, 1, 1024])),
        (&[15000, 1024], Some(&[15000, 1024])),
        (&[2, 4096, 1024], None),
    ];
    for (i, (dims, terms)) in norm_cases.into_iter().enumerate() {
        let c = *dims.last().unwrap_or(&1);
        let cpu = Device::Cpu;
        let x =
            splatforge_nn::rng::randn(40 + i as u64, dims, DType::F32, &cpu)?.affine(3.0, 0.5)?;
        let weight =
            splatforge_nn::rng::randn(50 + i as u64, &[c], DType::F32, &cpu)?.affine(0.2, 1.0)?;
        let bias = (splatforge_nn::rng::randn(60 + i as u64, &[c], DType::F32, &cpu)? * 0.2)?;
        let modulation = match terms {
            Some(t) => Some((
                (splatforge_nn::rng::randn(70 + i as u64, t, DType::F32, &cpu)? * 0.5)?,
                (splatforge_nn::rng::randn(80 + i as u64, t, DType::F32, &cpu)? * 0.5)?,
            )),
            None => None,
        };
        let reference = ops::layer_norm_modulate(
            &x,
            &weight,
            &bias,
            1e-6,
            modulation.as_ref().map(|(a, b)| (a, b)),
        )?;
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::F16, 2e-2), (DType::BF16, 2e-2)] {
            let on_gpu = |t: &Tensor| t.to_device(&gpu)?.to_dtype(dtype);
            let xg = on_gpu(&x)?;
            let (wg, bg) = (weight.to_device(&gpu)?, bias.to_device(&gpu)?);
            let mg = match &modulation {
                Some((sh, sc)) => Some((on_gpu(sh)?, on_gpu(sc)?)),
                None => None,
            };
            let run =
                || ops::layer_norm_modulate(&xg, &wg, &bg, 1e-6, mg.as_ref().map(|(a, b)| (a, b)));
            let y = run()?;
            let ms = ms_per_call(&gpu, 20, || Ok(run()?))?;
            let err = relative_error(&y, &reference)?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "layer_norm_modulate x {dims:?} terms {terms:?} {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {ms:.3} ms per call",
                if pass { "PASS" } else { "FAIL" }
            );
        }
    }
    // The structure decoder's LayerNorm over channels + SiLU at its three widths.
    for (i, (c, side)) in [(512usize, 16usize), (128, 32), (32, 64)]
        .into_iter()
        .enumerate()
    {
        let cpu = Device::Cpu;
        let x =
            splatforge_nn::rng::randn(110 + i as u64, &[1, c, side, side, side], DType::F32, &cpu)?
                .affine(2.0, 0.5)?;
        let weight =
            splatforge_nn::rng::randn(120 + i as u64, &[c], DType::F32, &cpu)?.affine(0.2, 1.0)?;
        let bias = (splatforge_nn::rng::randn(130 + i as u64, &[c], DType::F32, &cpu)? * 0.2)?;
        let reference = ops::channel_layer_norm(&x, &weight, &bias, 1e-5, true)?;
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::F16, 2e-2), (DType::BF16, 2e-2)] {
            let xg = x.to_device(&gpu)?.to_dtype(dtype)?;
            let (wg, bg) = (weight.to_device(&gpu)?, bias.to_device(&gpu)?);
            let y = ops::channel_layer_norm(&xg, &wg, &bg, 1e-5, true)?;
            let ms = ms_per_call(&gpu, 20, || {
                Ok(ops::channel_layer_norm(&xg, &wg, &bg, 1e-5, true)?)
            })?;
            let err = relative_error(&y, &reference)?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "channel_layer_norm + SiLU x [1, {c}, {side}³] {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {ms:.3} ms per call",
                if pass { "PASS" } else { "FAIL" }
            );
        }
    }
    // The QK RMSNorm of both flows: stage 2's guided batch (2 × 17,000 tokens) and stage 1's
    // (2 × 4,096), 16 heads of 64.
    for (i, rows) in [34_000usize, 8_192].into_iter().enumerate() {
        let cpu = Device::Cpu;
        let (heads, d) = (16, 64);
        let x = splatforge_nn::rng::randn(90 + i as u64, &[rows, heads * d], DType::F32, &cpu)?
            .affine(2.0, 0.3)?;
        let gamma = splatforge_nn::rng::randn(95 + i as u64, &[heads, d], DType::F32, &cpu)?
            .affine(0.3, 1.0)?;
        let eps = 1e-24 / d as f32;
        let reference = ops::multi_head_rms_norm(&x, &gamma, eps)?;
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::F16, 2e-2), (DType::BF16, 2e-2)] {
            let xg = x.to_device(&gpu)?.to_dtype(dtype)?;
            let gg = gamma.to_device(&gpu)?;
            let y = ops::multi_head_rms_norm(&xg, &gg, eps)?;
            let ms = ms_per_call(&gpu, 20, || Ok(ops::multi_head_rms_norm(&xg, &gg, eps)?))?;
            let err = relative_error(&y, &reference)?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "multi_head_rms_norm x [{rows}, {heads}×{d}] {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {ms:.3} ms per call",
                if pass { "PASS" } else { "FAIL" }
            );
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
