//! `splatforge fit`: posed images (transforms.json) → optimised splat.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use splatforge_fit::{
    background, evaluate, initial_gaussians, load_transforms, render_mode, FitConfig, Init,
    LoadOptions,
};

use super::convert::EncodingArgs;
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// transforms.json (nerfstudio / instant-ngp / Blender), or a directory
    /// holding transforms.json or transforms_train.json.
    input: PathBuf,
    /// Output splat; its extension (.ply or .spz) picks the format.
    #[arg(short, long)]
    output: PathBuf,
    /// YAML config with DreamGaussian's key names (iters, num_pts, …).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of steps (overrides the config's `iters`).
    #[arg(long)]
    iters: Option<u32>,
    /// Random seed (overrides the config's `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Start from this splat (PLY or SPZ) instead of random points.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Without a split in the data, hold out every N-th frame for testing.
    #[arg(long)]
    test_every: Option<usize>,
    /// Print the result summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Where to fit: cpu, cuda or cuda:N (GPU loss/PSNR in the progress bar refresh every 50 steps).
    #[cfg(feature = "cuda")]
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    encoding: EncodingArgs,
}

pub fn run(args: Args) -> Result<Outcome> {
    let start = Instant::now();
    let mut config = match &args.config {
        Some(p) => FitConfig::load(p)?,
        None => FitConfig::default(),
    };
    if let Some(n) = args.iters {
        config.iters = n;
    }
    if let Some(s) = args.seed {
        config.seed = s;
    }
    config.validate()?;
    // Fail on a bad output name before spending minutes fitting.
    super::mesh::check_output_name(&args.output)?;

    let data = load_transforms(
        &args.input,
        &LoadOptions {
            test_every: args.test_every,
        },
    )
    .with_context(|| format!("loading {}", args.input.display()))?;
    let first = &data.train.views[0];
    eprintln!(
        "{}: {} training views, {} test views, {}x{}",
        data.source.display(),
        data.train.len(),
        data.test.len(),
        first.width(),
        first.height()
    );
    let init = match &args.init {
        Some(p) => Init::Gaussians(super::read(p)?),
        None => Init::Random,
    };
    let bg = background(&config);
    let mode = render_mode(&config);
    let initial = if data.test.is_empty() {
        None
    } else {
        let g0 = initial_gaussians(&init, &config);
        Some(evaluate(&g0, &data.test, bg, mode)?)
    };

    let bar = ProgressBar::new(config.iters as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} {wide_bar} {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let load_time = start.elapsed();
    #[cfg(feature = "cuda")]
    let device = splatforge_fit::parse_device(&args.device)?;
    #[cfg(not(feature = "cuda"))]
    let device = splatforge_diffusion::Device::Cpu;
    let result = splatforge_fit::fit_on(&device, &data.train, &config, init, |p| {
        bar.set_position(p.iteration as u64);
        bar.set_message(format!(
            "loss {:.4} | PSNR {:.2} dB | {} splats | {}px",
            p.loss, p.psnr, p.num_gaussians, p.render_size.0
        ));
        std::ops::ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();

    let g = &result.gaussians;
    args.encoding.write(g, &args.output)?;
    let held_out = if data.test.is_empty() {
        None
    } else {
        Some(evaluate(g, &data.test, bg, mode)?)
    };
    let t = &result.timings;
    eprintln!(
        "fitted {} splats in {} steps, {:.1} s (load {:.1} s; forward {:.1} s, loss {:.1} s, backward {:.1} s, Adam {:.1} s, densify {:.2} s)",
        g.len(),
        result.iterations,
        t.total.as_secs_f64(),
        load_time.as_secs_f64(),
        t.stages.forward.as_secs_f64(),
        t.stages.loss.as_secs_f64(),
        t.stages.backward.as_secs_f64(),
        t.stages.optimizer.as_secs_f64(),
        t.stages.densify.as_secs_f64()
    );
    eprintln!("train PSNR (last step) {:.2} dB", result.final_train_psnr);
    if let (Some(m), Some(m0)) = (&held_out, &initial) {
        eprintln!(
            "held-out ({} views): PSNR {:.2} dB, SSIM {:.4} (initial PSNR {:.2} dB)",
            m.views.len(),
            m.psnr,
            m.ssim,
            m0.psnr
        );
    } else {
        eprintln!("no test split: pass --test-every N to hold out views");
    }
    eprintln!("wrote {}", args.output.display());
    if args.json {
        let summary = serde_json::json!({
            "input": data.source.display().to_string(),
            "output": args.output.display().to_string(),
            "train_views": data.train.len(),
            "test_views": data.test.len(),
            "iters": result.iterations,
            "seed": config.seed,
            "num_gaussians": g.len(),
            "wall_s": start.elapsed().as_secs_f64(),
            "fit_s": t.total.as_secs_f64(),
            "train_psnr": result.final_train_psnr,
            "test_psnr": held_out.as_ref().map(|m| m.psnr),
            "test_ssim": held_out.as_ref().map(|m| m.ssim),
            "initial_test_psnr": initial.as_ref().map(|m| m.psnr),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(Outcome::Success)
}
