//! `splatforge generate`: text prompt → splat file, through the pipeline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use splatforge_diffusion::ModelSource;
use splatforge_pipeline::{
    device_name, parse_device, resolve_models, ConfigSources, Generated, HubConfig, Observer,
    Pipeline, PipelineConfig, PipelineKind, Request, Stage,
};
use splatforge_splat::validate::{validate, ValidationConfig};

use super::convert::EncodingArgs;
use crate::Outcome;

/// Where the configuration comes from: shared by `generate` and `serve`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// Generation profile: speed, balanced (default), quality, memory, development.
    #[arg(long)]
    pub profile: Option<String>,
    /// YAML file merged over the profile (keys as in profiles/*.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set fit.iters=300 --set sds.sds_iters=0` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ConfigArgs {
    pub fn sources(&self) -> ConfigSources {
        ConfigSources {
            profile: self.profile.clone(),
            config_file: self.config.clone(),
            sets: self.sets.clone(),
        }
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "image"])))]
pub struct Args {
    /// The text prompt: text → 3D with MVDream profiles (the default), or through a FLUX.1-schnell image and TRELLIS with a flux-trellis profile (text-image-quality, text-image-development) or --flux.
    #[arg(long)]
    pub(super) prompt: Option<String>,
    /// An image (PNG, JPEG, WebP or still GIF; RGBA, or RGB on a plain background; EXIF orientation applied) → 3D with TRELLIS (image profiles: image-quality, the default, image-speed, image-development).
    #[arg(long, value_name = "FILE")]
    pub(super) image: Option<PathBuf>,
    /// Output; its extension picks the format: .ply or .spz (the splat), .glb (a mesh of it, as `splatforge mesh` with its defaults).
    #[arg(short, long)]
    pub(super) output: PathBuf,
    #[command(flatten)]
    pub(super) config: ConfigArgs,
    /// Seed (default: the profile's `seed`).
    #[arg(long)]
    pub(super) seed: Option<u64>,
    /// Models: a folder (diffusers layout, or one from `splatforge models make-tiny`), an LDM checkpoint, or hf:ORG/NAME[@REV][:FILE]. Default: MVDream from the Hugging Face cache. With --image: a TRELLIS folder (pipeline.json + ckpts/, e.g. from `models make-random --family trellis`) or hf:ORG/NAME[@REV]; default hf:microsoft/TRELLIS-image-large.
    #[arg(long, value_name = "DIR")]
    pub(super) models: Option<String>,
    /// With --prompt: FLUX.1-schnell for a flux-trellis profile (text → image → TRELLIS): a diffusers-layout folder (e.g. `flux-schnell-diffusers/` from `models make-tiny`) or hf:ORG/NAME[@REV]; default hf:black-forest-labs/FLUX.1-schnell. Given without --profile, picks text-image-quality (text-image-development with tiny TRELLIS models); TRELLIS comes from --models as with --image.
    #[arg(long, value_name = "DIR")]
    pub(super) flux: Option<String>,
    /// With --image: DINOv2 weights (a file or hf:ORG/NAME). Default: the one inside the TRELLIS folder, else torch hub's cache, else hf:facebook/dinov2-with-registers-large.
    #[arg(long, value_name = "SPEC")]
    pub(super) dinov2: Option<String>,
    /// With --image (or a flux-trellis profile): the matte network's weights for pictures without alpha (sets matte.weights): a .safetensors/.pth file, a folder with model.safetensors, or hf:ORG/NAME (e.g. hf:ZhengPeng7/BiRefNet_lite). Default: birefnet/ (birefnet_lite/ for matte.method birefnet-lite) in the TRELLIS folder, else hf:ZhengPeng7/BiRefNet (_lite). `--set matte.method=threshold` uses no network.
    #[arg(long, value_name = "SPEC")]
    pub(super) matte: Option<String>,
    /// With --image: sampler steps of stage 1, the sparse structure (sets trellis.sparse_structure_steps).
    #[arg(long, value_name = "N")]
    pub(super) ss_steps: Option<usize>,
    /// With --image: guidance strength of stage 1 (sets trellis.sparse_structure_cfg).
    #[arg(long, value_name = "CFG")]
    pub(super) ss_cfg: Option<f64>,
    /// With --image: sampler steps of stage 2, the structured latent (sets trellis.slat_steps).
    #[arg(long, value_name = "N")]
    pub(super) slat_steps: Option<usize>,
    /// With --image: guidance strength of stage 2 (sets trellis.slat_cfg).
    #[arg(long, value_name = "CFG")]
    pub(super) slat_cfg: Option<f64>,
    /// With --image: both sampling stages' initial noise from this safetensors file instead of the seed, for parity runs against the official pipeline (`tools/trellis_reference.py --dump-noise` records its torch.randn draws): `ss_noise` [1, C, R, R, R] f32, `slat_noise` [N, C] f32 with one row per voxel in (batch, x, y, z) order, optional `coords` [N, 4] i32 (then rows are matched by voxel). The voxels this noise decodes to must be the file's.
    #[arg(long, value_name = "FILE")]
    pub(super) noise: Option<PathBuf>,
    /// With --image: stage 2 and the decoder on the voxels of this safetensors file instead of a sampled structure (stage 1 skipped, as the official run_detail_variation; stage 2's noise is the seed's stream from its start): `coords` [N, 4] (0, x, y, z) or [N, 3] integers, or `occupancy` [R, R, R] (occupied where not 0), R the model's grid (64).
    #[arg(long, value_name = "FILE")]
    pub(super) structure: Option<PathBuf>,
    /// With --image: write what the last run sampled as safetensors: `coords` [N, 4] i32 (the voxels, in the order of the latent rows and of the Gaussians), `ss_noise`, `ss_latent`, `slat_noise`, `slat` (de-normalised) in f32; --noise reads such a file back.
    #[arg(long, value_name = "FILE")]
    pub(super) save_latents: Option<PathBuf>,
    /// cpu, cuda or cuda:N (default: the first GPU when built with CUDA, else the CPU).
    #[arg(long)]
    pub(super) device: Option<String>,
    /// Also write the generated views and their alpha masks (PNG) to this folder (text → 3D); with --image, the 518² RGBA cut-out the 3D stage sees (`cutout.png`); with a flux-trellis profile, FLUX's picture (`flux.png`) and the cut-out.
    #[arg(long, value_name = "DIR")]
    pub(super) save_views: Option<PathBuf>,
    /// Print the resolved configuration (YAML) and exit.
    #[arg(long)]
    pub(super) print_config: bool,
    /// Print one JSON object per generation on stdout instead of the timing table: profile, models, device, run, seed, stage times and total (ms), model load and warm-up times (ms), Gaussians, fit PSNR, whether the latents were finite, GPU memory in use after the run (whole device, from the driver), and the output path (on the run that wrote it).
    #[arg(long)]
    pub(super) json: bool,
    /// Generate N times with the models loaded once, with seeds SEED, SEED+1, …; each run reports its timings, the last one is written.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) repeat: u64,
    /// After loading, run one tiny generation (as `serve` does) and report its time, so that the timed runs do not pay first-use costs.
    #[arg(long)]
    pub(super) warm_up: bool,
    #[command(flatten)]
    pub(super) encoding: EncodingArgs,
}

/// One progress bar per stage (hidden when stderr is not a terminal).
pub(super) struct Bars {
    multi: MultiProgress,
    current: Option<ProgressBar>,
}

impl Bars {
    pub(super) fn new() -> Self {
        Bars {
            multi: MultiProgress::new(),
            current: None,
        }
    }

    /// A bar for stage `name` with `steps` steps (0: a spinner).
    pub(super) fn start(&mut self, name: &str, steps: u64) {
        let bar = if steps > 0 {
            let b = self.multi.add(ProgressBar::new(steps));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        } else {
            let b = self.multi.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{prefix:>10} {spinner} {msg}")
                    .expect("valid template"),
            );
            b
        };
        bar.set_prefix(name.to_string());
        self.current = Some(bar);
    }

    pub(super) fn step(&mut self, done: u64, total: u64, loss: Option<f64>) {
        if let Some(b) = &self.current {
            b.set_length(total);
            b.set_position(done);
            if let Some(l) = loss {
                b.set_message(format!("loss {l:.4}"));
            }
        }
    }

    pub(super) fn finish(&mut self, elapsed: Duration) {
        if let Some(b) = self.current.take() {
            b.finish_with_message(format!("{:.2} s", elapsed.as_secs_f64()));
        }
    }
}

impl Observer for Bars {
    fn stage_started(&mut self, stage: Stage, steps: u64) {
        self.start(stage.name(), steps);
    }

    fn step(&mut self, _stage: Stage, done: u64, total: u64, loss: Option<f64>) {
        Bars::step(self, done, total, loss);
    }

    fn stage_finished(&mut self, _stage: Stage, elapsed: Duration) {
        self.finish(elapsed);
    }
}

/// The device a flag names, or the default one.
pub fn device(spec: Option<&str>, ordinal: usize) -> Result<splatforge_diffusion::Device> {
    Ok(match spec {
        Some(s) => parse_device(s)?,
        None => splatforge_nn::best_device(ordinal),
    })
}

/// The stage timing table.
pub fn timing_table(timings: &[(Stage, Duration)]) -> String {
    let named: Vec<(&str, Duration)> = timings.iter().map(|(s, d)| (s.name(), *d)).collect();
    named_timing_table(&named)
}

/// The stage timing table of stages by name.
pub fn named_timing_table(timings: &[(&str, Duration)]) -> String {
    let total: Duration = timings.iter().map(|(_, d)| *d).sum();
    let w = timings
        .iter()
        .map(|(stage, _)| stage.len())
        .chain([10])
        .max()
        .unwrap_or(10);
    let mut s = format!("{:<w$} {:>11}   share\n", "stage", "time (ms)");
    for (stage, d) in timings {
        let share = if total.is_zero() {
            0.0
        } else {
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        };
        s += &format!(
            "{:<w$} {:>11.1} {:>6.1} %\n",
            stage,
            d.as_secs_f64() * 1e3,
            share
        );
    }
    s += &format!("{:<w$} {:>11.1}\n", "total", total.as_secs_f64() * 1e3);
    s
}

fn save_views(dir: &std::path::Path, views: &splatforge_fit::Views) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, v) in views.views.iter().enumerate() {
        let (w, h) = (v.width(), v.height());
        let over_white: Vec<u8> = v
            .composite([1.0; 3])
            .iter()
            .map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        let p = dir.join(format!("view_{i}.png"));
        super::write_png(
            &p,
            image::RgbImage::from_raw(w, h, over_white).expect("buffer size"),
        )?;
        if let Some(a) = &v.alpha {
            let mask: Vec<u8> = a
                .iter()
                .map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            let p = dir.join(format!("alpha_{i}.png"));
            super::write_png(
                &p,
                image::GrayImage::from_raw(w, h, mask).expect("buffer size"),
            )?;
        }
    }
    Ok(())
}

/// Milliseconds, for reports.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Milliseconds rounded to microseconds, for JSON.
pub(super) fn ms_json(d: Duration) -> f64 {
    (ms(d) * 1e3).round() / 1e3
}

/// The median of `v` (not empty), in milliseconds.
fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        ms(v[n / 2])
    } else {
        0.5 * (ms(v[n / 2 - 1]) + ms(v[n / 2]))
    }
}

/// `--print-config`: the profile's name, then the configuration it resolved to.
pub(super) fn print_config(profile: &str, config: &PipelineConfig) -> Outcome {
    print!("# profile: {profile}\n{}", config.to_yaml());
    Outcome::Success
}

/// After `--repeat N` runs (N > 1, no `--json`): each run's total and their median.
pub(super) fn print_run_totals(args: &Args, totals: &mut [Duration]) {
    if !args.json && args.repeat > 1 {
        let list: Vec<String> = totals.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        println!(
            "total ms per run: {} (median {:.1})",
            list.join(", "),
            median_ms(totals)
        );
    }
}

/// Once per command: what every run's JSON object repeats.
struct Session<'a> {
    profile: &'a str,
    pipe: &'a Pipeline,
    load: Duration,
    warm_up: Option<Duration>,
    runs: u64,
}

impl Session<'_> {
    /// The JSON object of run `run` (1-based); `output` when it wrote the file.
    fn json(&self, run: u64, out: &Generated, output: Option<&Path>) -> serde_json::Value {
        let stages: serde_json::Map<String, serde_json::Value> = out
            .timings
            .iter()
            .map(|(stage, d)| (stage.name().to_string(), ms_json(*d).into()))
            .collect();
        let memory = self.pipe.device_memory();
        serde_json::json!({
            "profile": self.profile,
            "models": self.pipe.models(),
            "device": device_name(self.pipe.device()),
            "run": run,
            "runs": self.runs,
            "seed": out.seed,
            "stages_ms": stages,
            "total_ms": ms_json(out.total()),
            "load_ms": ms_json(self.load),
            "warm_up_ms": self.warm_up.map(ms_json),
            "gaussians": out.gaussians.len(),
            "fit_psnr": out.fit_psnr,
            "latents_finite": out.latents_finite,
            "device_memory_used_bytes": memory.map(|m| m.used_bytes),
            "device_memory_total_bytes": memory.map(|m| m.total_bytes),
            "output": output.map(|p| p.display().to_string()),
        })
    }
}

/// The profile that fits tiny test models.
const TINY_MODELS_PROFILE: &str = "development";

/// The smallest UNet base width (`model_channels`, or diffusers'
/// `block_out_channels[0]`) of a real model: MVDream's and SD 2.1's are
/// 320, the tiny test models' 32.
const REAL_UNET_MIN_CHANNELS: u64 = 128;

/// The smallest LDM checkpoint of a real model, in bytes: MVDream's is
/// 1.7 GB or more, the tiny one's well under 1 MB.
const REAL_CHECKPOINT_MIN_BYTES: u64 = 64 << 20;

/// Whether `models` are tiny random-weight test models (`models
/// make-tiny`, `models make-random --size tiny`), from the UNet's base
/// width in a diffusers folder's `unet/config.json`, or a local LDM
/// checkpoint's size. Anything unreadable counts as not tiny: loading
/// reports what is wrong with it.
fn is_tiny(models: &ModelSource) -> bool {
    match models {
        ModelSource::Diffusers(dir) => {
            let Ok(text) = std::fs::read_to_string(dir.join("unet/config.json")) else {
                return false;
            };
            let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
                return false;
            };
            let base = config["model_channels"]
                .as_u64()
                .or_else(|| config["block_out_channels"][0].as_u64());
            base.is_some_and(|c| c < REAL_UNET_MIN_CHANNELS)
        }
        ModelSource::Ldm { checkpoint, .. } => {
            std::fs::metadata(checkpoint).is_ok_and(|m| m.len() < REAL_CHECKPOINT_MIN_BYTES)
        }
        ModelSource::HubDiffusers { .. } | ModelSource::HubLdm { .. } => false,
    }
}

/// `sources` with the profile that fits `models`: tiny test models
/// without `--profile` get [`TINY_MODELS_PROFILE`] (any other profile runs
/// for many minutes on them to make noise); with another profile asked
/// for, a warning says which one fits.
pub(super) fn profile_for_models(
    mut sources: ConfigSources,
    models: &ModelSource,
) -> ConfigSources {
    if !is_tiny(models) {
        return sources;
    }
    match sources.profile.as_deref() {
        None => {
            eprintln!("note: tiny test models; using --profile {TINY_MODELS_PROFILE} (pass --profile to choose another)");
            sources.profile = Some(TINY_MODELS_PROFILE.to_string());
        }
        Some(TINY_MODELS_PROFILE) => {}
        Some(other) => eprintln!(
            "warning: tiny test models with profile {other}: this takes minutes and makes noise; --profile {TINY_MODELS_PROFILE} fits them"
        ),
    }
    sources
}

/// Warns when `g` would fail `splatforge validate` (the validators' checks
/// at their defaults), naming the failed checks.
pub(super) fn warn_if_invalid(g: &splatforge_splat::Gaussians, output: &Path) {
    // A mesh is no splat: the validator's data checks do not apply to it.
    if super::mesh::is_glb(output) {
        return;
    }
    let report = validate(g, &ValidationConfig::default());
    if !report.passed {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        eprintln!(
            "warning: {} would fail `splatforge validate` ({})",
            output.display(),
            failed.join("; ")
        );
    }
}

/// Whether `--prompt` takes the FLUX → TRELLIS path: `--flux` given, or the profile says
/// `pipeline: flux-trellis` (a configuration that does not resolve is the MVDream path's
/// to report).
fn text_via_image(args: &Args) -> bool {
    args.flux.is_some()
        || args
            .config
            .sources()
            .resolve()
            .is_ok_and(|(_, c)| c.pipeline == PipelineKind::FluxTrellis)
}

pub fn run(args: Args) -> Result<Outcome> {
    if args.image.is_some() {
        return super::generate_image::run(args);
    }
    if args.noise.is_some() || args.save_latents.is_some() || args.structure.is_some() {
        bail!("--noise, --structure and --save-latents are for --image (TRELLIS)");
    }
    if text_via_image(&args) {
        return super::generate_image::run_text(args);
    }
    if args.dinov2.is_some()
        || args.matte.is_some()
        || args.ss_steps.is_some()
        || args.ss_cfg.is_some()
        || args.slat_steps.is_some()
        || args.slat_cfg.is_some()
    {
        bail!(
            "--dinov2, --matte, --ss-steps, --ss-cfg, --slat-steps and --slat-cfg are for TRELLIS (--image, or --prompt with a flux-trellis profile)"
        );
    }
    let prompt = args.prompt.clone().unwrap_or_default();
    let models = resolve_models(args.models.as_deref())?;
    let (profile, config) = profile_for_models(args.config.sources(), &models).resolve()?;
    if config.pipeline != PipelineKind::Mvdream {
        bail!(
            "profile {profile} turns images into 3D (pipeline: {}); give --image FILE, or a text profile for --prompt",
            config.pipeline.name()
        );
    }
    if args.print_config {
        return Ok(print_config(&profile, &config));
    }
    if prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    // Fail on a bad output name before loading models.
    super::mesh::check_output_name(&args.output)?;
    let device = device(args.device.as_deref(), 0)?;

    let t0 = Instant::now();
    let pipe = Pipeline::load(&models, &device, HubConfig::from_env(), &profile, config)?;
    let load = t0.elapsed();
    eprintln!(
        "loaded {} on {:?} in {:.1} s (profile {profile})",
        pipe.models(),
        device,
        load.as_secs_f64()
    );
    let warm_up = if args.warm_up {
        let d = pipe.warm_up()?;
        eprintln!("warmed up in {:.1} s", d.as_secs_f64());
        Some(d)
    } else {
        None
    };
    let session = Session {
        profile: &profile,
        pipe: &pipe,
        load,
        warm_up,
        runs: args.repeat,
    };

    let first_seed = args.seed.unwrap_or(pipe.config().seed);
    let mut totals = Vec::new();
    for run in 1..=args.repeat {
        let seed = first_seed.wrapping_add(run - 1);
        let mut bars = Bars::new();
        let out = pipe.generate(
            &Request {
                prompt: prompt.clone(),
                seed: Some(seed),
            },
            &|| false,
            &mut bars,
        )?;
        drop(bars);
        if !out.latents_finite {
            eprintln!("warning: run {run}: the diffusion stage's latents were not all finite (NaN or Inf)");
        }
        totals.push(out.total());
        let last = run == args.repeat;
        if last {
            args.encoding.write(&out.gaussians, &args.output)?;
            warn_if_invalid(&out.gaussians, &args.output);
            if let Some(dir) = &args.save_views {
                save_views(dir, &out.views)?;
            }
        }
        if args.json {
            let written = last.then_some(args.output.as_path());
            println!("{}", session.json(run, &out, written));
            continue;
        }
        if args.repeat > 1 {
            println!("run {run}/{} (seed {seed})", args.repeat);
        }
        print!("{}", timing_table(&out.timings));
        if last {
            // No fit (`sds.from_scratch`): no PSNR to the views.
            let psnr = if out.fit_psnr.is_nan() {
                "no fit".to_string()
            } else {
                format!("fit PSNR {:.2} dB", out.fit_psnr)
            };
            println!(
                "wrote {} ({} Gaussians, seed {}, {psnr})",
                args.output.display(),
                out.gaussians.len(),
                out.seed,
            );
        }
    }
    print_run_totals(&args, &mut totals);
    Ok(Outcome::Success)
}
