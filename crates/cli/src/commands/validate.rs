use std::path::PathBuf;

use anyhow::Result;
use splatforge_splat::validate::{validate, ValidationConfig};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// A .ply or .spz file.
    file: PathBuf,
    /// Fewest Gaussians accepted.
    #[arg(long, default_value_t = ValidationConfig::default().min_gaussians)]
    min_gaussians: usize,
    /// Largest accepted fraction (0–1) of Gaussians with opacity < 1e-3.
    #[arg(long, default_value_t = ValidationConfig::default().max_transparent_fraction)]
    max_transparent_fraction: f32,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<Outcome> {
    let g = super::read(&args.file)?;
    let config = ValidationConfig {
        min_gaussians: args.min_gaussians,
        max_transparent_fraction: args.max_transparent_fraction,
        ..Default::default()
    };
    let report = validate(&g, &config);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            println!(
                "{} {:<10} {}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        println!(
            "{}: {}",
            args.file.display(),
            if report.passed { "valid" } else { "INVALID" }
        );
    }
    Ok(if report.passed {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}
