//! The VAE encoder's gradient, tiled encode/decode and SDS on the tiny models.

use std::path::Path;

use candle_core::Var;
use candle_nn::VarBuilder;
use splatforge_diffusion::sds::{sds_timesteps, SdsTimestep};
use splatforge_diffusion::*;
use splatforge_nn::rng::randn;
use splatforge_nn::weights::SeededInit;

fn tiny_vae(dtype: DType) -> Vae {
    let cfg = random_models::tiny_config().vae;
    let init = SeededInit::new(21);
    let vb = VarBuilder::from_backend(Box::new(init), dtype, Device::Cpu);
    Vae::new(vb, &cfg).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn uniform01(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    // Φ-ish squashing of normals into (0, 1).
    let n = randn(seed, shape, DType::F64, &Device::Cpu).unwrap();
    ((n.tanh().unwrap() * 0.45).unwrap() + 0.5)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// d(Σ w·E(x))/dx by backward against central differences, in f64, at a few pixels.
fn check_encoder_gradient(vae: &Vae, shape: &[usize], pixels: &[[usize; 4]]) -> f64 {
    let x0 = uniform01(1, shape, DType::F64);
    let x = Var::from_tensor(&x0).unwrap();
    let lat = vae.encode(x.as_tensor()).unwrap();
    assert_eq!(lat.dtype(), DType::F64);
    let w = randn(2, lat.dims(), DType::F64, &Device::Cpu).unwrap();
    let objective = |t: &Tensor| scalar(&(vae.encode(t).unwrap() * &w).unwrap().sum_all().unwrap());
    let loss = (&lat * &w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(x.as_tensor())
        .expect("gradient reaches the image");
    assert_eq!(g.dims(), shape);
    let gv = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let flat = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let idx = |p: &[usize; 4]| ((p[0] * shape[1] + p[1]) * shape[2] + p[2]) * shape[3] + p[3];
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for p in pixels {
        let i = idx(p);
        let mut plus = flat.clone();
        plus[i] += h;
        let mut minus = flat.clone();
        minus[i] -= h;
        let tp = Tensor::from_vec(plus, shape, &Device::Cpu).unwrap();
        let tm = Tensor::from_vec(minus, shape, &Device::Cpu).unwrap();
        let fd = (objective(&tp) - objective(&tm)) / (2.0 * h);
        let rel = (fd - gv[i]).abs() / fd.abs().max(gv[i].abs()).max(1e-3);
        assert!(
            rel < 1e-5,
            "pixel {p:?}: backward {} vs FD {fd} (rel {rel:e})",
            gv[i]
        );
        worst = worst.max(rel);
    }
    worst
}

#[test]
fn encoder_gradient_matches_finite_differences_f64() {
    let vae = tiny_vae(DType::F64);
    let worst = check_encoder_gradient(
        &vae,
        &[2, 3, 16, 16],
        &[
            [0, 0, 0, 0],
            [0, 1, 7, 9],
            [1, 2, 15, 15],
            [1, 0, 3, 12],
            [0, 2, 10, 1],
        ],
    );
    eprintln!("untiled encoder: worst relative error {worst:e}");
}

#[test]
fn tiled_encoder_gradient_matches_finite_differences_f64() {
    let vae = tiny_vae(DType::F64).with_tiling(TilingOptions {
        enabled: true,
        tile_px: 16,
        overlap_px: 8,
    });
    // 24² image: tiles at 0 and 8 in each direction.
    let worst = check_encoder_gradient(
        &vae,
        &[1, 3, 24, 24],
        &[[0, 0, 0, 0], [0, 1, 11, 12], [0, 2, 23, 5], [0, 0, 17, 8]],
    );
    eprintln!("tiled encoder: worst relative error {worst:e}");
}

#[test]
fn encode_decode_shapes_and_scaling() {
    let vae = tiny_vae(DType::F32);
    let x = uniform01(3, &[2, 3, 16, 24], DType::F32);
    let z = vae.encode(&x).unwrap();
    assert_eq!(z.dims(), &[2, 4, 2, 3]);
    assert_eq!(z.dtype(), DType::F32);
    let img = vae.decode(&z).unwrap();
    assert_eq!(img.dims(), &[2, 3, 16, 24]);
    let clamped = vae.decode_to_images(&z, DType::F32).unwrap();
    let v = clamped.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    // Latents are the posterior mean times 0.18215.
    let xm = ((&x * 2.0).unwrap() - 1.0).unwrap();
    let (mean, logvar) = vae.encode_moments(&xm).unwrap();
    assert_eq!(logvar.dims(), &[2, 4, 2, 3]);
    assert!(max_abs(&(mean * 0.18215).unwrap(), &z) < 1e-6);
    // Sizes that are not multiples of 8 are errors.
    assert!(vae
        .encode(&uniform01(3, &[1, 3, 20, 16], DType::F32))
        .is_err());
}

#[test]
fn flux_vae_config_shift_and_scale() {
    let mut cfg = random_models::tiny_config().vae;
    cfg.latent_channels = 16;
    cfg.use_quant_conv = false;
    cfg.use_post_quant_conv = false;
    cfg.scaling_factor = 0.3611;
    cfg.shift_factor = Some(0.1159);
    let init = SeededInit::new(4);
    let vae = Vae::new(init.var_builder(), &cfg).unwrap();
    let names: Vec<String> = init.tensors().keys().cloned().collect();
    assert!(!names.iter().any(|n| n.contains("quant_conv")));
    let x = uniform01(5, &[1, 3, 16, 16], DType::F32);
    let z = vae.encode(&x).unwrap();
    assert_eq!(z.dims(), &[1, 16, 2, 2]);
    let xm = ((&x * 2.0).unwrap() - 1.0).unwrap();
    let mean = vae.encode_raw(&xm).unwrap();
    let expect = ((mean - 0.1159).unwrap() * 0.3611).unwrap();
    assert!(max_abs(&expect, &z) < 1e-6);
    // decode undoes the scaling and shift before the decoder.
    let raw = vae
        .decode_raw(&((z.clone() / 0.3611).unwrap() + 0.1159).unwrap())
        .unwrap();
    let img = vae.decode(&z).unwrap();
    assert!(max_abs(&((raw + 1.0).unwrap() / 2.0).unwrap(), &img) < 1e-6);
}

#[test]
fn tiled_and_untiled_agree_on_the_tiny_model() {
    let mut vae = tiny_vae(DType::F32);
    let tiling = TilingOptions {
        enabled: true,
        tile_px: 32,
        overlap_px: 16,
    };
    // 6² latents = 48² pixels; 32-pixel tiles sharing 16 pixels → 2×2 tiles.
    let z = randn(8, &[1, 4, 6, 6], DType::F32, &Device::Cpu).unwrap();
    vae.set_tiling(TilingOptions::off());
    let full = vae.decode(&z).unwrap();
    vae.set_tiling(tiling);
    let tiled = vae.decode(&z).unwrap();
    assert_eq!(tiled.dims(), full.dims());
    assert_eq!(vae.cached_ramps(), 1);
    let d_dec = max_abs(&tiled, &full);
    let spread = |t: &Tensor| {
        let f = t.flatten_all().unwrap();
        max_abs(&f.max(0).unwrap(), &f.min(0).unwrap())
    };
    let mean_abs =
        |a: &Tensor, b: &Tensor| scalar(&(a - b).unwrap().abs().unwrap().mean_all().unwrap());
    let (range, mean_dec) = (spread(&full), mean_abs(&tiled, &full));

    // Encode: a 48² image, same tiles.
    let x = uniform01(9, &[1, 3, 48, 48], DType::F32);
    vae.set_tiling(TilingOptions::off());
    let zf = vae.encode(&x).unwrap();
    vae.set_tiling(tiling);
    let zt = vae.encode(&x).unwrap();
    assert_eq!(vae.cached_ramps(), 2);
    let d_enc = max_abs(&zt, &zf);
    let (zrange, mean_enc) = (spread(&zf), mean_abs(&zt, &zf));
    eprintln!(
        "tiny VAE, 32-px tiles sharing 16 px: decode 48² max |Δ| {d_dec:.4} mean {mean_dec:.4} (output range {range:.3}); encode 48² max |Δ| {d_enc:.4} mean {mean_enc:.4} (latent range {zrange:.3})"
    );
    // Tiles see only part of the image (GroupNorm statistics, the global
    // mid-block attention), so they differ from the untiled pass; this random
    // 4-level model with 32-pixel tiles is a worst case. Bounds measured
    // (decode max 0.22 / mean 0.03 of the range, encode max 0.32 / mean 0.08) with margin.
    assert!(d_dec < 0.35 * range, "decode {d_dec} vs range {range}");
    assert!(
        mean_dec < 0.08 * range,
        "decode mean {mean_dec} vs range {range}"
    );
    assert!(d_enc < 0.45 * zrange, "encode {d_enc} vs range {zrange}");
    assert!(
        mean_enc < 0.12 * zrange,
        "encode mean {mean_enc} vs range {zrange}"
    );
    // Not larger than the tile: no tiling, identical results.
    let small = randn(8, &[1, 4, 4, 4], DType::F32, &Device::Cpu).unwrap();
    let a = vae.decode(&small).unwrap();
    vae.set_tiling(TilingOptions::off());
    assert_eq!(max_abs(&a, &vae.decode(&small).unwrap()), 0.0);
    // Tiles and overlaps must be multiples of 8, overlap < tile.
    for (tile_px, overlap_px) in [(36, 8), (32, 12), (32, 32)] {
        vae.set_tiling(TilingOptions {
            enabled: true,
            tile_px,
            overlap_px,
        });
        assert!(vae.decode(&z).is_err(), "{tile_px}/{overlap_px}");
    }
}

fn offline(dir: &Path) -> LoadOptions {
    LoadOptions {
        hub: HubConfig {
            cache_dir: dir.join("no-hub"),
            offline: true,
        },
        ..Default::default()
    }
}

#[test]
fn vae_encoder_loads_from_both_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let m = make_tiny(tmp.path(), &TinyOptions::default()).unwrap();
    let opts = offline(tmp.path());
    let a = load_mvdream(&ModelSource::Diffusers(m.diffusers_dir.clone()), &opts).unwrap();
    let b = load_mvdream(
        &ModelSource::Ldm {
            checkpoint: m.ldm_checkpoint.clone(),
            config: None,
            tokenizer: None,
        },
        &opts,
    )
    .unwrap();
    let x = uniform01(4, &[1, 3, 16, 16], DType::F32);
    let za = a.encode_images(&x).unwrap();
    let zb = b.encode_images(&x).unwrap();
    assert_eq!(max_abs(&za, &zb), 0.0);
    assert_eq!(za.dims(), &[1, 4, 2, 2]);
}

#[test]
fn sds_gradient_on_tiny_mvdream() {
    let tmp = tempfile::tempdir().unwrap();
    let m = make_tiny(tmp.path(), &TinyOptions::default()).unwrap();
    let pipe = load_mvdream(
        &ModelSource::Diffusers(m.diffusers_dir.clone()),
        &offline(tmp.path()),
    )
    .unwrap();
    let req = MvDreamRequest {
        prompt: "a cute owl".into(),
        negative_prompt: "blurry".into(),
        image_size: 32,
        ..Default::default()
    };
    let cond = pipe.sds_conditioning(&req).unwrap();
    let x = Var::from_tensor(&uniform01(6, &[4, 3, 16, 16], DType::F32)).unwrap();
    let lat = pipe.encode_images(x.as_tensor()).unwrap();
    assert_eq!(lat.dims(), &[4, 4, 2, 2]);
    let opts = SdsOptions {
        guidance_scale: 7.5,
        ..Default::default()
    };
    let out = sds_gradient(
        &pipe,
        &lat,
        &cond,
        SdsTimestep::Anneal {
            step: 250,
            iters: 500,
        },
        42,
        &opts,
    )
    .unwrap();
    assert_eq!(out.timesteps, vec![500; 4]);

    // grad = ε̂ − ε with ε̂ recomputed by hand.
    let ac = pipe.scheduler.alphas_cumprod()[500];
    let noisy =
        ((lat.detach() * ac.sqrt()).unwrap() + (&out.noise * (1.0 - ac).sqrt()).unwrap()).unwrap();
    let cam = cond.camera.clone().unwrap();
    let ctx_pos = cond.positive.broadcast_as((4, 77, 32)).unwrap();
    let ctx_neg = cond.negative.broadcast_as((4, 77, 32)).unwrap();
    let e_pos = pipe
        .predict_noise(
            &noisy,
            &[500.0; 4],
            &ctx_pos.contiguous().unwrap(),
            Some(&cam),
            4,
        )
        .unwrap();
    let e_neg = pipe
        .predict_noise(
            &noisy,
            &[500.0; 4],
            &ctx_neg.contiguous().unwrap(),
            Some(&cam),
            4,
        )
        .unwrap();
    let guided = (&e_neg + ((&e_pos - &e_neg).unwrap() * 7.5).unwrap()).unwrap();
    let expect = (&guided - &out.noise).unwrap();
    // (Batch 8 against two batches of 4: different summation orders, × 7.5.)
    let tol = 1e-5 * (1.0 + max_abs(&expect, &expect.zeros_like().unwrap())) * 7.5;
    assert!(
        max_abs(&expect, &out.grad) < tol,
        "{} vs {tol}",
        max_abs(&expect, &out.grad)
    );
    assert!(max_abs(&guided, &out.noise_pred) < tol);
    // loss = ½·Σ grad² / B.
    let l = scalar(&out.loss);
    let l_expect = 0.5 * scalar(&out.grad.sqr().unwrap().sum_all().unwrap()) / 4.0;
    assert!(
        (l - l_expect).abs() < 1e-4 * l_expect.abs(),
        "{l} vs {l_expect}"
    );

    // loss.backward() = the encoder's vector-Jacobian product with grad / B.
    let g = out.loss.backward().unwrap();
    let g_img = g.get(x.as_tensor()).expect("image gradient").clone();
    assert_eq!(g_img.dims(), &[4, 3, 16, 16]);
    let lat2 = pipe.encode_images(x.as_tensor()).unwrap();
    let vjp = (lat2 * (&out.grad / 4.0).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_ref = vjp.get(x.as_tensor()).unwrap();
    let scale = max_abs(g_ref, &g_ref.zeros_like().unwrap());
    assert!(scale > 0.0);
    assert!(max_abs(&g_img, g_ref) < 1e-5 * scale.max(1.0));
    // No gradient flows into the UNet's input path (grad is detached): the
    // image gradient scales linearly with the guidance-weighted residual.

    // Weighting w(t) = 1 − ᾱ_t scales the gradient.
    let w_opts = SdsOptions {
        weighting: SdsWeighting::OneMinusAlphaBar,
        ..opts.clone()
    };
    let out_w = sds_gradient(&pipe, &lat, &cond, SdsTimestep::Fixed(500), 42, &w_opts).unwrap();
    assert!(max_abs(&(&out.grad * (1.0 - ac)).unwrap(), &out_w.grad) < 1e-6 * (1.0 + tol));

    // Random timesteps: one per object, reproducible with the seed.
    let r = sds_gradient(
        &pipe,
        &lat,
        &cond,
        SdsTimestep::Random { seed: 5 },
        42,
        &opts,
    )
    .unwrap();
    assert_eq!(
        r.timesteps,
        sds_timesteps(SdsTimestep::Random { seed: 5 }, 4, 4, 1000, &opts)
    );
    assert!(r
        .timesteps
        .iter()
        .all(|&t| t == r.timesteps[0] && (20..=980).contains(&t)));
    // Batches must be whole objects.
    assert!(sds_gradient(
        &pipe,
        &lat.narrow(0, 0, 3).unwrap(),
        &cond,
        SdsTimestep::Fixed(10),
        1,
        &opts
    )
    .is_err());
}
