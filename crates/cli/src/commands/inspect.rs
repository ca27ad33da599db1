use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;
use splatforge_splat::summary::{summarize, Stats, Summary};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// A .ply or .spz file (the format is detected from its content).
    file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    file: String,
    file_bytes: u64,
    bytes_per_splat: Option<f64>,
    #[serde(flatten)]
    summary: Summary,
}

pub fn run(args: Args) -> Result<Outcome> {
    let g = super::read(&args.file)?;
    let file_bytes = std::fs::metadata(&args.file)
        .with_context(|| args.file.display().to_string())?
        .len();
    let summary = summarize(&g);
    let report = Report {
        file: args.file.display().to_string(),
        file_bytes,
        bytes_per_splat: (summary.gaussians > 0)
            .then(|| file_bytes as f64 / summary.gaussians as f64),
        summary,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(Outcome::Success)
}

fn print_text(r: &Report) {
    let s = &r.summary;
    println!("file        {}", r.file);
    println!("splats      {}", s.gaussians);
    println!("SH degree   {}", s.sh_degree);
    match r.bytes_per_splat {
        Some(b) => println!("size        {} bytes, {b:.2} bytes per splat", r.file_bytes),
        None => println!("size        {} bytes", r.file_bytes),
    }
    if let Some((lo, hi)) = s.bounds {
        println!(
            "bounds      min ({:.4}, {:.4}, {:.4})  max ({:.4}, {:.4}, {:.4})",
            lo[0], lo[1], lo[2], hi[0], hi[1], hi[2]
        );
    }
    let stats = |name: &str, st: &Option<Stats>| {
        if let Some(st) = st {
            println!(
                "{name:<11} min {:.4e}  median {:.4e}  mean {:.4e}  max {:.4e}",
                st.min, st.median, st.mean, st.max
            );
        }
    };
    stats("opacity", &s.opacity);
    stats("scale", &s.scale);
}
