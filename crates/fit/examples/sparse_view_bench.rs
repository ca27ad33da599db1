//! The sparse-view benchmark of issue 4, on the CPU: prints one JSON object.
//!
//! Ground truth: `../shared/fixtures/hamburger.ply` (beside the repository), normalised to the
//! validators' 1.5 box. Training: 4 views at 256² (elevation 0°, azimuths
//! 0/90/180/270, radius 2.5, fovy 49.1°, white background) rendered with our
//! rasterizer. Held out: the validator's 16 views at 518². Fit: 500 steps
//! from 5,000 random points (the default config otherwise; `--config`
//! overrides).
//!
//! ```sh
//! cargo run --release -p splatforge-fit --example sparse_view_bench -- [PLY] [--iters N] [--config fit.yaml] [--out fit.ply]
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use splatforge_fit::{background, evaluate, fit, initial_gaussians, render_mode, FitConfig, Init};
use splatforge_splat::normalize::{fit_to_box, VALIDATOR_BOX};

mod sparse_view;
use sparse_view::sparse_views;

fn main() {
    let mut args = std::env::args().skip(1);
    // `../shared` beside the repository.
    let mut ply =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hamburger.ply");
    let mut config = FitConfig {
        iters: 500,
        num_pts: 5000,
        ..Default::default()
    };
    let mut out: Option<PathBuf> = None;
    let mut iters: Option<u32> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = Some(args.next().expect("--iters N").parse().expect("a number")),
            "--config" => {
                config = FitConfig::load(args.next().expect("--config FILE").as_ref())
                    .unwrap_or_else(|e| {
                        eprintln!("error: {e}");
                        std::process::exit(2)
                    })
            }
            "--out" => out = Some(args.next().expect("--out FILE").into()),
            _ => ply = a.into(),
        }
    }
    if let Some(n) = iters {
        config.iters = n;
    }
    let mut gt = splatforge_splat::read_splat_file(&ply).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    fit_to_box(&mut gt, VALIDATOR_BOX).unwrap();
    let t0 = Instant::now();
    let (train, test) = sparse_views(&gt).expect("render ground truth");
    let gt_time = t0.elapsed();

    let bg = background(&config);
    let mode = render_mode(&config);
    let initial = evaluate(&initial_gaussians(&Init::Random, &config), &test, bg, mode).unwrap();
    let t1 = Instant::now();
    let result = fit(&train, &config, Init::Random, |p| {
        if p.iteration % 50 == 0 {
            eprintln!(
                "step {:4}  loss {:.4}  train PSNR {:.2}  {} splats  {:.1} s",
                p.iteration,
                p.loss,
                p.psnr,
                p.num_gaussians,
                p.elapsed.as_secs_f64()
            );
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    let fit_s = t1.elapsed().as_secs_f64();
    let held = evaluate(&result.gaussians, &test, bg, mode).unwrap();
    let train_metrics = evaluate(&result.gaussians, &train, bg, mode).unwrap();
    if let Some(p) = &out {
        splatforge_splat::write_splat_file(
            p,
            &result.gaussians,
            &splatforge_splat::EncodeOptions::new(
                splatforge_splat::SplatFormat::from_path(p).unwrap(),
            ),
        )
        .unwrap();
    }
    let st = result.timings.stages;
    let json = serde_json::json!({
        "benchmark": "sparse-view fit (issue 4), CPU",
        "ground_truth": ply.file_name().map(|n| n.to_string_lossy().into_owned()),
        "ground_truth_gaussians": gt.len(),
        "train_views": "4 x 256^2, elevation 0, azimuth 0/90/180/270, radius 2.5, fovy 49.1, white",
        "held_out_views": "validator 16 x 518^2",
        "iters": config.iters,
        "num_pts": config.num_pts,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "threads": rayon::current_num_threads(),
        "ground_truth_render_s": gt_time.as_secs_f64(),
        "fit_wall_s": fit_s,
        "stage_s": {
            "forward": st.forward.as_secs_f64(),
            "loss": st.loss.as_secs_f64(),
            "backward": st.backward.as_secs_f64(),
            "adam": st.optimizer.as_secs_f64(),
            "densify": st.densify.as_secs_f64(),
        },
        "final_gaussians": result.gaussians.len(),
        "initial_held_out_psnr": initial.psnr,
        "held_out_psnr": held.psnr,
        "held_out_ssim": held.ssim,
        "train_views_psnr": train_metrics.psnr,
        "held_out_psnr_per_view": held.views.iter().map(|v| (v.psnr * 100.0).round() / 100.0).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&json).unwrap());
}
