//! `splatforge bench`: every pipeline path timed the same way, so one table
//! answers "how fast is this here" and a second run answers "did it get
//! slower" (issue 18).
//!
//! Each case (a profile with its models) is loaded once, run once untimed
//! (first-use costs: kernel compilation, cuDNN plans, allocator growth),
//! then `--repeat` times with seeds 0, 1, …; per stage and in total the
//! report keeps the median and the 90th percentile (nearest rank) of the
//! timed runs, plus load time, GPU memory in use after the runs (the whole
//! device, from the driver) and the Gaussians out.
//!
//! `--suite quick` runs the `development` (text → MVDream → fit),
//! `image-development` (image → TRELLIS) and `text-image-development`
//! (text → FLUX → TRELLIS) profiles; without `--models` / `--flux` /
//! `--trellis` it writes tiny random-weight models to a temporary folder
//! first, so it needs nothing but the binary (about a minute on 2 CPU
//! cores). `--suite full` runs every built-in profile of each path whose
//! models are given (`--models` for the MVDream profiles, `--trellis` for
//! the image ones, both `--flux` and `--trellis` for text via an image);
//! the development profiles are left out of `full` (they exist for tiny
//! models), and so are the `reference-*` ones (the 404 reference miner's
//! settings, for timing beside it: tools/reference_miner.py).
//!
//! `--compare BASE.json` prints each case's ratio to a previous report
//! (this run / base, per stage and in total) and fails when a total
//! median grew by more than `--threshold` (default 1.25×); `--input
//! RUN.json` compares a saved report instead of running.
//!
//! `--suite service` measures the HTTP service under load instead: results per
//! hour and latency of `splatforge serve` at a fixed concurrency, per profile
//! and workers per device (see [`service`]).

mod service;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use image::{Rgba, RgbaImage};
use serde::{Deserialize, Serialize};
use splatforge_pipeline::{
    device_name, resolve_models, HubConfig, Pipeline, PipelineConfig, PipelineKind, Request,
    PROFILES,
};
use splatforge_splat::write_atomic;

use super::flux_trellis::{flux_source, FluxTrellisRunner};
use super::generate::device;
use super::trellis_generator::{TrellisModels, TrellisRunner};
use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The development profiles of both paths (tiny models unless given).
    Quick,
    /// Every other built-in profile of each path whose models are given.
    Full,
    /// `splatforge serve` under load: results per hour and latency per workers count
    /// (`speed` and `image-speed` unless --profile; their models must be given).
    Service,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which cases to run.
    #[arg(long, value_enum, default_value = "quick")]
    suite: Suite,
    /// Run only these profiles (repeatable; built-in names or YAML files).
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// Text → 3D models (as for `generate --models`). Quick suite default: tiny random models.
    #[arg(long)]
    models: Option<String>,
    /// TRELLIS folder for the image profiles (as `generate --image --models`). Quick suite
    /// default: tiny random models.
    #[arg(long)]
    trellis: Option<String>,
    /// FLUX for the text → image → 3D profiles (as `generate --flux`). Quick suite default:
    /// tiny random models.
    #[arg(long)]
    flux: Option<String>,
    /// The image of the image cases. Default: a synthetic opaque 1024² disc on white (the matte runs).
    #[arg(long)]
    image: Option<PathBuf>,
    /// The prompt of the text cases.
    #[arg(long, default_value = "a red chair")]
    prompt: String,
    /// Timed runs per case (after one untimed run); quick and full suites.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Service suite: workers per device to measure, one server each (default 1,2,4).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Service suite: clients sending at once, each its next request when answered (default 4).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Service suite: seconds of timed requests per case (default 60).
    #[arg(long, value_name = "SECONDS", conflicts_with = "requests")]
    duration: Option<f64>,
    /// Service suite: timed requests per case, instead of --duration.
    #[arg(long)]
    requests: Option<usize>,
    /// cpu or cuda:N (default: the first GPU in a CUDA build, else the CPU).
    #[arg(long)]
    device: Option<String>,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a Markdown table (what BENCHMARKS.md quotes).
    #[arg(long)]
    md: Option<PathBuf>,
    /// A previous JSON report: print the ratios and fail on a regression.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// A regression is a total median more than this many times the base's.
    #[arg(long, default_value_t = 1.25)]
    threshold: f64,
    /// Compare this saved JSON report instead of running (needs --compare).
    #[arg(long, requires = "compare")]
    input: Option<PathBuf>,
}

/// Median and 90th percentile of a set of runs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median_ms: f64,
    pub p90_ms: f64,
}

impl Spread {
    /// Of a non-empty set of durations; p90 is the nearest-rank percentile.
    fn of(runs: &[Duration]) -> Spread {
        let mut v: Vec<f64> = runs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median_ms = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Spread {
            median_ms,
            p90_ms: nearest_rank(&v, 0.9),
        }
    }
}

/// The `q` quantile (0 < q ≤ 1) of sorted, non-empty values by nearest rank: the smallest
/// value with at least a fraction `q` of the values at or below it.
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub name: String,
    #[serde(flatten)]
    pub spread: Spread,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    /// The profile's name.
    pub name: String,
    /// `mvdream` or `trellis`.
    pub pipeline: String,
    pub models: String,
    pub load_ms: f64,
    pub warm_up_ms: f64,
    pub runs: usize,
    pub stages: Vec<StageReport>,
    pub total: Spread,
    /// Gaussians out of the last run.
    pub gaussians: usize,
    /// GPU memory in use after the runs (whole device); none on the CPU.
    pub device_memory_used_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub splatforge: String,
    pub device: String,
    pub suite: String,
    pub cases: Vec<CaseReport>,
}

/// One run's stage times, by name, in pipeline order.
type StageTimes = Vec<(String, Duration)>;

pub fn run(args: Args) -> Result<Outcome> {
    if args.suite == Suite::Service {
        return service::run(&args);
    }
    service::refuse_service_flags(&args)?;
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let report = match &args.input {
        Some(path) => read_report(path)?,
        None => run_suite(&args)?,
    };
    if args.input.is_none() {
        print!("{}", markdown(&report, None));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        write_atomic(path, text.as_bytes())?;
    }
    let base = args.compare.as_deref().map(read_report).transpose()?;
    if let Some(path) = &args.md {
        write_atomic(path, markdown(&report, base.as_ref()).as_bytes())?;
    }
    let Some(base) = base else {
        return Ok(Outcome::Success);
    };
    let regressions = compare(&report, &base, args.threshold);
    print!("{}", markdown(&report, Some(&base)));
    if regressions.is_empty() {
        println!(
            "no regression beyond {:.2}× of {}",
            args.threshold,
            args.compare.as_ref().expect("base given").display()
        );
        Ok(Outcome::Success)
    } else {
        for r in &regressions {
            eprintln!("regression: {r}");
        }
        Ok(Outcome::CheckFailed)
    }
}

fn read_report(path: &Path) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a bench report", path.display()))
}

/// The cases' profiles: `--profile`, else the suite's.
fn profiles(args: &Args) -> Vec<String> {
    if !args.profiles.is_empty() {
        return args.profiles.clone();
    }
    match args.suite {
        Suite::Quick => vec![
            "development".into(),
            "image-development".into(),
            "text-image-development".into(),
        ],
        Suite::Full => PROFILES
            .iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| !name.contains("development") && !name.starts_with("reference-"))
            .collect(),
        Suite::Service => vec!["speed".into(), "image-speed".into()],
    }
}

fn run_suite(args: &Args) -> Result<Report> {
    let device = device(args.device.as_deref(), 0)?;
    let hub = HubConfig::from_env();
    let mut tiny = TinyModels::new(args.suite)?;
    let mut cases = Vec::new();
    for name in profiles(args) {
        let config = PipelineConfig::profile(&name)?;
        // Only the models this case's pipeline runs: the quick suite writes tiny ones on first use.
        let kind = config.pipeline;
        let case = match kind {
            PipelineKind::Mvdream => match given(&args.models, || tiny.text())? {
                Some(models) => Some(text_case(args, &device, &hub, &name, config, &models)?),
                None => None,
            },
            PipelineKind::Trellis => match given(&args.trellis, || tiny.trellis())? {
                Some(trellis) => {
                    let models = TrellisModels::resolve(Some(&trellis), None, &hub)?;
                    Some(image_case(args, &device, &name, config, models)?)
                }
                None => None,
            },
            PipelineKind::FluxTrellis => {
                let flux = given(&args.flux, || tiny.flux())?;
                match (flux, given(&args.trellis, || tiny.trellis())?) {
                    (Some(flux), Some(trellis)) => {
                        let models = TrellisModels::resolve(Some(&trellis), None, &hub)?;
                        let flux = flux_source(Some(&flux))?;
                        let t0 = Instant::now();
                        let runner = FluxTrellisRunner::load(
                            &flux,
                            models,
                            &device,
                            &name,
                            config,
                            hub.clone(),
                        )?;
                        Some(text_image_case(args, &name, runner, t0.elapsed())?)
                    }
                    _ => None,
                }
            }
        };
        let Some(case) = case else {
            eprintln!(
                "skipping {name}: the {} pipeline's models were not given (--models, --flux, --trellis)",
                kind.name()
            );
            continue;
        };
        eprintln!(
            "{name}: total median {:.1} ms, p90 {:.1} ms ({} runs)",
            case.total.median_ms, case.total.p90_ms, case.runs
        );
        cases.push(case);
    }
    if cases.is_empty() {
        bail!("no case ran: give the models of at least one profile");
    }
    Ok(Report {
        splatforge: env!("CARGO_PKG_VERSION").to_string(),
        device: device_name(&device),
        suite: format!("{:?}", args.suite).to_lowercase(),
        cases,
    })
}

/// The models a flag gives, else the tiny ones `tiny` writes (quick suite), else none.
fn given(
    flag: &Option<String>,
    tiny: impl FnOnce() -> Option<Result<String>>,
) -> Result<Option<String>> {
    flag.clone().map(Ok).or_else(tiny).transpose()
}

/// Tiny random-weight models for the quick suite, written to a temporary folder when a
/// case first needs them and removed with it.
struct TinyModels {
    scratch: Option<tempfile::TempDir>,
    diffusion: Option<splatforge_diffusion::TinyModels>,
    trellis: Option<PathBuf>,
}

impl TinyModels {
    /// None are made for the full suite.
    fn new(suite: Suite) -> Result<Self> {
        let scratch = match suite {
            Suite::Quick => Some(tempfile::tempdir().context("creating a temporary folder")?),
            Suite::Full | Suite::Service => None,
        };
        Ok(Self {
            scratch,
            diffusion: None,
            trellis: None,
        })
    }

    /// MVDream and FLUX (one writer makes both).
    fn diffusion(&mut self) -> Option<Result<&splatforge_diffusion::TinyModels>> {
        let dir = self.scratch.as_ref()?.path().join("diffusion");
        if self.diffusion.is_none() {
            let opts = splatforge_diffusion::TinyOptions {
                seed: 0,
                dtype: splatforge_diffusion::DType::F32,
            };
            match splatforge_diffusion::make_tiny(&dir, &opts).context("writing tiny models") {
                Ok(m) => self.diffusion = Some(m),
                Err(e) => return Some(Err(e)),
            }
        }
        self.diffusion.as_ref().map(Ok)
    }

    fn text(&mut self) -> Option<Result<String>> {
        self.diffusion()
            .map(|m| m.map(|m| m.diffusers_dir.display().to_string()))
    }

    fn flux(&mut self) -> Option<Result<String>> {
        self.diffusion()
            .map(|m| m.map(|m| m.flux_dir.display().to_string()))
    }

    fn trellis(&mut self) -> Option<Result<String>> {
        let dir = self.scratch.as_ref()?.path().join("trellis");
        if self.trellis.is_none() {
            let written = splatforge_trellis::pipeline::write_random_trellis(
                &dir,
                splatforge_trellis::stage1::ModelSize::Tiny,
                splatforge_diffusion::DType::F32,
                0,
            )
            .context("writing tiny TRELLIS models");
            if let Err(e) = written {
                return Some(Err(e));
            }
            self.trellis = Some(dir);
        }
        self.trellis.as_ref().map(|d| Ok(d.display().to_string()))
    }
}

/// Loads, warms up and times one text → 3D case.
fn text_case(
    args: &Args,
    device: &splatforge_diffusion::Device,
    hub: &HubConfig,
    name: &str,
    config: PipelineConfig,
    models: &str,
) -> Result<CaseReport> {
    let source = resolve_models(Some(models))?;
    let t0 = Instant::now();
    let pipe = Pipeline::load(&source, device, hub.clone(), name, config)?;
    let load = t0.elapsed();
    let run = |seed: u64| -> Result<(StageTimes, usize)> {
        let request = Request {
            prompt: args.prompt.clone(),
            seed: Some(seed),
        };
        let out = pipe.generate(&request, &|| false, &mut ())?;
        let stages = out
            .timings
            .iter()
            .map(|(s, d)| (s.name().to_string(), *d))
            .collect();
        Ok((stages, out.gaussians.len()))
    };
    let (warm_up, runs) = warm_up_and_repeat(args.repeat, run)?;
    Ok(case_report(
        name,
        PipelineKind::Mvdream,
        pipe.models().to_string(),
        (load, warm_up),
        &runs,
        pipe.device_memory().map(|m| m.used_bytes),
    ))
}

/// Loads, warms up and times one image → 3D case.
fn image_case(
    args: &Args,
    device: &splatforge_diffusion::Device,
    name: &str,
    config: PipelineConfig,
    models: TrellisModels,
) -> Result<CaseReport> {
    let image = match &args.image {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => super::encode_png(disc_image())?,
    };
    let folder = models.dir.display().to_string();
    let t0 = Instant::now();
    let runner = TrellisRunner::load(models, device, name, config)?;
    let load = t0.elapsed();
    let run = |seed: u64| -> Result<(StageTimes, usize)> {
        let out = runner.generate(&image, Some(seed), |_| ControlFlow::Continue(()))?;
        let stages = out
            .timings
            .iter()
            .map(|(s, d)| (s.to_string(), *d))
            .collect();
        Ok((stages, out.gaussians.len()))
    };
    let (warm_up, runs) = warm_up_and_repeat(args.repeat, run)?;
    Ok(case_report(
        name,
        PipelineKind::Trellis,
        folder,
        (load, warm_up),
        &runs,
        runner.device_memory().map(|m| m.used_bytes),
    ))
}

/// Loads, warms up and times one text → FLUX → TRELLIS case.
fn text_image_case(
    args: &Args,
    name: &str,
    runner: FluxTrellisRunner,
    load: Duration,
) -> Result<CaseReport> {
    let run = |seed: u64| -> Result<(StageTimes, usize)> {
        let out = runner.generate(&args.prompt, Some(seed), |_| ControlFlow::Continue(()))?;
        let stages = out
            .out
            .timings
            .iter()
            .map(|(s, d)| (s.to_string(), *d))
            .collect();
        Ok((stages, out.out.gaussians.len()))
    };
    let (warm_up, runs) = warm_up_and_repeat(args.repeat, run)?;
    let trellis = runner.trellis();
    Ok(case_report(
        name,
        PipelineKind::FluxTrellis,
        format!(
            "{} + {}",
            runner.flux_source(),
            trellis.models().dir.display()
        ),
        (load, warm_up),
        &runs,
        trellis.device_memory().map(|m| m.used_bytes),
    ))
}

/// A grey disc on white, 1024², opaque: a picture like the ones 404's orchestrator sends
/// (no alpha), so the image cases time the matte network too.
fn disc_image() -> RgbaImage {
    RgbaImage::from_fn(1024, 1024, |x, y| {
        let (dx, dy) = (x as f32 - 512.0, y as f32 - 480.0);
        if dx * dx + dy * dy < 320.0 * 320.0 {
            Rgba([120, 120, 135, 255])
        } else {
            Rgba([255, 255, 255, 255])
        }
    })
}

/// The report of one case from its timed runs (each: stage times, Gaussians out).
/// One untimed run (seed `u64::MAX`; first-use costs), then `repeat` runs with seeds
/// 0..repeat: the warm-up's time and each run's stage times and Gaussian count.
fn warm_up_and_repeat(
    repeat: usize,
    run: impl Fn(u64) -> Result<(StageTimes, usize)>,
) -> Result<(Duration, Vec<(StageTimes, usize)>)> {
    let t0 = Instant::now();
    run(u64::MAX)?;
    let warm_up = t0.elapsed();
    let runs = (0..repeat as u64).map(run).collect::<Result<Vec<_>>>()?;
    Ok((warm_up, runs))
}

fn case_report(
    name: &str,
    pipeline: PipelineKind,
    models: String,
    (load, warm_up): (Duration, Duration),
    runs: &[(StageTimes, usize)],
    device_memory_used_bytes: Option<u64>,
) -> CaseReport {
    let first = &runs[0].0;
    let stages = first
        .iter()
        .map(|(stage, _)| {
            let times: Vec<Duration> = runs
                .iter()
                .filter_map(|(t, _)| t.iter().find(|(s, _)| s == stage).map(|(_, d)| *d))
                .collect();
            StageReport {
                name: stage.clone(),
                spread: Spread::of(&times),
            }
        })
        .collect();
    let totals: Vec<Duration> = runs
        .iter()
        .map(|(t, _)| t.iter().map(|(_, d)| *d).sum())
        .collect();
    CaseReport {
        name: name.to_string(),
        pipeline: pipeline.name().to_string(),
        models,
        load_ms: load.as_secs_f64() * 1e3,
        warm_up_ms: warm_up.as_secs_f64() * 1e3,
        runs: runs.len(),
        stages,
        total: Spread::of(&totals),
        gaussians: runs.last().map_or(0, |(_, g)| *g),
        device_memory_used_bytes,
    }
}

/// The cases whose total median grew beyond `threshold` × the base's, described.
fn compare(report: &Report, base: &Report, threshold: f64) -> Vec<String> {
    report
        .cases
        .iter()
        .filter_map(|case| {
            let old = base.cases.iter().find(|b| b.name == case.name)?;
            let ratio = ratio(case.total.median_ms, old.total.median_ms)?;
            (ratio > threshold).then(|| {
                format!(
                    "{}: total median {:.1} ms against {:.1} ms ({ratio:.2}×, threshold {threshold:.2}×)",
                    case.name, case.total.median_ms, old.total.median_ms
                )
            })
        })
        .collect()
}

fn ratio(now: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| now / base)
}

/// The report as Markdown: one table per case, with a ratio column against `base`.
fn markdown(report: &Report, base: Option<&Report>) -> String {
    let mut s = format!(
        "splatforge {} on {}, suite {}\n",
        report.splatforge, report.device, report.suite
    );
    for case in &report.cases {
        let old = base.and_then(|b| b.cases.iter().find(|c| c.name == case.name));
        let memory = case
            .device_memory_used_bytes
            .map_or("n/a".to_string(), |b| {
                format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
            });
        s += &format!(
            "\n### {} ({}; {} runs; load {:.0} ms; {} Gaussians; GPU memory in use {memory})\n\n",
            case.name, case.pipeline, case.runs, case.load_ms, case.gaussians
        );
        let rows = case
            .stages
            .iter()
            .map(|st| {
                let was = old.and_then(|o| o.stages.iter().find(|b| b.name == st.name));
                (st.name.as_str(), st.spread, was.map(|w| w.spread))
            })
            .chain([("total", case.total, old.map(|o| o.total))]);
        match old {
            Some(_) => s +=
                "| stage | median ms | p90 ms | base median ms | ratio |\n|---|---|---|---|---|\n",
            None => s += "| stage | median ms | p90 ms |\n|---|---|---|\n",
        }
        for (name, now, was) in rows {
            s += &format!("| {name} | {:.1} | {:.1} |", now.median_ms, now.p90_ms);
            if old.is_some() {
                match was.and_then(|w| ratio(now.median_ms, w.median_ms).map(|r| (w, r))) {
                    Some((w, r)) => s += &format!(" {:.1} | {r:.2} |", w.median_ms),
                    None => s += " | |",
                }
            }
            s += "\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_millis(x)).collect()
    }

    #[test]
    fn spread_is_median_and_nearest_rank_p90() {
        let s = Spread::of(&ms(&[5, 1, 3]));
        assert_eq!((s.median_ms, s.p90_ms), (3.0, 5.0));
        let s = Spread::of(&ms(&[4, 1, 3, 2]));
        assert_eq!((s.median_ms, s.p90_ms), (2.5, 4.0));
        let s = Spread::of(&ms(&(1..=20).collect::<Vec<_>>()));
        assert_eq!((s.median_ms, s.p90_ms), (10.5, 18.0));
    }

    fn report(total_ms: f64) -> Report {
        let spread = Spread {
            median_ms: total_ms,
            p90_ms: total_ms,
        };
        Report {
            splatforge: "0".into(),
            device: "cpu".into(),
            suite: "quick".into(),
            cases: vec![CaseReport {
                name: "development".into(),
                pipeline: "mvdream".into(),
                models: "m".into(),
                load_ms: 1.0,
                warm_up_ms: 1.0,
                runs: 3,
                stages: vec![StageReport {
                    name: "diffusion".into(),
                    spread,
                }],
                total: spread,
                gaussians: 10,
                device_memory_used_bytes: None,
            }],
        }
    }

    #[test]
    fn a_slower_total_beyond_the_threshold_is_a_regression() {
        assert!(compare(&report(100.0), &report(100.0), 1.25).is_empty());
        assert!(compare(&report(120.0), &report(100.0), 1.25).is_empty());
        let r = compare(&report(200.0), &report(100.0), 1.25);
        assert_eq!(r.len(), 1);
        assert!(r[0].contains("2.00×"), "{}", r[0]);
        // A case the base lacks is not compared.
        let mut other = report(100.0);
        other.cases[0].name = "speed".into();
        assert!(compare(&report(500.0), &other, 1.25).is_empty());
        let md = markdown(&report(200.0), Some(&report(100.0)));
        assert!(
            md.contains("| total | 200.0 | 200.0 | 100.0 | 2.00 |"),
            "{md}"
        );
    }
}
