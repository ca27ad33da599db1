//! `splatforge`: text → 3D Gaussian splats, and the tools around them.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "splatforge",
    version,
    about = "Fast text-to-3D Gaussian splats, and tools for splat files"
)]
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
    /// Recentre and rescale as the validators do (or into a bounding box); optionally change the up axis.
    Normalize(commands::normalize::Args),
    /// Render a splat to PNG: one view, the validator's 16 views, or a turntable GIF.
    Render(commands::render::Args),
    /// Models: write tiny or full-size random-weight models (MVDream, TRELLIS), generate MVDream views.
    Models(commands::models::Args),
    /// Fit Gaussians to posed images (transforms.json); prints held-out PSNR/SSIM.
    Fit(commands::fit::Args),
    /// Text prompt → splat (MVDream views, fit, optional SDS), or image → splat (TRELLIS, --image); prints the stage timing table.
    Generate(commands::generate::Args),
    /// Serve generation over HTTP, compatible with the 404-GEN miner (POST /generate/).
    Serve(commands::serve::Args),
    /// Take jobs from a fleet's Redis stream and generate them on this host's GPUs.
    Worker(commands::fleet::WorkerArgs),
    /// Submit a JSONL file of prompts to a fleet as a batch; write the results to a directory.
    Submit(commands::fleet::SubmitArgs),
    /// Splat → GLB mesh (TSDF fusion of renders, marching cubes, QEM decimation, vertex colours); --report compares it with the splat.
    Mesh(commands::mesh::Args),
    /// Time every pipeline path (per stage median and p90, load, memory); compare with a previous run; --suite service: the HTTP service under load.
    Bench(commands::bench::Args),
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
        Command::Bench(args) => commands::bench::run(args),
        Command::Mesh(args) => commands::mesh::run(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, joined by ": ". A cause whose text
/// the line already ends with is left out: many errors (std's I/O errors
/// wrapped with a context, our own `SplatError::Io`) both print their
/// source and return it as their cause, which would print it twice. Of each
/// message only the text before a backtrace (candle appends one when
/// `RUST_BACKTRACE` is set) or a blank line is kept, its lines joined.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = first_paragraph(&cause.to_string());
        if message.is_empty() || line.ends_with(&message) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += &message;
    }
    line
}

/// The lines of `message` up to a blank line or a backtrace (a line
/// `stack backtrace:` or a frame `N: …`), trimmed and joined by spaces.
fn first_paragraph(message: &str) -> String {
    let is_backtrace = |l: &str| {
        l.to_ascii_lowercase().starts_with("stack backtrace")
            || l.split_once(": ").is_some_and(|(frame, _)| {
                !frame.is_empty() && frame.bytes().all(|b| b.is_ascii_digit())
            })
    };
    message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty() && !is_backtrace(l))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails on the code before issue 17 (item 12), which printed the OS
    /// error twice.
    #[test]
    fn an_os_error_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let splat = splatforge_splat::SplatError::io("reading x.ply", io);
        let e = anyhow::Error::new(splat).context("loading");
        assert_eq!(one_line(&e), format!("loading: reading x.ply: {text}"));
        let port = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let port_text = port.to_string();
        let e = port.context(format!("binding 0.0.0.0:10006: {port_text}"));
        assert_eq!(one_line(&e), format!("binding 0.0.0.0:10006: {port_text}"));
    }

    /// Fails on the code before issue 17 (item 10): a candle error with its
    /// backtrace (RUST_BACKTRACE set) spanned dozens of lines.
    #[test]
    fn backtraces_and_line_breaks_stay_out_of_the_error_line() {
        let candle = "unsupported dtype BF16 for op matmul\n   0: candle_core::error::Error::bt\n             at src/error.rs:1\n   1: main";
        let e = anyhow::anyhow!("{candle}").context("generating");
        assert_eq!(
            one_line(&e),
            "generating: unsupported dtype BF16 for op matmul"
        );
        let e = anyhow::anyhow!("first line\n  second line\n\nStack backtrace:\n 0: x");
        assert_eq!(one_line(&e), "first line second line");
    }
}
