//! Measures the fit's initialisation: DreamGaussian's random ball against
//! points carved from the views' masks, on a known object.
//!
//! A reference splat (default: the 404 fixture `hamburger.ply`) is scaled
//! to a 1-unit box and rendered from MVDream's 4 cameras (256², elevation
//! 15°, radius 3.5) over white; the views go through the pipeline's
//! white-background alpha separation, then are fitted from each
//! initialisation with each learning-rate setting. Scored on 8 held-out
//! views (elevations 0° and 30°, azimuths 45° off the training views) by
//! PSNR over white.
//!
//! ```sh
//! cargo run --release -p splatforge-pipeline --example init_compare -- [SPLAT] [ITERS] [NUM_PTS]
//! ```

use std::time::Instant;

use splatforge_fit::{evaluate, fit, FitConfig, Init, View, Views};
use splatforge_pipeline::alpha::{foreground_alpha, straight_rgba};
use splatforge_pipeline::carve::carve_init;
use splatforge_pipeline::config::{AlphaConfig, CarveSample, InitConfig};
use splatforge_render::{pack_sh, render, Camera, GaussianParams, RenderMode, RenderOptions};
use splatforge_splat::normalize::fit_to_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "../shared/fixtures/hamburger.ply".into());
    let iters: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(300);
    let num_pts: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let mut reference = splatforge_splat::read_splat_file(path.as_ref()).expect("reference splat");
    fit_to_box(&mut reference, 1.0).unwrap();
    let sh = pack_sh(&reference);
    let params = GaussianParams::from_gaussians(&reference, &sh);
    let opts = RenderOptions {
        background: [1.0; 3],
        ..Default::default()
    };

    let train_cams =
        splatforge_pipeline::cameras::render_cameras(4, 15.0, 0.0, 360.0, 3.5, 49.1, 256);
    let images = render(&params, &train_cams, &opts).unwrap();
    let alpha_cfg = AlphaConfig::default();
    let train = Views::new(
        images
            .iter()
            .zip(&train_cams)
            .enumerate()
            .map(|(i, (im, cam))| {
                let rgb: Vec<f32> = im.rgb.iter().map(|v| v.clamp(0.0, 1.0)).collect();
                let a = foreground_alpha(&rgb, 256, 256, &alpha_cfg);
                View::from_rgba(format!("train_{i}"), *cam, &straight_rgba(&rgb, &a)).unwrap()
            })
            .collect(),
    );
    // Alpha separation against the renderer's own alpha.
    let mut err = 0.0f64;
    for (im, v) in images.iter().zip(&train.views) {
        let a = v.alpha.as_ref().unwrap();
        err += im
            .alpha
            .iter()
            .zip(a)
            .map(|(x, y)| (x - y).abs() as f64)
            .sum::<f64>()
            / a.len() as f64;
    }
    println!(
        "alpha separation: mean |alpha − true alpha| = {:.4}",
        err / 4.0
    );

    let test_cams: Vec<Camera> = [0.0f32, -30.0]
        .iter()
        .flat_map(|&el| {
            (0..4).map(move |i| Camera::orbit(el, 45.0 + 90.0 * i as f32, 3.5, 49.1, 256, 256))
        })
        .collect();
    let test_images = render(&params, &test_cams, &opts).unwrap();
    let test = Views::new(
        test_images
            .into_iter()
            .zip(&test_cams)
            .enumerate()
            .map(|(i, (im, cam))| View::from_rgb(format!("test_{i}"), *cam, im.rgb).unwrap())
            .collect(),
    );

    let profile = splatforge_pipeline::PipelineConfig::profile("speed")
        .unwrap()
        .fit;
    let ours = FitConfig {
        iters,
        num_pts,
        position_lr_max_steps: iters,
        density_end_iter: iters * 5 / 6,
        ..profile
    };
    let middle = FitConfig {
        position_lr_init: 0.001,
        spatial_lr_scale: 3.0,
        ..ours.clone()
    };
    let dreamgaussian = FitConfig {
        position_lr_init: 0.001,
        spatial_lr_scale: 10.0,
        density_start_iter: 0,
        ..ours.clone()
    };
    println!(
        "{} iterations, {num_pts} initial points, 4 views 256², 8 held-out views",
        iters
    );
    println!(
        "{:<9} {:<24} {:>10} {:>12} {:>10} {:>8}",
        "init", "learning rates", "PSNR@init", "PSNR@end", "splats", "time s"
    );
    for (lr_name, cfg) in [
        ("pos 5e-4 x 1", &ours),
        ("pos 1e-3 x 3", &middle),
        ("DreamGaussian 1e-3 x 10", &dreamgaussian),
    ] {
        for init_name in ["random", "hull-surf", "hull-vol"] {
            let sample = if init_name == "hull-surf" {
                CarveSample::Surface
            } else {
                CarveSample::Volume
            };
            let init = match init_name {
                "random" => Init::Random,
                _ => {
                    let c = InitConfig {
                        sample,
                        ..Default::default()
                    };
                    Init::Gaussians(carve_init(&train.views, &c, num_pts, 0, 0).unwrap().0)
                }
            };
            let g0 = splatforge_fit::initial_gaussians(&init, cfg);
            let p0 = evaluate(&g0, &test, [1.0; 3], RenderMode::Classic)
                .unwrap()
                .psnr;
            let t0 = Instant::now();
            let r = fit(&train, cfg, init, |_| std::ops::ControlFlow::Continue(())).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let p = evaluate(&r.gaussians, &test, [1.0; 3], RenderMode::Classic)
                .unwrap()
                .psnr;
            println!(
                "{init_name:<9} {lr_name:<24} {p0:>10.2} {p:>12.2} {:>10} {secs:>8.1}",
                r.gaussians.len()
            );
        }
    }
}
