//! The structure decoder's 3-D convolution on the GPU (cuDNN's graph API, `ops::conv3d`)
//! against its CPU path (im2col on candle ops) on the same random tensors, at the decoder's
//! shapes, in f32 and f16: relative error (‖gpu − cpu‖₂ / ‖cpu‖₂; goal f32 ≤ 1e-3 with TF32,
//! f16 ≤ 2e-2) and the GPU time per call. Exit status 1 when a case is off.
//!
//! Usage: `conv3d_parity` (build with `--features cudnn`; `tools/gpu-suite.sh`, suite conv3d).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use splatforge_trellis::ss_decoder::Conv3d;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn relative_error(ours: &Tensor, reference: &Tensor) -> R<f64> {
    let ours = ours.to_dtype(DType::F64)?.to_device(&Device::Cpu)?;
    let reference = reference.to_dtype(DType::F64)?;
    let diff = (ours - &reference)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt();
    Ok(diff / reference.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
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
            gpu.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..10 {
                conv.forward(&xg)?;
            }
            gpu.synchronize()?;
            let ms = t0.elapsed().as_secs_f64() * 100.0;
            let err = relative_error(&y, &reference)?;
            let pass = err <= bound;
            ok &= pass;
            println!(
                "conv3d x [{b}, {cin}, {side}³] → {cout} {dtype:?}: relative error {err:.3e} (bound {bound:.0e}) {}, {ms:.3} ms per call",
                if pass { "PASS" } else { "FAIL" }
            );
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}
