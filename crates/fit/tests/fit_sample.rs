//! End-to-end: fit the checked-in sample dataset (`data/shapes`, rendered by
//! an independent ray marcher) and check that the held-out views improve.
//! Kept small (32×32 views, few points and steps) so that it runs in well
//! under a minute in a debug build.

use std::path::PathBuf;

use splatforge_fit::{evaluate, fit, initial_gaussians, load_transforms, FitConfig, Init, LoadOptions, Views};

fn sample_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/shapes/transforms_train.json")
}

fn small(views: &Views, side: u32) -> Views {
    Views::new(views.views.iter().map(|v| v.downscaled(side)).collect())
}

fn small_config() -> FitConfig {
    FitConfig {
        iters: 150,
        num_pts: 1000,
        batch_size: 1,
        position_lr_max_steps: 150,
        densification_interval: 50,
        ..Default::default()
    }
}

#[test]
fn sample_dataset_loads_with_both_intrinsics_styles() {
    let d = load_transforms(&sample_path(), &LoadOptions::default()).unwrap();
    assert_eq!((d.train.len(), d.test.len()), (24, 8));
    let (a, b) = (d.train.views[0].camera, d.test.views[0].camera);
    // camera_angle_x (train) and fl_x (test) describe the same lens.
    assert!((a.fx - b.fx).abs() < 1e-3, "{} vs {}", a.fx, b.fx);
    assert_eq!((a.width, a.height), (128, 128));
    for v in d.train.views.iter().chain(&d.test.views) {
        assert!(v.alpha.is_some());
        // Every camera looks at the object (the origin) from 2.2 away.
        let p = v.camera.position();
        assert!(((p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt() - 2.2).abs() < 1e-4);
        let c = v.camera.project_point([0.0; 3]).unwrap();
        assert!((c[0] - 64.0).abs() < 1e-2 && (c[1] - 64.0).abs() < 1e-2);
    }
}

#[test]
fn fitting_the_sample_improves_held_out_psnr() {
    let d = load_transforms(&sample_path(), &LoadOptions::default()).unwrap();
    let train = small(&d.train, 32);
    let test = small(&d.test, 32);
    let config = small_config();
    let g0 = initial_gaussians(&Init::Random, &config);
    let before = evaluate(&g0, &test, [1.0; 3], Default::default()).unwrap();
    let mut steps = 0;
    let mut densified = 0;
    let r = fit(&train, &config, Init::Random, |p| {
        steps += 1;
        assert!(p.loss.is_finite());
        densified += p.densified.is_some() as usize;
    })
    .unwrap();
    assert_eq!(steps, config.iters);
    assert_eq!(densified, 3);
    assert_eq!(r.densifications.len(), 3);
    r.gaussians.check_consistent().unwrap();
    let after = evaluate(&r.gaussians, &test, [1.0; 3], Default::default()).unwrap();
    eprintln!(
        "held-out PSNR {:.2} → {:.2} dB, SSIM {:.3} → {:.3}, {} Gaussians",
        before.psnr,
        after.psnr,
        before.ssim,
        after.ssim,
        r.gaussians.len()
    );
    assert!(after.psnr > before.psnr + 6.0, "{} → {}", before.psnr, after.psnr);
    assert!(after.psnr > 21.0, "{}", after.psnr);
    assert!(after.ssim > before.ssim);
}

#[test]
fn fits_are_deterministic_given_the_seed() {
    let d = load_transforms(&sample_path(), &LoadOptions::default()).unwrap();
    let train = small(&d.train, 24);
    let config = FitConfig {
        iters: 12,
        num_pts: 300,
        densification_interval: 5,
        densify_grad_threshold: 0.00005,
        ..small_config()
    };
    let a = fit(&train, &config, Init::Random, |_| {}).unwrap();
    let b = fit(&train, &config, Init::Random, |_| {}).unwrap();
    assert_eq!(a.gaussians, b.gaussians);
    assert!(a.densifications.iter().any(|(_, r)| r.cloned + r.split > 0), "{:?}", a.densifications);
    let c = fit(&train, &FitConfig { seed: 1, ..config }, Init::Random, |_| {}).unwrap();
    assert_ne!(a.gaussians, c.gaussians);
}
