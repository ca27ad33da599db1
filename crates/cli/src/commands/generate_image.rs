//! `splatforge generate --image IN.png -o OUT.ply|.spz`: image → splat file with TRELLIS
//! (profiles with `pipeline: trellis`; models as [`super::trellis_generator`] finds them).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use splatforge_nn::hub::HubConfig;
use splatforge_pipeline::{device_name, ConfigSources, PipelineKind};
use splatforge_trellis::pipeline::Progress;

use super::generate::{
    device, median_ms, ms, ms_json, named_timing_table, warn_if_invalid, Args, Bars,
};
use super::trellis_generator::{
    ImageGenerated, TrellisModels, TrellisRunner, DEFAULT_IMAGE_PROFILE, TINY_TRELLIS_PROFILE,
};
use crate::Outcome;

/// `sources` with the profile for `models` when none is named (tiny random-weight models:
/// [`TINY_TRELLIS_PROFILE`], with a note; else [`DEFAULT_IMAGE_PROFILE`]), and the
/// per-stage sampler flags as `--set trellis.*` (applied last).
fn image_sources(args: &Args, tiny: bool) -> ConfigSources {
    let mut sources = args.config.sources();
    if sources.profile.is_none() {
        let profile = if tiny {
            eprintln!("note: tiny test models; using --profile {TINY_TRELLIS_PROFILE} (pass --profile to choose another)");
            TINY_TRELLIS_PROFILE
        } else {
            DEFAULT_IMAGE_PROFILE
        };
        sources.profile = Some(profile.to_string());
    }
    let flags = [
        (
            "sparse_structure_steps",
            args.ss_steps.map(|v| v.to_string()),
        ),
        ("sparse_structure_cfg", args.ss_cfg.map(|v| v.to_string())),
        ("slat_steps", args.slat_steps.map(|v| v.to_string())),
        ("slat_cfg", args.slat_cfg.map(|v| v.to_string())),
    ];
    for (key, value) in flags {
        if let Some(v) = value {
            sources.sets.push(format!("trellis.{key}={v}"));
        }
    }
    sources
}

/// The JSON object of run `run` of `runs` (1-based); `output` on the run that wrote it.
fn json(
    runner: &TrellisRunner,
    load: Duration,
    (run, runs): (u64, u64),
    out: &ImageGenerated,
    write: Option<(Duration, &std::path::Path)>,
) -> serde_json::Value {
    let mut stages: serde_json::Map<String, serde_json::Value> = out
        .timings
        .iter()
        .map(|(stage, d)| (stage.to_string(), ms_json(*d).into()))
        .collect();
    if let Some((d, _)) = write {
        stages.insert("write".into(), ms_json(d).into());
    }
    let sampler = |p: &splatforge_trellis::sampler::SamplerParams| {
        serde_json::json!({
            "steps": p.steps,
            "cfg_strength": p.cfg_strength,
            "cfg_interval": [p.cfg_interval.0, p.cfg_interval.1],
            "rescale_t": p.rescale_t,
        })
    };
    let memory = runner.device_memory();
    let models = runner.models();
    serde_json::json!({
        "profile": runner.profile(),
        "pipeline": PipelineKind::Trellis.name(),
        "models": models.dir.display().to_string(),
        "dinov2": models.dinov2.display().to_string(),
        "device": device_name(runner.device()),
        "run": run,
        "runs": runs,
        "seed": out.seed,
        "stages_ms": stages,
        "total_ms": ms_json(out.total() + write.map_or(Duration::ZERO, |(d, _)| d)),
        "load_ms": ms_json(load),
        "voxels": out.voxels,
        "gaussians": out.gaussians.len(),
        "sparse_structure_sampler": sampler(&out.sparse_structure_params),
        "slat_sampler": sampler(&out.slat_params),
        "device_memory_used_bytes": memory.map(|m| m.used_bytes),
        "device_memory_total_bytes": memory.map(|m| m.total_bytes),
        "output": write.map(|(_, p)| p.display().to_string()),
    })
}

/// `--save-views DIR` with `--image`: the 518² RGBA cut-out the 3D stage saw, as
/// `DIR/cutout.png` (TRELLIS renders no views of its own).
fn save_cutout(dir: &std::path::Path, cutout: &image::RgbaImage) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    super::write_png(&dir.join("cutout.png"), cutout.clone())
}

pub fn run(args: Args) -> Result<Outcome> {
    let image_path = args.image.clone().expect("called with --image");
    if args.prompt.is_some() {
        bail!("give --prompt or --image, not both");
    }
    if args.warm_up {
        bail!("--warm-up is for --prompt; with --image, --repeat N times runs after one load");
    }
    let hub = HubConfig::from_env();
    let models = TrellisModels::resolve(args.models.as_deref(), args.dinov2.as_deref(), &hub)?;
    let (profile, config) = image_sources(&args, models.is_tiny()).resolve()?;
    if config.pipeline != PipelineKind::Trellis {
        bail!(
            "profile {profile} turns text into 3D (pipeline: {}); --image needs an image profile: image-quality, image-speed or image-development",
            config.pipeline.name()
        );
    }
    if args.print_config {
        print!("# profile: {profile}\n{}", config.to_yaml());
        return Ok(Outcome::Success);
    }
    // Fail on a bad output name or an unreadable image before loading models.
    splatforge_splat::SplatFormat::from_path(&args.output)?;
    let image =
        std::fs::read(&image_path).with_context(|| format!("reading {}", image_path.display()))?;
    splatforge_trellis::preprocess::decode_image(&image)
        .with_context(|| image_path.display().to_string())?;
    let device = device(args.device.as_deref(), 0)?;

    let t0 = Instant::now();
    let runner = TrellisRunner::load(models, &device, &profile, config)?;
    let load = t0.elapsed();
    eprintln!(
        "loaded TRELLIS {} on {:?} in {:.1} s (profile {profile})",
        runner.models().dir.display(),
        device,
        load.as_secs_f64()
    );

    let first_seed = args.seed.unwrap_or(runner.config().seed);
    let mut totals = Vec::new();
    for run in 1..=args.repeat {
        let seed = first_seed.wrapping_add(run - 1);
        let mut bars = Bars::new();
        let out = runner
            .generate(&image, Some(seed), |p| {
                match p {
                    Progress::Started { stage, steps } => bars.start(stage.name(), steps as u64),
                    Progress::Step { done, total, .. } => {
                        bars.step(done as u64, total as u64, None)
                    }
                    Progress::Finished { elapsed, .. } => bars.finish(elapsed),
                }
                ControlFlow::Continue(())
            })
            .with_context(|| format!("generating from {}", image_path.display()))?;
        drop(bars);
        let last = run == args.repeat;
        if let (true, Some(dir)) = (last, &args.save_views) {
            save_cutout(dir, &out.cutout)?;
        }
        let write = if last {
            let t0 = Instant::now();
            args.encoding.write(&out.gaussians, &args.output)?;
            let d = t0.elapsed();
            warn_if_invalid(&out.gaussians, &args.output);
            Some((d, args.output.as_path()))
        } else {
            None
        };
        totals.push(out.total() + write.map_or(Duration::ZERO, |(d, _)| d));
        if args.json {
            println!("{}", json(&runner, load, (run, args.repeat), &out, write));
            continue;
        }
        if args.repeat > 1 {
            println!("run {run}/{} (seed {seed})", args.repeat);
        }
        let mut rows = out.timings.clone();
        if let Some((d, _)) = write {
            rows.push(("write", d));
        }
        print!("{}", named_timing_table(&rows));
        if last {
            println!(
                "wrote {} ({} Gaussians from {} voxels, seed {})",
                args.output.display(),
                out.gaussians.len(),
                out.voxels,
                out.seed
            );
        }
    }
    if !args.json && args.repeat > 1 {
        let list: Vec<String> = totals.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        println!(
            "total ms per run: {} (median {:.1})",
            list.join(", "),
            median_ms(&mut totals)
        );
    }
    Ok(Outcome::Success)
}
