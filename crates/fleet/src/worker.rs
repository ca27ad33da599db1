//! `splatforge worker`: builds and warms one generator per device, then runs
//! `workers_per_device` slots per device, each taking jobs of one profile's
//! stream, generating, storing the result and acknowledging.
//!
//! A slot first tries to claim an entry whose worker died (`XAUTOCLAIM`),
//! then blocks up to a second for a new one (`XREADGROUP`). While a job
//! runs, its entry is kept fresh every quarter of the claim timeout; a job
//! whose ownership was lost (taken over) or that was cancelled is stopped
//! through its [`CancelToken`]. Redis errors (a restart) are retried: a
//! finished result is kept until it is stored.
//!
//! An image job's bytes are read from Redis when it starts; the job reaches
//! the generator exactly as a single-host `serve` request does (image,
//! seed, Y-up), so the splat is the same. A job whose input the worker's
//! profile cannot take (an image for a text profile, or the reverse), and a
//! job the generator refuses as bad input, die at once with their error:
//! another attempt would fail the same way.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use splatforge_server::output::encode;
use splatforge_server::{
    CancelToken, Encoding, GenerationError, GenerationRequest, Generator, GeneratorFactory,
    OutputSpec, RequestInput, SplatFormat, Turns,
};
use tokio::sync::watch;

use crate::job::{JobRequest, OutputFormat};
use crate::queue::{Delivery, FailMode, Finished, Ownership, Queue, Start, WorkerInfo};
use crate::{FleetConfig, FleetError};

/// How long a slot blocks on the stream before looking for claimable
/// entries and the shutdown signal again.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Pause after a Redis error (e.g. while it restarts).
const REDIS_RETRY: Duration = Duration::from_millis(250);
/// How long a finished result is retried into Redis before the job is left
/// to be claimed and run again.
const STORE_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    pub fleet: FleetConfig,
    /// The profile whose stream this worker serves (`{p}:jobs:{profile}`).
    pub profile: String,
    /// What the profile's generator turns into 3D: text prompts or images.
    pub input: RequestInput,
    /// Device ids, one generator each.
    pub devices: Vec<u32>,
    /// Slots per device sharing its generator.
    pub workers_per_device: usize,
    /// Consumer name (default `{host}-{pid}`): unique per live process.
    pub name: Option<String>,
    /// After the shutdown signal, how long running jobs may finish before
    /// they are cancelled and put back in the stream.
    pub shutdown_timeout: Duration,
}

/// This machine's name, reduced to `[A-Za-z0-9._-]` (`host` when unknown).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// `{host}-{pid}`.
pub fn default_worker_name() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// What the slots of one worker share.
struct Shared {
    queue: Queue,
    profile: String,
    input: RequestInput,
    name: String,
    /// Fired after the shutdown deadline: running jobs stop.
    root: CancelToken,
    running: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
}

fn log(name: &str, message: impl std::fmt::Display) {
    eprintln!("splatforge worker {name}: {message}");
}

/// Runs a worker until `shutdown` resolves: stops taking jobs, lets running
/// ones finish until [`WorkerConfig::shutdown_timeout`], puts the rest back,
/// and leaves the fleet. Fails when a device's generator cannot be built.
pub async fn run_worker(
    config: WorkerConfig,
    factory: impl GeneratorFactory,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FleetError> {
    if config.devices.is_empty() || config.workers_per_device == 0 {
        return Err(FleetError::Config(
            "a worker needs at least one device and one slot per device".into(),
        ));
    }
    crate::job::check_id(&config.profile)?;
    let name = config.name.clone().unwrap_or_else(default_worker_name);
    crate::job::check_id(&name)?;
    let queue = Queue::connect(config.fleet.clone()).await?;
    queue.ensure_group(&config.profile).await?;

    let factory: Arc<dyn GeneratorFactory> = Arc::new(factory);
    let mut generators = Vec::new();
    for &device in &config.devices {
        let f = factory.clone();
        let built =
            tokio::task::spawn_blocking(move || -> Result<Arc<dyn Generator>, GenerationError> {
                let g: Arc<dyn Generator> = Arc::new(Turns::new(Arc::from(f.build(device)?)));
                g.warm_up()?;
                Ok(g)
            })
            .await
            .map_err(|e| FleetError::Startup(format!("device {device}: the loader panicked: {e}")))?
            .map_err(|e| FleetError::Startup(format!("device {device}: {e}")))?;
        generators.push((device, built));
    }

    let shared = Arc::new(Shared {
        queue: queue.clone(),
        profile: config.profile.clone(),
        input: config.input,
        name: name.clone(),
        root: CancelToken::new(),
        running: AtomicUsize::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let slots = config.devices.len() * config.workers_per_device;
    let info = {
        let shared = shared.clone();
        let host = host_name();
        let devices = config.devices.clone();
        move || WorkerInfo {
            name: shared.name.clone(),
            host: host.clone(),
            pid: std::process::id(),
            profile: shared.profile.clone(),
            devices: devices.clone(),
            slots,
            running: shared.running.load(Ordering::Relaxed),
            completed: shared.completed.load(Ordering::Relaxed),
            failed: shared.failed.load(Ordering::Relaxed),
        }
    };
    // Announce before taking jobs, so that /health turns green as soon as
    // the first job could start.
    if let Err(e) = queue.heartbeat(&info()).await {
        log(&name, format!("first heartbeat failed: {e}"));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeat = {
        let queue = queue.clone();
        let mut stop = stop_rx.clone();
        let name = name.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                if let Err(e) = queue.heartbeat(&info()).await {
                    log(&name, format!("heartbeat failed: {e}"));
                }
            }
        })
    };
    log(
        &name,
        format!(
            "ready: profile {}, {} slot(s) on device(s) {:?}",
            config.profile, slots, config.devices
        ),
    );

    let mut tasks = Vec::new();
    for (_, generator) in &generators {
        for _ in 0..config.workers_per_device {
            tasks.push(tokio::spawn(slot(
                shared.clone(),
                generator.clone(),
                stop_rx.clone(),
            )));
        }
    }
    shutdown.await;
    log(&name, "stopping: finishing running jobs");
    let _ = stop_tx.send(true);
    let all = futures_util::future::join_all(tasks);
    tokio::pin!(all);
    if tokio::time::timeout(config.shutdown_timeout, &mut all)
        .await
        .is_err()
    {
        log(
            &name,
            "shutdown deadline reached: cancelling running jobs, putting them back",
        );
        shared.root.cancel();
        all.await;
    }
    let _ = heartbeat.await;
    if let Err(e) = queue.remove_worker(&name).await {
        log(&name, format!("could not deregister: {e}"));
    }
    log(&name, "stopped");
    Ok(())
}

/// One slot: take, run, store, repeat until stopped.
async fn slot(shared: Arc<Shared>, generator: Arc<dyn Generator>, mut stop: watch::Receiver<bool>) {
    let q = loop {
        match shared.queue.dedicated().await {
            Ok(q) => break q,
            Err(e) => {
                log(&shared.name, format!("connecting: {e}"));
                tokio::time::sleep(REDIS_RETRY).await;
            }
        }
        if *stop.borrow() {
            return;
        }
    };
    while !*stop.borrow() {
        let next = match q.reclaim(&shared.profile, &shared.name).await {
            Ok(Some(d)) => Ok(Some(d)),
            Ok(None) => {
                tokio::select! {
                    r = q.read_new(&shared.profile, &shared.name, READ_BLOCK) => r,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(Some(delivery)) => run_job(&shared, &q, &generator, delivery).await,
            Ok(None) => {}
            Err(e) => {
                log(&shared.name, format!("reading the stream: {e}"));
                tokio::time::sleep(REDIS_RETRY).await;
            }
        }
    }
}

/// Retries a Redis operation for up to [`STORE_PATIENCE`].
async fn persist<T, F, Fut>(shared: &Shared, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, FleetError>>,
{
    let t0 = Instant::now();
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) if t0.elapsed() < STORE_PATIENCE => {
                log(&shared.name, format!("{what}: {e}; retrying"));
                tokio::time::sleep(REDIS_RETRY).await;
            }
            Err(e) => {
                log(
                    &shared.name,
                    format!("{what}: {e}; giving up (the job will be claimed again)"),
                );
                return None;
            }
        }
    }
}

enum Outcome {
    Finished(Finished),
    /// The error and whether another attempt could succeed.
    Failed(String, FailMode),
    Cancelled,
}

/// Why a job cannot run on this worker's profile, if it cannot.
fn wrong_input(input: RequestInput, profile: &str, request: &JobRequest) -> Option<String> {
    match (input, request.image.is_some()) {
        (RequestInput::Text, true) => Some(format!(
            "profile {profile} turns text prompts into 3D; this job carries an image"
        )),
        (RequestInput::Image, false) => Some(format!(
            "profile {profile} turns images into 3D; this job carries a text prompt"
        )),
        _ => None,
    }
}

async fn run_job(
    shared: &Arc<Shared>,
    q: &Queue,
    generator: &Arc<dyn Generator>,
    delivery: Delivery,
) {
    let profile = &shared.profile;
    let name = &shared.name;
    let start = match q.start(profile, &delivery, name).await {
        Ok(s) => s,
        Err(e) => {
            // The entry stays pending and is claimed again later.
            log(name, format!("starting job {}: {e}", delivery.job));
            return;
        }
    };
    let (request, attempt) = match start {
        Start::Skip => return,
        Start::Exhausted {
            attempts,
            last_error,
            image,
        } => {
            let why = if last_error.is_empty() {
                "its workers stopped heartbeating (died or lost Redis)".to_string()
            } else {
                last_error
            };
            let error = format!("gave up after {attempts} attempt(s); the last: {why}");
            log(name, format!("job {} is dead: {error}", delivery.job));
            persist(shared, "dead-lettering", || {
                q.fail(
                    profile,
                    &delivery,
                    name,
                    image.as_deref(),
                    &error,
                    FailMode::GiveUp,
                )
            })
            .await;
            return;
        }
        Start::Run { request, attempt } => (request, attempt),
    };
    let image_hash = request.image.clone();
    if let Some(error) = wrong_input(shared.input, profile, &request) {
        let image = image_hash.as_deref();
        return refuse(shared, q, &delivery, image, error, FailMode::BadInput).await;
    }
    let image = match &request.image {
        None => None,
        Some(hash) => match q.image(hash).await {
            Ok(Some(bytes)) => Some(Arc::new(bytes)),
            // Withdrawn meanwhile (its hold on the image ended), or the
            // bytes were lost with Redis's data: nothing can run it.
            Ok(None) => {
                let error = format!(
                    "its image (sha256 {hash}) is no longer in redis (withdrawn, or lost by redis)"
                );
                return refuse(shared, q, &delivery, Some(hash), error, FailMode::GiveUp).await;
            }
            Err(e) => {
                // The entry stays pending and is claimed again later.
                log(
                    name,
                    format!("reading the image of job {}: {e}", delivery.job),
                );
                return;
            }
        },
    };
    if delivery.reclaimed {
        log(
            name,
            format!(
                "claimed job {} (attempt {attempt}) from a worker that stopped",
                delivery.job
            ),
        );
    }
    shared.running.fetch_add(1, Ordering::Relaxed);
    let token = shared.root.child();
    let ownership = Arc::new(std::sync::Mutex::new(Ownership::Owned));
    let keeper = {
        let (shared, token, delivery, ownership) = (
            shared.clone(),
            token.clone(),
            delivery.clone(),
            ownership.clone(),
        );
        let every = shared.queue.config().claim_after / 4;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match shared
                    .queue
                    .keep_alive(&shared.profile, &delivery, &shared.name)
                    .await
                {
                    Ok(Ownership::Owned) => {}
                    Ok(other) => {
                        *ownership.lock().unwrap_or_else(|e| e.into_inner()) = other;
                        token.cancel();
                        return;
                    }
                    Err(e) => log(
                        &shared.name,
                        format!("heartbeat of job {}: {e}", delivery.job),
                    ),
                }
            }
        })
    };
    let outcome = {
        let (generator, token) = (generator.clone(), token.clone());
        tokio::task::spawn_blocking(move || generate(generator.as_ref(), &request, image, &token))
            .await
            .unwrap_or_else(|e| {
                Outcome::Failed(format!("the job's thread failed: {e}"), FailMode::Retry)
            })
    };
    keeper.abort();
    shared.running.fetch_sub(1, Ordering::Relaxed);
    let ownership = *ownership.lock().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Outcome::Finished(result) => {
            shared.completed.fetch_add(1, Ordering::Relaxed);
            persist(shared, "storing a result", || {
                q.finish(profile, &delivery, name, image_hash.as_deref(), &result)
            })
            .await;
        }
        Outcome::Cancelled => match ownership {
            // Another worker runs it now: its entry is not ours to touch.
            Ownership::Lost => {}
            // Withdrawn (acknowledged, not re-queued) or shutting down (re-queued).
            Ownership::Cancelled | Ownership::Owned => {
                persist(shared, "putting a job back", || {
                    q.requeue(profile, &delivery)
                })
                .await;
            }
        },
        Outcome::Failed(error, mode) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            log(
                name,
                format!("job {} attempt {attempt} failed: {error}", delivery.job),
            );
            persist(shared, "recording a failure", || {
                q.fail(
                    profile,
                    &delivery,
                    name,
                    image_hash.as_deref(),
                    &error,
                    mode,
                )
            })
            .await;
        }
    }
}

/// Dead-letters a job that cannot run, without running it.
async fn refuse(
    shared: &Shared,
    q: &Queue,
    delivery: &Delivery,
    image: Option<&str>,
    error: String,
    mode: FailMode,
) {
    log(
        &shared.name,
        format!("job {} refused: {error}", delivery.job),
    );
    shared.failed.fetch_add(1, Ordering::Relaxed);
    persist(shared, "recording a failure", || {
        q.fail(&shared.profile, delivery, &shared.name, image, &error, mode)
    })
    .await;
}

/// Generates and encodes on the calling (blocking) thread; a panic is a
/// failed attempt, bad input a failure that no retry can mend.
fn generate(
    generator: &dyn Generator,
    request: &JobRequest,
    image: Option<Arc<Vec<u8>>>,
    token: &CancelToken,
) -> Outcome {
    let run = || -> Result<Finished, GenerationError> {
        let g = generator.generate(
            &GenerationRequest {
                prompt: request.prompt.clone(),
                seed: request.seed,
                image: image.clone(),
                y_up: request.y_up,
            },
            token,
        )?;
        token.check()?;
        let format = match request.format {
            OutputFormat::Ply => SplatFormat::Ply,
            OutputFormat::Spz => SplatFormat::Spz,
        };
        let encoded = encode(
            &g.gaussians,
            &OutputSpec::Splat {
                format,
                encoding: Encoding::Binary,
            },
            token,
        )?;
        let mut timings = g.stage_timings;
        timings.extend(encoded.timings);
        Ok(Finished {
            format: request.format,
            bytes: encoded.body,
            timings,
            gaussians: g.gaussians.len() as u64,
        })
    };
    match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(f)) => Outcome::Finished(f),
        Ok(Err(GenerationError::Cancelled)) => Outcome::Cancelled,
        // The message alone, as single-host `serve` answers it (400).
        Ok(Err(GenerationError::BadInput(m))) => Outcome::Failed(m, FailMode::BadInput),
        Ok(Err(e)) => Outcome::Failed(e.to_string(), FailMode::Retry),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Outcome::Failed(format!("panicked: {message}"), FailMode::Retry)
        }
    }
}
