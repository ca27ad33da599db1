//! `splatforge`: text → 3D Gaussian splats, and the tools around them.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "splatforge", version, about = "Fast text-to-3D Gaussian splats, and tools for splat files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a summary of a splat file (PLY or SPZ).
    Inspect(commands::inspect::Args),
    /// Run the 404-GEN validator's data checks; exit status 1 if one fails.
    Validate(commands::validate::Args),
    /// Convert between PLY and SPZ (chosen by the output extension).
    Convert(commands::convert::Args),
    /// Recentre and rescale to a bounding box; optionally change the up axis.
    Normalize(commands::normalize::Args),
    /// Render a splat to PNG: one view, the validator's 16 views, or a turntable GIF.
    Render(commands::render::Args),
    /// Diffusion models: write tiny test models, generate MVDream views.
    Models(commands::models::Args),
    /// Fit Gaussians to posed images (transforms.json); prints held-out PSNR/SSIM.
    Fit(commands::fit::Args),
    /// Text prompt → splat (MVDream views, fit, optional SDS); prints the stage timing table.
    Generate(commands::generate::Args),
    /// Serve generation over HTTP, compatible with the 404-GEN miner (POST /generate/).
    Serve(commands::serve::Args),
    /// Take jobs from a fleet's Redis stream and generate them on this host's GPUs.
    Worker(commands::fleet::WorkerArgs),
    /// Submit a JSONL file of prompts to a fleet as a batch; write the results to a directory.
    Submit(commands::fleet::SubmitArgs),
}

/// What a command reports back to `main` when it did not fail outright.
pub enum Outcome {
    Success,
    /// The command ran, and its verdict is negative (e.g. a failed check).
    CheckFailed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Normalize(args) => commands::normalize::run(args),
        Command::Render(args) => commands::render::run(args),
        Command::Models(args) => commands::models::run(args),
        Command::Fit(args) => commands::fit::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Worker(args) => commands::fleet::run_worker_command(args),
        Command::Submit(args) => commands::fleet::run_submit(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
