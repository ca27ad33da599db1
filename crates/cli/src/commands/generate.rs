//! `splatforge generate`: text prompt → splat file, through the pipeline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use splatforge_pipeline::{parse_device, resolve_models, ConfigSources, HubConfig, Observer, Pipeline, Request, Stage};

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
        ConfigSources { profile: self.profile.clone(), config_file: self.config.clone(), sets: self.sets.clone() }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The text prompt.
    #[arg(long)]
    prompt: String,
    /// Output splat; its extension (.ply or .spz) picks the format.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// Seed (default: the profile's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Models: a folder (diffusers layout, or one from `splatforge models make-tiny`), an LDM checkpoint, or hf:ORG/NAME[@REV][:FILE]. Default: MVDream from the Hugging Face cache.
    #[arg(long, value_name = "DIR")]
    models: Option<String>,
    /// cpu, cuda or cuda:N (default: the first GPU when built with CUDA, else the CPU).
    #[arg(long)]
    device: Option<String>,
    /// Also write the generated views and their alpha masks (PNG) to this folder.
    #[arg(long, value_name = "DIR")]
    save_views: Option<PathBuf>,
    /// Print the resolved configuration (YAML) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    encoding: EncodingArgs,
}

/// One progress bar per stage (hidden when stderr is not a terminal).
struct Bars {
    multi: MultiProgress,
    current: Option<ProgressBar>,
}

impl Observer for Bars {
    fn stage_started(&mut self, stage: Stage, steps: u64) {
        let bar = if steps > 0 {
            let b = self.multi.add(ProgressBar::new(steps));
            b.set_style(
                ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b
        } else {
            let b = self.multi.add(ProgressBar::new_spinner());
            b.set_style(ProgressStyle::with_template("{prefix:>10} {spinner} {msg}").expect("valid template"));
            b
        };
        bar.set_prefix(stage.name());
        self.current = Some(bar);
    }

    fn step(&mut self, _stage: Stage, done: u64, total: u64, loss: Option<f64>) {
        if let Some(b) = &self.current {
            b.set_length(total);
            b.set_position(done);
            if let Some(l) = loss {
                b.set_message(format!("loss {l:.4}"));
            }
        }
    }

    fn stage_finished(&mut self, _stage: Stage, elapsed: Duration) {
        if let Some(b) = self.current.take() {
            b.finish_with_message(format!("{:.2} s", elapsed.as_secs_f64()));
        }
    }
}

/// The device a flag names, or the default one.
pub fn device(spec: Option<&str>, ordinal: usize) -> Result<splatforge_diffusion::Device> {
    Ok(match spec {
        Some(s) => parse_device(s)?,
        None => splatforge_diffusion::best_device(ordinal),
    })
}

/// The stage timing table.
pub fn timing_table(timings: &[(Stage, Duration)]) -> String {
    let total: Duration = timings.iter().map(|(_, d)| *d).sum();
    let mut s = String::from("stage        time (ms)   share\n");
    for (stage, d) in timings {
        let share = if total.is_zero() { 0.0 } else { 100.0 * d.as_secs_f64() / total.as_secs_f64() };
        s += &format!("{:<10} {:>11.1} {:>6.1} %\n", stage.name(), d.as_secs_f64() * 1e3, share);
    }
    s += &format!("{:<10} {:>11.1}\n", "total", total.as_secs_f64() * 1e3);
    s
}

fn save_views(dir: &std::path::Path, views: &splatforge_fit::Views) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (i, v) in views.views.iter().enumerate() {
        let (w, h) = (v.width(), v.height());
        let over_white: Vec<u8> = v.composite([1.0; 3]).iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        let p = dir.join(format!("view_{i}.png"));
        super::write_png(&p, image::RgbImage::from_raw(w, h, over_white).expect("buffer size"))?;
        if let Some(a) = &v.alpha {
            let mask: Vec<u8> = a.iter().map(|x| (x.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
            let p = dir.join(format!("alpha_{i}.png"));
            super::write_png(&p, image::GrayImage::from_raw(w, h, mask).expect("buffer size"))?;
        }
    }
    Ok(())
}

pub fn run(args: Args) -> Result<Outcome> {
    let (profile, config) = args.config.sources().resolve()?;
    if args.print_config {
        print!("# profile: {profile}\n{}", config.to_yaml());
        return Ok(Outcome::Success);
    }
    if args.prompt.trim().is_empty() {
        bail!("--prompt is empty");
    }
    // Fail on a bad output name before loading models.
    splatforge_splat::SplatFormat::from_path(&args.output)?;
    let device = device(args.device.as_deref(), 0)?;
    let models = resolve_models(args.models.as_deref())?;

    let t0 = Instant::now();
    let pipe = Pipeline::load(&models, &device, HubConfig::from_env(), &profile, config)?;
    eprintln!(
        "loaded {} on {:?} in {:.1} s (profile {profile})",
        pipe.models(),
        device,
        t0.elapsed().as_secs_f64()
    );

    let mut bars = Bars { multi: MultiProgress::new(), current: None };
    let out = pipe.generate(&Request { prompt: args.prompt.clone(), seed: args.seed }, &|| false, &mut bars)?;
    drop(bars);

    args.encoding.write(&out.gaussians, &args.output)?;
    if let Some(dir) = &args.save_views {
        save_views(dir, &out.views)?;
    }
    print!("{}", timing_table(&out.timings));
    println!(
        "wrote {} ({} Gaussians, seed {}, fit PSNR {:.2} dB)",
        args.output.display(),
        out.gaussians.len(),
        out.seed,
        out.fit_psnr
    );
    Ok(Outcome::Success)
}
