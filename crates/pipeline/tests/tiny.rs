//! The whole pipeline on the tiny random-weight models, on the CPU, with the
//! `development` profile: what CI can run of text → splat.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use splatforge_diffusion::{make_tiny, HubConfig, TinyOptions};
use splatforge_pipeline::*;
use splatforge_splat::validate::{validate, ValidationConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    pipe: Pipeline,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        make_tiny(dir.path(), &TinyOptions::default()).unwrap();
        let models = resolve_models(Some(dir.path().to_str().unwrap())).unwrap();
        let config = PipelineConfig::profile("development").unwrap();
        let hub = HubConfig {
            cache_dir: dir.path().join("no-hub"),
            offline: true,
        };
        let pipe = Pipeline::load(
            &models,
            &candle_core::Device::Cpu,
            hub,
            "development",
            config,
        )
        .unwrap();
        Fixture { _dir: dir, pipe }
    })
}

#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl Observer for Recorder {
    fn stage_started(&mut self, stage: Stage, steps: u64) {
        self.events.push(format!("start {stage} {steps}"));
    }
    fn step(&mut self, stage: Stage, done: u64, total: u64, _loss: Option<f64>) {
        self.events.push(format!("step {stage} {done}/{total}"));
    }
    fn stage_finished(&mut self, stage: Stage, _elapsed: Duration) {
        self.events.push(format!("end {stage}"));
    }
}

/// The development profile without SDS: for tests that need a generation
/// but not its SDS stage (SDS's backward pass dominates a debug build).
fn no_sds() -> PipelineConfig {
    let mut c = fixture().pipe.config().clone();
    c.sds.sds_iters = 0;
    c
}

#[test]
fn prompt_to_a_valid_splat_with_stage_timings() {
    let pipe = &fixture().pipe;
    let mut rec = Recorder::default();
    let out = pipe
        .generate(
            &Request {
                prompt: "a red chair".into(),
                seed: Some(3),
            },
            &|| false,
            &mut rec,
        )
        .unwrap();
    let g = &out.gaussians;
    g.check_consistent().unwrap();
    // The validator's data checks, but for the count minimum.
    let report = validate(
        g,
        &ValidationConfig {
            min_gaussians: 0,
            ..Default::default()
        },
    );
    assert!(report.passed, "{:#?}", report.checks);
    assert!(g.len() > 100, "{}", g.len());
    // Normalised to the validators' 1.5 box, centred.
    let (lo, hi) = g.bounds().unwrap();
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    assert!((extent - 1.5).abs() < 1e-3, "{extent}");
    // Every stage, in order, with its time.
    let stages: Vec<Stage> = out.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(stages, Stage::ALL.to_vec());
    assert!(out.total() > Duration::ZERO);
    assert_eq!(out.seed, 3);
    assert!(
        matches!(out.init, InitUsed::Carved(_) | InitUsed::RandomFallback),
        "{:?}",
        out.init
    );
    assert_eq!(out.views.len(), 4);
    let size = pipe.config().diffusion.resolution as u32;
    assert!(out
        .views
        .views
        .iter()
        .all(|v| v.alpha.is_some() && v.width() == size));
    // Progress: each stage starts and ends; every step is reported.
    for s in Stage::ALL {
        assert!(
            rec.events.contains(&format!("end {s}")),
            "{s}: {:?}",
            rec.events
        );
    }
    let fit = pipe.config().fit.iters;
    assert!(
        rec.events.contains(&format!("step fit {fit}/{fit}")),
        "{:?}",
        rec.events
    );
    assert!(
        rec.events.contains(&"step sds 1/1".to_string()),
        "{:?}",
        rec.events
    );
    assert!(
        rec.events.contains(&"step diffusion 3/3".to_string()),
        "{:?}",
        rec.events
    );
}

#[test]
fn a_seed_gives_the_same_splat_and_another_seed_another() {
    let pipe = &fixture().pipe;
    let req = |seed| Request {
        prompt: "a blue car".into(),
        seed: Some(seed),
    };
    // With SDS: its noise and cameras are seeded too.
    let a = pipe.generate(&req(7), &|| false, &mut ()).unwrap();
    let b = pipe.generate(&req(7), &|| false, &mut ()).unwrap();
    assert_eq!(a.gaussians, b.gaussians);
    let c = no_sds();
    let x = pipe.generate_with(&c, &req(7), &|| false, &mut ()).unwrap();
    let y = pipe.generate_with(&c, &req(8), &|| false, &mut ()).unwrap();
    assert_ne!(x.gaussians.means, y.gaussians.means);
    assert_ne!(x.gaussians, a.gaussians, "SDS changed nothing");
    // No seed in the request: the profile's.
    let d = pipe
        .generate_with(
            &c,
            &Request {
                prompt: "a blue car".into(),
                seed: None,
            },
            &|| false,
            &mut (),
        )
        .unwrap();
    assert_eq!(d.seed, pipe.config().seed);
}

#[test]
fn cancellation_stops_between_stages_and_inside_diffusion_fit_and_sds() {
    let pipe = &fixture().pipe;
    let req = Request {
        prompt: "a cat".into(),
        seed: Some(1),
    };
    // Cancelled from the start.
    let e = pipe.generate(&req, &|| true, &mut ()).unwrap_err();
    assert!(matches!(e, PipelineError::Cancelled), "{e}");
    // Count the polls of a whole run: before each stage, every denoising
    // step, every fit step and every SDS step.
    let n = AtomicUsize::new(0);
    pipe.generate(
        &req,
        &|| {
            n.fetch_add(1, Ordering::Relaxed);
            false
        },
        &mut (),
    )
    .unwrap();
    let total = n.into_inner();
    let c = pipe.config();
    let (steps, fit, sds) = (
        c.diffusion.num_inference_steps,
        c.fit.iters as usize,
        c.sds.sds_iters as usize,
    );
    assert!(
        steps >= 2,
        "the development profile denoises in {steps} steps"
    );
    assert!(total >= 6 + steps + fit + sds, "{total}");
    // Fire after the first denoising step (poll 1 is before the stage), in
    // the fit (after the denoising steps, the poll after sampling, alpha and
    // init), in SDS (its step poll comes after its stage poll) and right
    // before normalising: each a clean `Cancelled`.
    let in_fit = 6 + steps;
    for fire_at in [2, in_fit, total - 2, total] {
        let n = AtomicUsize::new(0);
        let mut rec = Recorder::default();
        let e = pipe
            .generate(
                &req,
                &|| n.fetch_add(1, Ordering::Relaxed) + 1 >= fire_at,
                &mut rec,
            )
            .unwrap_err();
        assert!(matches!(e, PipelineError::Cancelled), "at {fire_at}: {e}");
        assert!(!rec.events.contains(&"end normalize".to_string()));
        if fire_at == 2 {
            // Stopped inside the sampler: one step done, not the second.
            assert!(
                rec.events
                    .iter()
                    .any(|e| e.starts_with("step diffusion 1/")),
                "{:?}",
                rec.events
            );
            assert!(
                !rec.events
                    .iter()
                    .any(|e| e.starts_with("step diffusion 2/")),
                "{:?}",
                rec.events
            );
            assert!(
                !rec.events.contains(&"end diffusion".to_string()),
                "{:?}",
                rec.events
            );
        }
        if fire_at == in_fit {
            assert!(
                rec.events.contains(&"start fit 6".to_string())
                    && !rec.events.contains(&"end fit".to_string()),
                "{:?}",
                rec.events
            );
        }
    }
}

#[test]
fn random_init_top_up_and_bad_requests() {
    let pipe = &fixture().pipe;
    let mut c = no_sds();
    c.init.method = config::InitMethod::Random;
    c.output.min_gaussians = 2000;
    let out = pipe
        .generate_with(
            &c,
            &Request {
                prompt: "an owl".into(),
                seed: Some(2),
            },
            &|| false,
            &mut (),
        )
        .unwrap();
    assert_eq!(out.init, InitUsed::Random);
    assert!(!out.timings.iter().any(|(s, _)| *s == Stage::Sds));
    assert_eq!(out.gaussians.len(), 2000);
    assert!(
        validate(
            &out.gaussians,
            &ValidationConfig {
                min_gaussians: 2000,
                ..Default::default()
            }
        )
        .passed
    );
    let e = pipe
        .generate(
            &Request {
                prompt: "  ".into(),
                seed: None,
            },
            &|| false,
            &mut (),
        )
        .unwrap_err();
    assert!(matches!(e, PipelineError::Input(_)), "{e}");
    c.fit.iters = 0;
    let e = pipe
        .generate_with(
            &c,
            &Request {
                prompt: "an owl".into(),
                seed: None,
            },
            &|| false,
            &mut (),
        )
        .unwrap_err();
    assert!(e.to_string().contains("fit.iters"), "{e}");
}

#[test]
fn warm_up_runs() {
    let d = fixture().pipe.warm_up().unwrap();
    assert!(d > Duration::ZERO);
}

#[test]
fn vae_slicing_decodes_like_the_whole_batch() {
    use candle_core::{DType, Device};
    let pipe = fixture().pipe.mvdream();
    let latents = splatforge_nn::rng::randn(4, &[2, 4, 4, 4], DType::F32, &Device::Cpu).unwrap();
    let plain = pipe.decode_latents(&latents).unwrap();
    let mut c = config::DiffusionConfig {
        vae_slicing: true,
        ..Default::default()
    };
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(&plain, &decode::decode(pipe, &latents, &c).unwrap()) < 1e-5);
    c.vae_slicing = false;
    assert_eq!(
        diff(&plain, &decode::decode(pipe, &latents, &c).unwrap()),
        0.0
    );
    // Tiling is the loaded VAE's, from the profile (off in development).
    assert!(!pipe.vae.tiling().enabled);
}

/// `sds.from_scratch` (the 404 reference miner's design): no views, no fit,
/// SDS alone trains the random ball, with two orbits a step.
#[test]
fn sds_from_scratch_skips_views_and_fit() {
    let pipe = &fixture().pipe;
    let mut c = pipe.config().clone();
    c.init.method = splatforge_pipeline::config::InitMethod::Random;
    c.sds.from_scratch = true;
    c.sds.lambda_views = 0.0;
    c.sds.sds_iters = 2;
    c.sds.batch_size = 2;
    let mut rec = Recorder::default();
    let out = pipe
        .generate_with(
            &c,
            &Request {
                prompt: "a red chair".into(),
                seed: Some(5),
            },
            &|| false,
            &mut rec,
        )
        .unwrap();
    out.gaussians.check_consistent().unwrap();
    assert!(out.gaussians.means.iter().flatten().all(|v| v.is_finite()));
    let stages: Vec<Stage> = out.timings.iter().map(|(s, _)| *s).collect();
    assert_eq!(stages, [Stage::Init, Stage::Sds, Stage::Normalize]);
    assert!(out.views.is_empty());
    assert!(out.fit_psnr.is_nan());
    assert_eq!(out.init, InitUsed::Random);
    assert!(
        rec.events.contains(&"start sds 2".to_string())
            && rec.events.contains(&"step sds 2/2".to_string()),
        "{:?}",
        rec.events
    );
    // The ball's Gaussians, topped up to the minimum: SDS does not densify.
    assert_eq!(
        out.gaussians.len(),
        c.fit.num_pts.max(c.output.min_gaussians)
    );
}
