//! The fleet on Redis Streams (crate `splatforge-fleet`): `splatforge
//! worker`, `splatforge serve --redis` (the front end) and `splatforge
//! submit` (a batch from a JSONL file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use splatforge_fleet::batch::{self, BatchItem};
use splatforge_fleet::front::{FleetExtension, FleetGenerator, FrontEnd};
use splatforge_fleet::job::{content_id, image_hash};
use splatforge_fleet::worker::{run_worker, WorkerConfig};
use splatforge_fleet::{FleetConfig, Queue};
use splatforge_server::{GenerationError, ServerConfig};

use super::generate::ConfigArgs;
use super::serve::{build_generator, request_input, ServedModels};
use crate::Outcome;

/// How to reach the fleet and how it treats jobs (shared by `worker`,
/// `serve --redis` and `submit`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Redis URL of the fleet (e.g. redis://127.0.0.1:6379/0). For `serve`:
    /// run as the fleet's front end instead of generating on this host.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Prefix of the fleet's Redis keys (several fleets can share a Redis).
    #[arg(long, default_value = "splatforge")]
    pub redis_prefix: String,
    /// A job whose worker stopped heartbeating this long is claimed by another.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub claim_after: f64,
    /// Starts of a job (first run, retries, claims) before it is dead-lettered.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// How long results, finished and dead jobs are kept.
    #[arg(long, default_value_t = 86400.0, value_name = "SECONDS")]
    pub result_ttl: f64,
    /// Results larger than this many bytes go to --results-dir (when set).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub inline_limit: usize,
    /// Directory for large results (every front end must see it, e.g. a shared mount).
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} must be a positive number of seconds, got {s}"))
}

impl FleetArgs {
    /// The fleet's configuration; `None` without `--redis`.
    pub fn config(&self) -> Result<Option<FleetConfig>> {
        let Some(url) = &self.redis else {
            return Ok(None);
        };
        let config = FleetConfig {
            redis_url: url.clone(),
            prefix: self.redis_prefix.clone(),
            claim_after: seconds("claim-after", self.claim_after)?,
            max_attempts: self.max_attempts,
            result_ttl: seconds("result-ttl", self.result_ttl)?,
            inline_limit: self.inline_limit,
            results_dir: self.results_dir.clone(),
            ..FleetConfig::default()
        };
        config.validate()?;
        if let Some(dir) = &config.results_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating --results-dir {}", dir.display()))?;
        }
        Ok(Some(config))
    }

    fn required(&self, command: &str) -> Result<FleetConfig> {
        self.config()?
            .with_context(|| format!("`{command}` needs --redis URL"))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `splatforge serve --redis URL`: the HTTP service with the fleet behind
/// it. `in_flight` requests wait on the fleet at once (the service's one
/// "device" gets that many threads); the service's queue holds the rest.
pub fn serve_front_end(
    mut config: ServerConfig,
    fleet: FleetConfig,
    profile: &str,
    in_flight: usize,
) -> Result<Outcome> {
    config.devices = vec![0];
    config.workers_per_device = in_flight;
    config.validate()?;
    let front = FrontEnd::start(fleet, profile)?;
    eprintln!(
        "splatforge serve: front end of the fleet at {} (profile {profile})",
        front.queue().config().redis_url
    );
    let extension = Arc::new(FleetExtension(front.clone()));
    let factory = move |_device: u32| Ok::<_, GenerationError>(FleetGenerator::new(front.clone()));
    splatforge_server::run_with_extension(config, factory, extension)?;
    Ok(Outcome::Success)
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Devices to generate on, comma-separated; models load once per device.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    devices: Vec<u32>,
    /// Jobs taken at once per device, sharing its models (on a GPU they take turns for the generation and overlap the rest).
    #[arg(long, default_value_t = 1)]
    workers_per_device: usize,
    /// Model directory, LDM checkpoint or hf:ORG/NAME (as for `serve`); with an
    /// image or text-via-image profile, TRELLIS.
    #[arg(long)]
    models: Option<PathBuf>,
    /// With a text-via-image profile (`pipeline: flux-trellis`): FLUX.1-schnell (as for `serve`).
    #[arg(long, value_name = "DIR")]
    flux: Option<String>,
    /// This worker's name in the fleet (default: host-pid); unique per live worker.
    #[arg(long)]
    name: Option<String>,
    /// On SIGINT/SIGTERM, how long running jobs may finish before they go back to the queue.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    shutdown_timeout: f64,
    /// Generation profile and overrides (as for `generate`); the worker
    /// takes the jobs of its profile's stream.
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run_worker_command(args: WorkerArgs) -> Result<Outcome> {
    let fleet = args.fleet.required("worker")?;
    let sources = args.config.sources();
    let (profile, resolved) = sources.resolve()?;
    if args.flux.is_some() && resolved.pipeline != splatforge_pipeline::PipelineKind::FluxTrellis {
        bail!(
            "--flux is for text-via-image profiles (pipeline: flux-trellis); profile {profile} runs {}",
            resolved.pipeline.name()
        );
    }
    if resolved.pipeline.runs_trellis() && fleet.results_dir.is_none() {
        eprintln!(
            "warning: profile {profile} writes TRELLIS splats (tens of MB each); without --results-dir every result stays in redis for --result-ttl"
        );
    }
    let config = WorkerConfig {
        fleet,
        profile,
        input: request_input(resolved.pipeline),
        devices: args.devices.clone(),
        workers_per_device: args.workers_per_device,
        name: args.name.clone(),
        shutdown_timeout: seconds("shutdown-timeout", args.shutdown_timeout)?,
    };
    // The generators of single-host `serve`, so that a job's splat is the
    // one `serve` answers for the same request.
    let models = ServedModels::resolve(
        resolved.pipeline,
        args.models.as_deref(),
        args.flux.as_deref(),
    )?;
    let factory = move |device: u32| build_generator(device, &models, &sources);
    let rt = runtime()?;
    rt.block_on(run_worker(
        config,
        factory,
        splatforge_server::shutdown_signal(),
    ))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(Outcome::Success)
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// JSON Lines, one item a line: {"prompt": …} or, for an image profile,
    /// {"image_path": FILE} (relative to this file) or {"image": BASE64};
    /// optional "seed", "profile", "format": "ply"|"spz", "y_up", "stem", "id".
    items: PathBuf,
    /// Directory for `{stem}.ply|spz` and `_failed.json`.
    #[arg(short, long)]
    out: PathBuf,
    /// Profile of items that name none.
    #[arg(long, default_value = "balanced")]
    profile: String,
    /// Batch id (default: from the file's content, so that a repeated
    /// submission of the same file resumes the same batch).
    #[arg(long)]
    batch_id: Option<String>,
    /// Give up waiting after this long (the batch goes on in the fleet).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Reads JSON Lines items and the image files they name (`image_path`,
/// relative to the items file); errors name the line. Also returns the
/// batch's content id: of the file and of every image read, so that a
/// changed picture is a new batch.
pub fn read_items(path: &Path) -> Result<(Vec<BatchItem>, String)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut item: BatchItem = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a valid item", path.display(), i + 1))?;
        if let Some(image) = &item.image_path {
            let file = path.parent().unwrap_or(Path::new(".")).join(image);
            let image = std::fs::read(&file).with_context(|| {
                format!(
                    "{}:{}: reading image_path {}",
                    path.display(),
                    i + 1,
                    file.display()
                )
            })?;
            item.image_file = Some(Arc::new(image));
        }
        items.push(item);
    }
    if items.is_empty() {
        bail!("{}: no items", path.display());
    }
    let mut content = bytes;
    for image in items.iter().filter_map(|i| i.image_file.as_ref()) {
        content.extend_from_slice(image_hash(image).as_bytes());
    }
    Ok((items, content_id(&content)))
}

pub fn run_submit(args: SubmitArgs) -> Result<Outcome> {
    let fleet = args.fleet.required("submit")?;
    let (items, content) = read_items(&args.items)?;
    let id = args.batch_id.clone().unwrap_or(content);
    let timeout = args.timeout.map(|s| seconds("timeout", s)).transpose()?;
    let rt = runtime()?;
    let results = rt.block_on(async {
        let queue = Queue::connect(fleet).await?;
        let created = batch::submit_batch(&queue, &id, &items, &args.profile).await?;
        eprintln!("batch {id}: {} items ({})", items.len(), if created { "submitted" } else { "resumed" });
        let bar = ProgressBar::new(items.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}, eta {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let t0 = Instant::now();
        loop {
            let p = batch::progress(&queue, &id).await?;
            bar.set_position((p.done + p.failed) as u64);
            bar.set_message(format!("{} running, {} queued, {} failed", p.running, p.queued, p.failed));
            if p.finished {
                bar.finish();
                break;
            }
            if timeout.is_some_and(|t| t0.elapsed() > t) {
                bar.abandon();
                bail!(
                    "batch {id} not finished after {:.0} s ({} of {} done); run the same command again to resume",
                    t0.elapsed().as_secs_f64(),
                    p.done,
                    p.total
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(batch::results(&queue, &id).await?)
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    results.write_dir(&args.out)?;
    eprintln!(
        "batch {id}: {} written to {}, {} failed (see _failed.json)",
        results.files.len(),
        args.out.display(),
        results.failed.len()
    );
    Ok(if results.failed.is_empty() {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_flags_and_items() {
        assert!(FleetArgs::default().config().unwrap().is_none());
        let a = FleetArgs {
            redis: Some("redis://127.0.0.1:1/0".into()),
            redis_prefix: "p".into(),
            claim_after: 2.0,
            max_attempts: 4,
            result_ttl: 60.0,
            inline_limit: 5,
            results_dir: None,
        };
        let c = a.config().unwrap().unwrap();
        assert_eq!(
            (c.claim_after, c.max_attempts, c.prefix.as_str()),
            (Duration::from_secs(2), 4, "p")
        );
        assert!(FleetArgs {
            claim_after: 0.0,
            ..a.clone()
        }
        .config()
        .is_err());
        assert!(FleetArgs {
            max_attempts: 0,
            ..a
        }
        .config()
        .is_err());
        assert!(FleetArgs::default()
            .required("worker")
            .unwrap_err()
            .to_string()
            .contains("--redis"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"a chair\"}\n\n{\"prompt\": \"a car\", \"format\": \"spz\"}\n",
        )
        .unwrap();
        assert_eq!(read_items(&path).unwrap().0.len(), 2);
        std::fs::write(&path, "{\"prompt\": \"a chair\"}\n{\"prompt\": 3}\n").unwrap();
        let e = format!("{:#}", read_items(&path).unwrap_err());
        assert!(e.contains("items.jsonl:2"), "{e}");

        // Image files are read relative to the items file, and are part of the batch's id.
        std::fs::write(&path, "{\"image_path\": \"pic.png\"}\n").unwrap();
        let e = format!("{:#}", read_items(&path).unwrap_err());
        assert!(
            e.contains("items.jsonl:1: reading image_path") && e.contains("pic.png"),
            "{e}"
        );
        std::fs::write(dir.path().join("pic.png"), b"one").unwrap();
        let (items, first) = read_items(&path).unwrap();
        assert_eq!(
            items[0].image_file.as_deref().map(Vec::as_slice),
            Some(&b"one"[..])
        );
        std::fs::write(dir.path().join("pic.png"), b"two").unwrap();
        assert_ne!(
            read_items(&path).unwrap().1,
            first,
            "a changed picture is a new batch"
        );
    }
}
