//! `splatforge generate --image IN.png -o OUT.ply|.spz`: image → splat file with TRELLIS
//! (profiles with `pipeline: trellis`; models as [`super::trellis_generator`] finds them),
//! and `generate --prompt` with a `pipeline: flux-trellis` profile: text → FLUX.1-schnell
//! image → TRELLIS ([`super::flux_trellis`]).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::flux_trellis::{
    flux_source, FluxTrellisRunner, StageProgress, DEFAULT_TEXT_IMAGE_PROFILE,
    TINY_TEXT_IMAGE_PROFILE,
};
use super::generate::{
    device, ms_json, named_timing_table, print_config, print_run_totals, warn_if_invalid, Args,
    Bars,
};
use super::trellis_generator::{
    matte_weights_set, ImageGenerated, TrellisModels, TrellisRunner, DEFAULT_IMAGE_PROFILE,
    TINY_TRELLIS_PROFILE,
};
use crate::Outcome;
use anyhow::{bail, Context, Result};
use splatforge_nn::hub::HubConfig;
use splatforge_pipeline::{device_name, ConfigSources, PipelineKind};
use splatforge_trellis::noise::GivenNoise;
use splatforge_trellis::structure::GivenStructure;

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
    if let Some(spec) = &args.matte {
        sources.sets.push(matte_weights_set(spec));
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
        "pipeline": runner.config().pipeline.name(),
        "models": models.dir.display().to_string(),
        "dinov2": models.dinov2.display().to_string(),
        "device": device_name(runner.device()),
        "run": run,
        "runs": runs,
        "seed": out.seed,
        "matte": out.matte,
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
    if args.flux.is_some() {
        bail!("--flux is for --prompt (text → FLUX image → TRELLIS); --image skips FLUX");
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
        return Ok(print_config(&profile, &config));
    }
    // Fail on a bad output name, an unreadable image or noise file before loading models.
    super::mesh::check_output_name(&args.output)?;
    let image =
        std::fs::read(&image_path).with_context(|| format!("reading {}", image_path.display()))?;
    splatforge_trellis::preprocess::decode_image(&image)
        .with_context(|| image_path.display().to_string())?;
    let noise = args
        .noise
        .as_deref()
        .map(GivenNoise::read)
        .transpose()
        .context("--noise")?;
    let structure = args
        .structure
        .as_deref()
        .map(GivenStructure::read)
        .transpose()
        .context("--structure")?;
    if structure.is_some() && args.save_latents.is_some() {
        bail!("--save-latents keeps stage 1's latents, and --structure skips stage 1");
    }
    let device = device(args.device.as_deref(), 0)?;

    let t0 = Instant::now();
    let runner = TrellisRunner::load(models, &device, &profile, config)?
        .for_parity(noise, args.save_latents.is_some())
        .on_structure(structure);
    let load = t0.elapsed();
    eprintln!(
        "loaded TRELLIS {} on {:?} in {:.1} s (profile {profile})",
        runner.models().dir.display(),
        device,
        load.as_secs_f64()
    );
    let first_seed = args.seed.unwrap_or(runner.config().seed);
    runs(
        &args,
        first_seed,
        |seed, bars| {
            let out = runner
                .generate(&image, Some(seed), |p| bars(p.into()))
                .with_context(|| format!("generating from {}", image_path.display()))?;
            Ok((out, None))
        },
        |out, run, write| {
            let mut v = json(&runner, load, run, out, write);
            v["noise"] = args.noise.as_ref().map(|p| p.display().to_string()).into();
            v["structure"] = args
                .structure
                .as_ref()
                .map(|p| p.display().to_string())
                .into();
            v
        },
    )
}

/// `generate --prompt` with a flux-trellis profile (or `--flux`): text → FLUX.1-schnell →
/// matte → TRELLIS (see [`super::flux_trellis`]).
pub fn run_text(args: Args) -> Result<Outcome> {
    let prompt = args.prompt.clone().expect("called with --prompt");
    if args.warm_up {
        bail!("--warm-up is for MVDream profiles; with FLUX → TRELLIS, --repeat N times runs after one load");
    }
    let hub = HubConfig::from_env();
    let resolve_models =
        || TrellisModels::resolve(args.models.as_deref(), args.dinov2.as_deref(), &hub);
    let mut sources = image_sources(&args, false);
    // Without --profile the TRELLIS folder picks it (tiny models: the development one);
    // with one, --print-config needs no models.
    let mut models = None;
    if args.config.profile.is_none() {
        let found = resolve_models()?;
        let profile = if found.is_tiny() {
            eprintln!("note: tiny TRELLIS models; using --profile {TINY_TEXT_IMAGE_PROFILE} (pass --profile to choose another)");
            TINY_TEXT_IMAGE_PROFILE
        } else {
            DEFAULT_TEXT_IMAGE_PROFILE
        };
        sources.profile = Some(profile.to_string());
        models = Some(found);
    }
    let (profile, config) = sources.resolve()?;
    if config.pipeline != PipelineKind::FluxTrellis {
        bail!(
            "profile {profile} runs the {} pipeline; --flux needs a text-via-image profile: text-image-quality or text-image-development",
            config.pipeline.name()
        );
    }
    if args.print_config {
        return Ok(print_config(&profile, &config));
    }
    if prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    super::mesh::check_output_name(&args.output)?;
    let flux = flux_source(args.flux.as_deref())?;
    let models = match models {
        Some(m) => m,
        None => resolve_models()?,
    };
    let device = device(args.device.as_deref(), 0)?;

    let t0 = Instant::now();
    let runner = FluxTrellisRunner::load(&flux, models, &device, &profile, config, hub)?;
    let load = t0.elapsed();
    eprintln!(
        "loaded FLUX {} and TRELLIS {} on {:?} in {:.1} s (profile {profile})",
        runner.flux_source(),
        runner.trellis().models().dir.display(),
        device,
        load.as_secs_f64()
    );
    let first_seed = args.seed.unwrap_or(runner.trellis().config().seed);
    let flux_prompt = runner.trellis().config().flux.prompt(&prompt);
    runs(
        &args,
        first_seed,
        |seed, bars| {
            let done = runner
                .generate(&prompt, Some(seed), bars)
                .with_context(|| format!("generating {prompt:?}"))?;
            Ok((done.out, Some(done.image)))
        },
        |out, run, write| {
            let mut v = json(runner.trellis(), load, run, out, write);
            v["prompt"] = prompt.clone().into();
            v["flux_prompt"] = flux_prompt.clone().into();
            v["flux"] = runner.flux_source().into();
            v
        },
    )
}

/// `--repeat` runs of `generate(seed, progress)` → the table or JSON (`json(out, (run,
/// runs), write)`) of each, the last one written, with `--save-views` its FLUX image
/// (`flux.png`, when there is one) and cut-out, with `--save-latents` its latents.
fn runs(
    args: &Args,
    first_seed: u64,
    mut generate: impl FnMut(
        u64,
        &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<(ImageGenerated, Option<image::RgbImage>)>,
    mut json: impl FnMut(
        &ImageGenerated,
        (u64, u64),
        Option<(Duration, &std::path::Path)>,
    ) -> serde_json::Value,
) -> Result<Outcome> {
    let mut totals = Vec::new();
    for run in 1..=args.repeat {
        let seed = first_seed.wrapping_add(run - 1);
        let mut bars = Bars::new();
        let (out, flux_image) = generate(seed, &mut |p| {
            match p {
                StageProgress::Started { stage, steps } => bars.start(stage, steps as u64),
                StageProgress::Step { done, total } => bars.step(done as u64, total as u64, None),
                StageProgress::Finished { elapsed } => bars.finish(elapsed),
            }
            ControlFlow::Continue(())
        })?;
        drop(bars);
        let last = run == args.repeat;
        if let (true, Some(dir)) = (last, &args.save_views) {
            save_cutout(dir, &out.cutout)?;
            if let Some(image) = flux_image {
                super::write_png(&dir.join("flux.png"), image)?;
            }
        }
        if let (true, Some(path), Some(latents)) = (last, &args.save_latents, &out.latents) {
            latents.save(path)?;
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
            println!("{}", json(&out, (run, args.repeat), write));
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
            let noise = match &args.noise {
                Some(file) => format!("noise from {}", file.display()),
                None => format!("seed {}", out.seed),
            };
            println!(
                "wrote {} ({} Gaussians from {} voxels, {noise})",
                args.output.display(),
                out.gaussians.len(),
                out.voxels,
            );
        }
    }
    print_run_totals(args, &mut totals);
    Ok(Outcome::Success)
}
