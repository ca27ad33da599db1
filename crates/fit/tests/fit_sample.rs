//! End-to-end: fit the checked-in sample dataset (`data/shapes`, rendered by
//! an independent ray marcher) and check that the held-out views improve.
//! Kept small (32×32 views, few points and steps) so that it runs in well
//! under a minute in a debug build.

use std::ops::ControlFlow;
use std::path::PathBuf;

use splatforge_fit::{
    evaluate, fit, initial_gaussians, load_transforms, FitConfig, FitError, Init, LoadOptions,
    Views,
};

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

/// 12 steps from `num_pts` points, densifying every 5.
fn twelve_steps(num_pts: usize) -> FitConfig {
    FitConfig {
        iters: 12,
        num_pts,
        densification_interval: 5,
        ..small_config()
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
        ControlFlow::Continue(())
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
    assert!(
        after.psnr > before.psnr + 6.0,
        "{} → {}",
        before.psnr,
        after.psnr
    );
    assert!(after.psnr > 21.0, "{}", after.psnr);
    assert!(after.ssim > before.ssim);
}

#[test]
fn fits_are_deterministic_given_the_seed() {
    let d = load_transforms(&sample_path(), &LoadOptions::default()).unwrap();
    let train = small(&d.train, 24);
    let config = FitConfig {
        densify_grad_threshold: 0.00005,
        ..twelve_steps(300)
    };
    let a = fit(&train, &config, Init::Random, |_| ControlFlow::Continue(())).unwrap();
    let b = fit(&train, &config, Init::Random, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(a.gaussians, b.gaussians);
    assert!(
        a.densifications.iter().any(|(_, r)| r.cloned + r.split > 0),
        "{:?}",
        a.densifications
    );
    let c = fit(
        &train,
        &FitConfig { seed: 1, ..config },
        Init::Random,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_ne!(a.gaussians, c.gaussians);
}

#[test]
fn progress_reports_the_schedule_and_break_stops_the_fit() {
    let d = load_transforms(&sample_path(), &LoadOptions::default()).unwrap();
    let train = small(&d.train, 16);
    let config = FitConfig {
        batch_size: 2,
        opacity_reset_interval: 10,
        ..twelve_steps(100)
    };
    let mut seen = Vec::new();
    let e = fit(&train, &config, Init::Random, |p| {
        seen.push((
            p.iteration,
            p.view_ids.clone(),
            p.densified.is_some(),
            p.opacity_reset,
            p.params.sh_degree,
        ));
        if p.iteration == 10 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap_err();
    assert!(matches!(e, FitError::Cancelled), "{e}");
    assert_eq!(seen.len(), 10, "stopped right after the step that asked");
    for (i, ids, densified, reset, _) in &seen {
        assert_eq!(ids.len(), 2, "step {i}: one id per view of the batch");
        assert!(
            ids.iter().all(|&id| id < train.len()),
            "full-size views: ids are view indices"
        );
        assert_eq!(*densified, i % 5 == 0, "step {i}");
        assert_eq!(*reset, i % 10 == 0, "step {i}");
    }
}
