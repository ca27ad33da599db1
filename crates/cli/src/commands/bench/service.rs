//! `splatforge bench --suite service`: results per hour and latency of the real service
//! under load (issue 18, item 5: per GPU, for the `speed` and image profiles, with 1, 2 and
//! 4 workers per device, p50/p99 at 4 concurrent requests).
//!
//! For each profile and each `--workers` count this binary starts itself as `splatforge
//! serve --workers-per-device N` on a free loopback port (port 0; the address is read from
//! the server's log), waits for `/health` to turn 200 (models loaded and warmed up), sends
//! one untimed request per worker at once (each worker's first run pays first-use costs such
//! as allocator growth), then runs a closed loop: `--concurrency` clients, each sending its
//! next request when the previous one was answered, for `--duration` seconds (requests
//! started before the end still finish and count, and the time runs to the last answer, so
//! no work is cut off) or for `--requests` requests in all. Text profiles get `POST
//! /generate/` with `prompt` and `seed` (the three-gen miner's route), image profiles 404's
//! competition route `POST /generate` with the file `prompt_image_file` and `seed`; every
//! request has its own seed.
//!
//! Per case the report gives the requests sent, completed (2xx with a usable splat) and failed
//! (any other status, a transport error, or `invalid_splat`: a 2xx whose body does not parse
//! as a splat, holds no Gaussian or holds NaN, Inf or zero scales; counted by that key, with
//! the first failure's answer), results per
//! hour (completed over the timed phase's wall time; one device, so per GPU), the latency
//! p50/p90/p99/max of the completed requests (nearest rank), and the server's own mean
//! generation and per-stage times (the queue wait among them) over the timed requests: the differences of
//! `/metrics`' histogram sums and counts, scraped before and after. Any failed request makes
//! the command exit 1, after the reports are written.
//!
//! Why inside the binary, and why ureq: the GPU machine has the release binary and nothing to
//! build with, so the load generator ships in it and starts the very build it measures; ureq
//! is a blocking HTTP client already compiled into the binary (hf-hub's), so one thread per
//! client makes the closed loop without an async runtime and without a new dependency
//! (reqwest is only a dev-dependency of the workspace and would add hyper's client).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use splatforge_pipeline::{PipelineConfig, PipelineKind};
use splatforge_server::RequestInput;
use splatforge_splat::validate::{validate, ValidationConfig};
use splatforge_splat::write_atomic;

use super::{disc_image, nearest_rank, profiles, Args};
use crate::commands::serve::request_input;
use crate::Outcome;

/// Workers per device when `--workers` is not given (issue 18's cases).
const DEFAULT_WORKERS: [usize; 3] = [1, 2, 4];
const DEFAULT_CONCURRENCY: usize = 4;
const DEFAULT_DURATION_S: f64 = 60.0;
/// How long a server may take to print its address and turn healthy: loading and warming
/// up full-size models takes well under a minute on the GPU machine; debug builds on two CPU
/// cores (the tests) take longer.
const STARTUP_LIMIT: Duration = Duration::from_secs(600);
/// Longest wait for one answer; the server's own limit (`serve --timeout`, 300 s) answers 504
/// before it.
const REQUEST_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceReport {
    pub splatforge: String,
    /// `cpu` or `cuda:N` (every case serves on this one device).
    pub device: String,
    pub suite: String,
    pub cases: Vec<ServiceCase>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceCase {
    pub profile: String,
    pub pipeline: String,
    /// `POST /generate/` (text) or `POST /generate` (image, 404's competition route).
    pub route: String,
    pub models: String,
    pub workers: usize,
    pub concurrency: usize,
    /// Server start to `/health` 200 (load and warm-up).
    pub startup_s: f64,
    /// The untimed requests, one per worker, at once.
    pub warm_up_s: f64,
    pub warm_up_failed: usize,
    /// Timed requests sent: completed + failed.
    pub requests: usize,
    pub completed: usize,
    pub failed: usize,
    /// Failed requests by HTTP status, or `transport`.
    pub failures: BTreeMap<String, usize>,
    pub first_failure: Option<String>,
    /// Wall time of the timed phase, first request sent to last answer.
    pub elapsed_s: f64,
    pub results_per_hour: f64,
    /// Of the completed requests; none when none completed.
    pub latency_ms: Option<Latency>,
    /// The server's own times over the timed requests (from `/metrics`).
    pub server: Option<ServerTimes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerTimes {
    /// Mean generation time (the job on its worker).
    pub generation_ms: Option<f64>,
    /// Mean per stage, in the server's order: `queue` (the wait for a worker), the
    /// pipeline's stages, `encode`.
    pub stages: Vec<StageMean>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMean {
    pub name: String,
    pub mean_ms: f64,
    pub count: u64,
}

/// How long the timed phase runs.
#[derive(Debug, Clone, Copy)]
enum Stop {
    After(Duration),
    Count(usize),
}

/// What a case sends: the route, and the body of the request with a given seed.
enum Payload {
    Text(String),
    Image(Vec<u8>),
}

impl Payload {
    fn route(&self) -> &'static str {
        match self {
            Payload::Text(_) => "/generate/",
            Payload::Image(_) => "/generate",
        }
    }

    /// `multipart/form-data`, as the 404 miner and validators send it.
    fn body(&self, seed: u64) -> (String, Vec<u8>) {
        let seed = seed.to_string();
        match self {
            Payload::Text(prompt) => multipart(&[
                ("prompt", None, prompt.as_bytes()),
                ("seed", None, seed.as_bytes()),
            ]),
            Payload::Image(image) => multipart(&[
                ("prompt_image_file", Some("image.png"), image),
                ("seed", None, seed.as_bytes()),
            ]),
        }
    }
}

/// A `multipart/form-data` body of `(name, file name, value)` parts, and its content type.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "splatforge-bench-service-boundary";
    let mut body = Vec::new();
    for (name, file, value) in parts {
        let file = file.map_or(String::new(), |f| {
            format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream")
        });
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Refuses the service suite's flags with the other suites, where they would be ignored.
pub(super) fn refuse_service_flags(args: &Args) -> Result<()> {
    let given = [
        ("--workers", !args.workers.is_empty()),
        ("--concurrency", args.concurrency.is_some()),
        ("--duration", args.duration.is_some()),
        ("--requests", args.requests.is_some()),
    ];
    if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
        bail!("{flag} is for --suite service");
    }
    Ok(())
}

/// The device's index for `serve --devices`, and its name in the report. A CUDA build serves
/// on GPUs only, a CPU build on the CPU only (see `serve`), so a device the build cannot
/// serve on is refused rather than measured on another.
fn serving_device(device: Option<&str>) -> Result<(u32, String)> {
    let cuda = cfg!(feature = "cuda");
    match device {
        None if cuda => Ok((0, "cuda:0".into())),
        None => Ok((0, "cpu".into())),
        Some("cpu") if cuda => bail!("this build serves on GPUs only (--device cuda:N)"),
        Some("cpu") => Ok((0, "cpu".into())),
        Some(d) => {
            let index = d
                .strip_prefix("cuda:")
                .and_then(|i| i.parse::<u32>().ok())
                .with_context(|| format!("--device must be cpu or cuda:N, got {d}"))?;
            if !cuda {
                bail!("{d}: this build has no CUDA (build with --features cuda)");
            }
            Ok((index, d.to_string()))
        }
    }
}

pub(super) fn run(args: &Args) -> Result<Outcome> {
    if args.compare.is_some() || args.input.is_some() {
        bail!("--compare and --input are for the quick and full suites");
    }
    let workers = if args.workers.is_empty() {
        DEFAULT_WORKERS.to_vec()
    } else {
        args.workers.clone()
    };
    if workers.contains(&0) {
        bail!("--workers: every count must be at least 1");
    }
    let concurrency = args.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let stop = match (args.requests, args.duration) {
        (Some(0), _) => bail!("--requests must be at least 1"),
        (Some(n), _) => Stop::Count(n),
        (None, d) => Stop::After(
            Duration::try_from_secs_f64(d.unwrap_or(DEFAULT_DURATION_S))
                .ok()
                .filter(|d| !d.is_zero())
                .context("--duration must be a positive number of seconds")?,
        ),
    };
    let (device, device_name) = serving_device(args.device.as_deref())?;
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut report = ServiceReport {
        splatforge: env!("CARGO_PKG_VERSION").to_string(),
        device: device_name,
        suite: "service".into(),
        cases: Vec::new(),
    };
    for name in profiles(args) {
        let config = PipelineConfig::profile(&name)?;
        let kind = config.pipeline;
        let Some(models) = served_models(args, kind) else {
            eprintln!(
                "skipping {name}: the {} pipeline's models were not given (--models, --flux, --trellis)",
                kind.name()
            );
            continue;
        };
        let payload = match request_input(kind) {
            RequestInput::Text => Payload::Text(args.prompt.clone()),
            RequestInput::Image => Payload::Image(match &args.image {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
                }
                None => super::super::encode_png(disc_image())?,
            }),
        };
        for &w in &workers {
            let mut serve = vec![
                "--profile".to_string(),
                name.clone(),
                "--devices".into(),
                device.to_string(),
                "--workers-per-device".into(),
                w.to_string(),
                // Room for every client's request: a 503 for a full queue would measure
                // the queue's size, not the service's throughput.
                "--queue-size".into(),
                concurrency.to_string(),
            ];
            serve.extend(models.args.iter().cloned());
            eprintln!("{name}, {w} worker(s), {concurrency} clients: starting the server");
            let case = run_case(&exe, &serve, &payload, w, concurrency, stop)?;
            let case = ServiceCase {
                profile: name.clone(),
                pipeline: kind.name().to_string(),
                models: models.label.clone(),
                ..case
            };
            eprintln!("{}", summary_line(&case));
            report.cases.push(case);
            // Written after every case, so that a run cut off (a device call's time limit)
            // keeps the cases it finished.
            write_reports(args, &report)?;
        }
    }
    if report.cases.is_empty() {
        bail!("no case ran: give the models of at least one profile (--models, --trellis, --flux)");
    }
    print!("{}", markdown(&report));
    let failed: usize = report.cases.iter().map(|c| c.failed).sum();
    if failed > 0 {
        eprintln!(
            "{failed} request(s) failed (see the failed column and first_failure in the JSON)"
        );
        return Ok(Outcome::CheckFailed);
    }
    Ok(Outcome::Success)
}

/// The `serve` flags that give a pipeline its models, and how the report names them.
struct ServedModels {
    args: Vec<String>,
    label: String,
}

fn served_models(args: &Args, kind: PipelineKind) -> Option<ServedModels> {
    let flag = |name: &str, value: &str| [format!("--{name}"), value.to_string()];
    match kind {
        PipelineKind::Mvdream => args.models.as_ref().map(|m| ServedModels {
            args: flag("models", m).to_vec(),
            label: m.clone(),
        }),
        PipelineKind::Trellis => args.trellis.as_ref().map(|t| ServedModels {
            args: flag("models", t).to_vec(),
            label: t.clone(),
        }),
        PipelineKind::FluxTrellis => match (&args.flux, &args.trellis) {
            (Some(f), Some(t)) => Some(ServedModels {
                args: [flag("models", t), flag("flux", f)].concat(),
                label: format!("{f} + {t}"),
            }),
            _ => None,
        },
    }
}

fn write_reports(args: &Args, report: &ServiceReport) -> Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)? + "\n";
        write_atomic(path, text.as_bytes())?;
    }
    if let Some(path) = &args.md {
        write_atomic(path, markdown(report).as_bytes())?;
    }
    Ok(())
}

/// A served `splatforge serve`, killed when dropped (also when a case fails half-way).
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `exe serve` on a free loopback port and waits for `/health` to turn 200; its log
/// goes to stderr, each line marked `[serve]`. Returns the server and the time it took.
fn start_server(
    exe: &Path,
    serve_args: &[String],
    agent: &ureq::Agent,
) -> Result<(Server, Duration)> {
    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} serve", exe.display()))?;
    let stderr = child.stderr.take().context("the server's stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
            eprintln!("[serve] {line}");
        }
    });
    // The sender goes when the log ends: a server that exits before listening fails at once.
    let addr = rx.recv_timeout(STARTUP_LIMIT);
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let addr = match addr {
        Ok(a) => a,
        Err(_) => {
            let status = server.child.try_wait()?;
            bail!(
                "the server printed no address within {} s ({})",
                STARTUP_LIMIT.as_secs(),
                status.map_or("still running".into(), |s| s.to_string())
            );
        }
    };
    server.addr = addr
        .parse()
        .with_context(|| format!("the server's address '{addr}'"))?;
    let health = format!("http://{}/health", server.addr);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("the server exited before turning healthy ({status})");
        }
        match agent.get(&health).call() {
            Ok(r) if r.status() == 200 => return Ok((server, t0.elapsed())),
            // 503 while loading and warming up.
            Err(ureq::Error::Status(503, _)) => {}
            Ok(r) => bail!("/health answered {}", r.status()),
            Err(ureq::Error::Status(code, _)) => bail!("/health answered {code}"),
            Err(ureq::Error::Transport(e)) => bail!("/health: {e}"),
        }
        if t0.elapsed() > STARTUP_LIMIT {
            bail!(
                "the server was not healthy within {} s",
                STARTUP_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One answered (or failed) request.
struct Sample {
    latency: Duration,
    answer: Answer,
}

enum Answer {
    /// A 2xx; the server's stage names in pipeline order (`X-Stage-Timings`).
    Completed { stages: Vec<String> },
    /// `key`: the HTTP status, or `transport`.
    Failed { key: String, message: String },
}

/// Sends one request and reads the whole answer (its transfer is part of the latency).
fn send(agent: &ureq::Agent, url: &str, payload: &Payload, seed: u64) -> Sample {
    let (content_type, body) = payload.body(seed);
    let t0 = Instant::now();
    let failed = |key: String, message: String| Answer::Failed { key, message };
    // When the whole answer was in: checking a 2xx's splat comes after and is not part of
    // its latency (it only delays this client's next request, with the server still busy
    // with the other clients').
    let mut received = None;
    let answer = match agent
        .post(url)
        .set("Content-Type", &content_type)
        .send_bytes(&body)
    {
        Ok(r) => {
            let status = r.status();
            let stages = r
                .header("x-stage-timings")
                .unwrap_or("")
                .split(',')
                .filter_map(|s| s.split_once('=').map(|(name, _)| name.to_string()))
                .filter(|name| name != "total")
                .collect();
            let mut bytes = Vec::new();
            match r.into_reader().read_to_end(&mut bytes) {
                Err(e) => failed("transport".into(), format!("reading the answer: {e}")),
                Ok(_) if (200..300).contains(&status) => {
                    received = Some(t0.elapsed());
                    match splat_problem(&bytes) {
                        None => Answer::Completed { stages },
                        Some(problem) => failed("invalid_splat".into(), problem),
                    }
                }
                Ok(_) => failed(status.to_string(), format!("status {status}")),
            }
        }
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            failed(code.to_string(), format!("{code}: {}", text.trim()))
        }
        Err(ureq::Error::Transport(e)) => failed("transport".into(), e.to_string()),
    };
    Sample {
        latency: received.unwrap_or_else(|| t0.elapsed()),
        answer,
    }
}

/// What makes an answer's body unusable as a splat (`None`: nothing): it does not parse, or
/// fails the validator's count (at least one Gaussian), finiteness, rotation or scale checks.
/// A server that answers 200 with garbage (as 2 workers racing on one GPU once did) then
/// shows as failures instead of throughput.
fn splat_problem(bytes: &[u8]) -> Option<String> {
    let g = match splatforge_splat::read_splat_bytes(bytes) {
        Ok(g) => g,
        Err(e) => return Some(format!("the answer is not a splat: {e}")),
    };
    let config = ValidationConfig {
        min_gaussians: 1,
        max_transparent_fraction: 1.0,
        ..ValidationConfig::default()
    };
    let failed: Vec<String> = validate(&g, &config)
        .checks
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    (!failed.is_empty()).then(|| format!("an unusable splat ({})", failed.join("; ")))
}

/// `clients` threads, each sending its next request when the previous one was answered,
/// until `stop`; request `i` (in the order sent) has seed `first_seed + i`. Returns the
/// samples and the wall time to the last answer.
fn closed_loop(
    clients: usize,
    stop: Stop,
    first_seed: u64,
    send: impl Fn(u64) -> Sample + Sync,
) -> (Vec<Sample>, Duration) {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let done = match stop {
                    Stop::Count(n) => i >= n,
                    Stop::After(d) => t0.elapsed() >= d,
                };
                if done {
                    break;
                }
                let sample = send(first_seed + i as u64);
                samples.lock().expect("no client panics").push(sample);
            });
        }
    });
    let elapsed = t0.elapsed();
    (samples.into_inner().expect("no client panics"), elapsed)
}

fn run_case(
    exe: &Path,
    serve_args: &[String],
    payload: &Payload,
    workers: usize,
    concurrency: usize,
    stop: Stop,
) -> Result<ServiceCase> {
    // No kept-alive connections: the server closes idle ones after its header timeout, and a
    // POST on such a connection would fail rather than be retried.
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections(0)
        .timeout(REQUEST_LIMIT)
        .build();
    let (server, startup) = start_server(exe, serve_args, &agent)?;
    let base = format!("http://{}", server.addr);
    let url = format!("{base}{}", payload.route());
    let request = |seed: u64| send(&agent, &url, payload, seed);

    // Warm-up seeds count down from the top, away from the timed ones (0, 1, …).
    let (warm_up, warm_up_time) = closed_loop(
        workers,
        Stop::Count(workers),
        u64::MAX - workers as u64 + 1,
        request,
    );
    let mut order: Vec<String> = Vec::new();
    for s in &warm_up {
        if let Answer::Completed { stages } = &s.answer {
            order.clone_from(stages);
        }
    }
    let warm_up_failed = warm_up
        .iter()
        .filter(|s| matches!(s.answer, Answer::Failed { .. }))
        .count();
    let metrics = |when: &str| -> Option<String> {
        match agent.get(&format!("{base}/metrics")).call() {
            Ok(r) => r.into_string().ok(),
            Err(e) => {
                eprintln!("warning: /metrics {when} the timed requests: {e}");
                None
            }
        }
    };
    let before = metrics("before");
    let (samples, elapsed) = closed_loop(concurrency, stop, 0, request);
    let after = metrics("after");
    drop(server);

    if order.is_empty() {
        if let Some(Answer::Completed { stages }) = samples
            .iter()
            .map(|s| &s.answer)
            .find(|a| matches!(a, Answer::Completed { .. }))
        {
            order.clone_from(stages);
        }
    }
    let mut latencies = Vec::new();
    let mut failures = BTreeMap::new();
    let mut first_failure = None;
    for s in &samples {
        match &s.answer {
            Answer::Completed { .. } => latencies.push(s.latency.as_secs_f64() * 1e3),
            Answer::Failed { key, message } => {
                *failures.entry(key.clone()).or_insert(0) += 1;
                first_failure.get_or_insert_with(|| message.clone());
            }
        }
    }
    let completed = latencies.len();
    Ok(ServiceCase {
        profile: String::new(),
        pipeline: String::new(),
        route: format!("POST {}", payload.route()),
        models: String::new(),
        workers,
        concurrency,
        startup_s: startup.as_secs_f64(),
        warm_up_s: warm_up_time.as_secs_f64(),
        warm_up_failed,
        requests: samples.len(),
        completed,
        failed: samples.len() - completed,
        failures,
        first_failure,
        elapsed_s: elapsed.as_secs_f64(),
        results_per_hour: completed as f64 * 3600.0 / elapsed.as_secs_f64(),
        latency_ms: latency(latencies),
        server: before
            .zip(after)
            .map(|(before, after)| server_times(&before, &after, &order)),
    })
}

fn latency(mut ms: Vec<f64>) -> Option<Latency> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    Some(Latency {
        p50_ms: nearest_rank(&ms, 0.5),
        p90_ms: nearest_rank(&ms, 0.9),
        p99_ms: nearest_rank(&ms, 0.99),
        max_ms: ms[ms.len() - 1],
        mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
    })
}

/// The `(name, labels, value)` samples of a Prometheus text exposition (comments skipped;
/// `labels` is the text between the braces, empty without them).
fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, rest) = match line.split_once('{') {
                Some((name, rest)) => {
                    let (labels, value) = rest.split_once('}')?;
                    ((name, labels), value)
                }
                None => {
                    let (name, value) = line.split_once(' ')?;
                    ((name, ""), value)
                }
            };
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((series.0, series.1, value))
        })
}

/// Histogram `family`'s `(sum, count)` by label set.
fn histogram(text: &str, family: &str) -> BTreeMap<String, (f64, f64)> {
    let (sum, count) = (format!("{family}_sum"), format!("{family}_count"));
    let mut out = BTreeMap::<String, (f64, f64)>::new();
    for (name, labels, value) in samples(text) {
        if name == sum {
            out.entry(labels.to_string()).or_default().0 += value;
        } else if name == count {
            out.entry(labels.to_string()).or_default().1 += value;
        }
    }
    out
}

/// Per label set of histogram `family`: the mean in ms and the count of the observations
/// made between `before` and `after`; label sets without one are left out.
fn mean_deltas(before: &str, after: &str, family: &str) -> BTreeMap<String, (f64, u64)> {
    let old = histogram(before, family);
    histogram(after, family)
        .into_iter()
        .filter_map(|(labels, (sum, count))| {
            let (old_sum, old_count) = old.get(&labels).copied().unwrap_or_default();
            let n = (count - old_count).round();
            (n >= 1.0).then(|| (labels, ((sum - old_sum) * 1e3 / n, n as u64)))
        })
        .collect()
}

/// The mean over every label set of histogram `family` (e.g. all devices).
fn overall_mean(before: &str, after: &str, family: &str) -> Option<f64> {
    let deltas = mean_deltas(before, after, family);
    let n: u64 = deltas.values().map(|(_, n)| n).sum();
    (n > 0).then(|| deltas.values().map(|(m, n)| m * *n as f64).sum::<f64>() / n as f64)
}

/// The server's own times between two scrapes of `/metrics`; stages in `order` first (the
/// pipeline's, from an answer's `X-Stage-Timings`), any others after by name.
fn server_times(before: &str, after: &str, order: &[String]) -> ServerTimes {
    let mut stages: Vec<StageMean> =
        mean_deltas(before, after, "splatforge_stage_duration_seconds")
            .into_iter()
            .filter_map(|(labels, (mean_ms, count))| {
                let name = labels.strip_prefix("stage=\"")?.strip_suffix('"')?;
                Some(StageMean {
                    name: name.to_string(),
                    mean_ms,
                    count,
                })
            })
            .collect();
    stages.sort_by_key(|s| {
        order
            .iter()
            .position(|o| *o == s.name)
            .unwrap_or(order.len())
    });
    ServerTimes {
        generation_ms: overall_mean(before, after, "splatforge_generation_duration_seconds"),
        stages,
    }
}

fn summary_line(case: &ServiceCase) -> String {
    let latency = case
        .latency_ms
        .map_or("no latency (none completed)".into(), |l| {
            format!("p50 {:.0} ms, p99 {:.0} ms", l.p50_ms, l.p99_ms)
        });
    format!(
        "{}, {} worker(s), {} clients: {} completed, {} failed in {:.1} s, {:.0} results/h, {latency}",
        case.profile,
        case.workers,
        case.concurrency,
        case.completed,
        case.failed,
        case.elapsed_s,
        case.results_per_hour
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

/// The report as Markdown: throughput and latency per case (what BENCHMARKS.md quotes), then
/// the server's own mean times.
fn markdown(report: &ServiceReport) -> String {
    let mut s = format!(
        "splatforge {} on {}, suite service (closed loop; latency of the completed requests)\n\n",
        report.splatforge, report.device
    );
    s += "| case | route | workers | concurrency | requests | failed | results/h | p50 ms | p90 ms | p99 ms | max ms |\n";
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for c in &report.cases {
        let l = c.latency_ms;
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |\n",
            c.profile,
            c.route,
            c.workers,
            c.concurrency,
            c.requests,
            c.failed,
            c.results_per_hour,
            ms(l.map(|l| l.p50_ms)),
            ms(l.map(|l| l.p90_ms)),
            ms(l.map(|l| l.p99_ms)),
            ms(l.map(|l| l.max_ms)),
        );
    }
    s += "\nServer side, mean per timed request (from /metrics), ms:\n\n";
    s += "| case | workers | startup s | generation | stages |\n|---|---|---|---|---|\n";
    for c in &report.cases {
        let (generation, stages) = match &c.server {
            Some(t) => (
                ms(t.generation_ms),
                t.stages
                    .iter()
                    .map(|st| format!("{} {:.0}", st.name, st.mean_ms))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => ("–".into(), "not scraped".into()),
        };
        s += &format!(
            "| {} | {} | {:.1} | {generation} | {stages} |\n",
            c.profile, c.workers, c.startup_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# HELP splatforge_stage_duration_seconds Stage time.\n\
        # TYPE splatforge_stage_duration_seconds histogram\n\
        splatforge_stage_duration_seconds_sum{stage=\"fit\"} 2.0\n\
        splatforge_stage_duration_seconds_count{stage=\"fit\"} 2\n\
        splatforge_stage_duration_seconds_bucket{le=\"1.0\",stage=\"fit\"} 2\n\
        splatforge_generation_duration_seconds_sum{device=\"0\"} 0.5\n\
        splatforge_generation_duration_seconds_count{device=\"0\"} 2\n\
        splatforge_ready 1\n";

    const AFTER: &str = "splatforge_stage_duration_seconds_sum{stage=\"fit\"} 5.0\n\
        splatforge_stage_duration_seconds_count{stage=\"fit\"} 5\n\
        splatforge_stage_duration_seconds_sum{stage=\"diffusion\"} 0.6\n\
        splatforge_stage_duration_seconds_count{stage=\"diffusion\"} 3\n\
        splatforge_stage_duration_seconds_sum{stage=\"alpha\"} 0.0\n\
        splatforge_stage_duration_seconds_count{stage=\"alpha\"} 0\n\
        splatforge_generation_duration_seconds_sum{device=\"0\"} 0.8\n\
        splatforge_generation_duration_seconds_count{device=\"0\"} 5\n\
        splatforge_generation_duration_seconds_sum{device=\"1\"} 0.2\n\
        splatforge_generation_duration_seconds_count{device=\"1\"} 1\n";

    #[test]
    fn the_server_times_are_the_differences_between_two_scrapes() {
        let order = ["diffusion".to_string(), "fit".to_string()];
        let t = server_times(BEFORE, AFTER, &order);
        let stages: Vec<(&str, u64)> = t
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        // In the pipeline's order; a stage without an observation in between is left out.
        assert_eq!(stages, [("diffusion", 3), ("fit", 3)]);
        assert!((t.stages[0].mean_ms - 200.0).abs() < 1e-9);
        assert!((t.stages[1].mean_ms - 1000.0).abs() < 1e-9);
        // Both devices: (0.3 + 0.2) s over 4 jobs.
        assert!((t.generation_ms.unwrap() - 125.0).abs() < 1e-9);
        assert_eq!(server_times(BEFORE, BEFORE, &order).generation_ms, None);
    }

    #[test]
    fn latency_is_nearest_rank_over_the_completed_requests() {
        assert_eq!(latency(Vec::new()), None);
        let l = latency((1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!((l.mean_ms - 50.5).abs() < 1e-9);
    }

    #[test]
    fn answers_that_are_no_usable_splat_are_problems() {
        use splatforge_splat::ply::{write_ply, PlyWriteOptions};
        use splatforge_splat::Gaussians;
        let mut g = Gaussians::with_capacity(2, 0);
        for i in 0..2 {
            g.means.push([i as f32, 0.0, 0.0]);
            g.log_scales.push([-3.0; 3]);
            g.rotations.push([1.0, 0.1, 0.0, 0.0]);
            g.opacity_logits.push(0.5);
            g.sh_dc.push([0.1, 0.2, 0.3]);
        }
        let good = write_ply(&g, PlyWriteOptions::default()).unwrap();
        assert_eq!(splat_problem(&good), None);
        g.means[1][2] = f32::NAN;
        let nan = write_ply(&g, PlyWriteOptions::default()).unwrap();
        assert!(splat_problem(&nan).unwrap().contains("finite"));
        let empty = write_ply(&Gaussians::with_capacity(0, 0), PlyWriteOptions::default()).unwrap();
        assert!(splat_problem(&empty).unwrap().contains("count"));
        assert!(splat_problem(b"{\"error\":\"x\"}")
            .unwrap()
            .contains("not a splat"));
    }

    #[test]
    fn the_device_must_be_one_this_build_serves_on() {
        if cfg!(feature = "cuda") {
            assert_eq!(serving_device(None).unwrap(), (0, "cuda:0".into()));
            assert_eq!(
                serving_device(Some("cuda:1")).unwrap(),
                (1, "cuda:1".into())
            );
            assert!(serving_device(Some("cpu")).is_err());
        } else {
            assert_eq!(serving_device(None).unwrap(), (0, "cpu".into()));
            assert_eq!(serving_device(Some("cpu")).unwrap(), (0, "cpu".into()));
            assert!(serving_device(Some("cuda:0")).is_err());
        }
        assert!(serving_device(Some("gpu")).is_err());
    }
}
