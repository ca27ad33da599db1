//! `splatforge serve --redis`: the HTTP service as a front end of the
//! fleet. [`FleetGenerator`] is the service's [`Generator`]: it submits a
//! PLY job (the request's text prompt, or its image with the Y-up flag of
//! the competition route), waits for it (a pub/sub notice, or a poll every
//! second) and decodes the result, so every HTTP endpoint and format works
//! unchanged. A job that died of bad input answers as a single-host
//! server's bad input does (400 `bad_input`, the generator's message).
//! [`FleetExtension`] is the service's [`ServiceExtension`]: `/batches`,
//! `/health` that needs a live worker of its profile, and fleet metrics,
//! from a snapshot of Redis taken every second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use splatforge_server::{
    CancelToken, ExtensionHealth, Generation, GenerationError, GenerationRequest, Generator,
    ServiceExtension,
};
use tokio::sync::Notify;

use crate::batch::{self, BatchBody};
use crate::job::{new_job_id, now_us, JobState, OutputFormat, Submission};
use crate::queue::{Queue, Snapshot};
use crate::{FleetConfig, FleetError};

/// How often the front end re-reads a job's state without a notice, and
/// takes its snapshot of the fleet.
const POLL: Duration = Duration::from_secs(1);
/// How often a waiting request checks its cancel token.
const CANCEL_CHECK: Duration = Duration::from_millis(50);
/// Largest `POST /batches` body.
const MAX_BATCH_BODY_BYTES: usize = 64 << 20;

/// The front end's connection to the fleet, with its own small runtime
/// (the HTTP service's generator threads block on it).
pub struct FrontEnd {
    queue: Queue,
    profile: String,
    /// Always `Some` until dropped (then shut down without blocking, as the
    /// last owner may be an async task).
    runtime: Option<tokio::runtime::Runtime>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    snapshot: Mutex<Option<(Instant, Result<Snapshot, String>)>>,
}

impl FrontEnd {
    /// Connects to Redis and starts the notice listener and the snapshot
    /// poller. `profile` is the stream that `/generate/` requests go to.
    pub fn start(config: FleetConfig, profile: &str) -> Result<Arc<FrontEnd>, FleetError> {
        crate::job::check_id(profile)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("splatforge-fleet")
            .build()
            .map_err(|source| FleetError::Io {
                context: "starting the fleet runtime".into(),
                source,
            })?;
        let queue = runtime.block_on(Queue::connect(config))?;
        let front = Arc::new(FrontEnd {
            queue,
            profile: profile.to_string(),
            runtime: Some(runtime),
            waiters: Mutex::default(),
            snapshot: Mutex::default(),
        });
        front
            .runtime()
            .spawn(listen_for_notices(Arc::downgrade(&front)));
        front
            .runtime()
            .spawn(poll_snapshots(Arc::downgrade(&front)));
        Ok(front)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the front end")
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Submits `job` as job `id` (idempotent) and waits until it is done
    /// or dead, or `cancel` fires (then the job is withdrawn). Redis errors
    /// are retried until then.
    pub async fn run_job(
        &self,
        id: &str,
        job: &Submission,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let notify = Arc::new(Notify::new());
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), notify.clone());
        let result = self.wait(id, job, cancel, &notify).await;
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if matches!(result, Err(GenerationError::Cancelled)) {
            // Best effort: workers skip a cancelled job; if Redis is down
            // now, the job runs for nothing.
            let _ = self.queue.cancel(id).await;
        }
        result
    }

    async fn wait(
        &self,
        id: &str,
        job: &Submission,
        cancel: &CancelToken,
        notify: &Notify,
    ) -> Result<Generation, GenerationError> {
        let retry = |e: &FleetError| eprintln!("splatforge serve (fleet): job {id}: {e}; retrying");
        loop {
            match self.queue.submit(id, &self.profile, job).await {
                Ok(_) => break,
                // The request's own fault (e.g. an image over the cap): a 400.
                Err(FleetError::Request(m)) => return Err(GenerationError::BadInput(m)),
                Err(e) => retry(&e),
            }
            tokio::time::sleep(CANCEL_CHECK).await;
            cancel.check()?;
        }
        loop {
            match self.queue.status_and_result(id).await {
                Ok(Some((s, Some(r)))) => return decode(r, &s),
                Ok(Some((s, None)))
                    if s.state == JobState::Dead
                        && s.error_kind.as_deref() == Some("bad_input") =>
                {
                    return Err(GenerationError::BadInput(
                        s.error.unwrap_or_else(|| "no error recorded".into()),
                    ))
                }
                Ok(Some((s, None))) if s.state.is_terminal() && s.state != JobState::Done => {
                    return Err(GenerationError::Failed(format!(
                        "job {id} is {}: {}",
                        s.state.as_str(),
                        s.error.unwrap_or_else(|| "no error recorded".into())
                    )))
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(GenerationError::Failed(format!(
                        "job {id} vanished from redis"
                    )))
                }
                Err(e) => retry(&e),
            }
            let until = Instant::now() + POLL;
            loop {
                tokio::select! {
                    _ = notify.notified() => break,
                    _ = tokio::time::sleep(CANCEL_CHECK) => {}
                }
                cancel.check()?;
                if Instant::now() >= until {
                    break;
                }
            }
        }
    }

    /// The latest snapshot, when it is younger than three polls.
    fn fresh_snapshot(&self) -> Result<Snapshot, String> {
        match &*self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((at, s)) if at.elapsed() < 3 * POLL => s.clone(),
            Some(_) => Err("no answer from redis for 3 s".into()),
            None => Err("not polled yet".into()),
        }
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The result as [`Generation`]: Gaussians decoded from the PLY, the
/// worker's stage timings (its `encode` renamed `worker_encode`) between
/// `queue_wait` (submitted → started) and `result_fetch` (finished → here).
fn decode(
    result: crate::queue::JobResult,
    status: &crate::JobStatus,
) -> Result<Generation, GenerationError> {
    let gaussians = splatforge_splat::read_splat_bytes(&result.bytes)
        .map_err(|e| GenerationError::Failed(format!("the worker's result is unreadable: {e}")))?;
    let span = |a: Option<u64>, b: Option<u64>| {
        Duration::from_micros(b.unwrap_or(0).saturating_sub(a.unwrap_or(0)))
    };
    let mut stage_timings = vec![(
        "queue_wait".to_string(),
        span(status.created_us, status.started_us),
    )];
    stage_timings.extend(result.timings.into_iter().map(|(s, d)| {
        (
            if s == "encode" {
                "worker_encode".to_string()
            } else {
                s
            },
            d,
        )
    }));
    stage_timings.push((
        "result_fetch".into(),
        span(status.finished_us, Some(now_us())),
    ));
    Ok(Generation {
        gaussians,
        stage_timings,
    })
}

async fn listen_for_notices(front: std::sync::Weak<FrontEnd>) {
    loop {
        let Some((client, channel)) = front
            .upgrade()
            .map(|f| (f.queue.client().clone(), f.queue.done_channel()))
        else {
            return;
        };
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        if pubsub.subscribe(&channel).await.is_err() {
            continue;
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(f) = front.upgrade() else { return };
            if let Ok(id) = message.get_payload::<String>() {
                if let Some(n) = f.waiters.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                    n.notify_one();
                }
            }
        }
        // The connection dropped (Redis restarted): subscribe again; the
        // waiters' polls cover the gap.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn poll_snapshots(front: std::sync::Weak<FrontEnd>) {
    loop {
        let Some(queue) = front.upgrade().map(|f| f.queue.clone()) else {
            return;
        };
        let s = queue.snapshot().await.map_err(|e| e.to_string());
        match front.upgrade() {
            Some(f) => {
                *f.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), s))
            }
            None => return,
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The HTTP service's generator: one per "device" of the front end (use one
/// device; its `workers_per_device` is how many requests wait at once).
pub struct FleetGenerator {
    front: Arc<FrontEnd>,
    name: String,
}

impl FleetGenerator {
    pub fn new(front: Arc<FrontEnd>) -> Self {
        let name = format!("fleet:{}", front.profile);
        FleetGenerator { front, name }
    }
}

impl Generator for FleetGenerator {
    fn generate(
        &self,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let job = match &request.image {
            Some(image) => Submission::image(image.clone(), request.seed, OutputFormat::Ply),
            None => Submission::text(request.prompt.clone(), request.seed, OutputFormat::Ply),
        }
        .y_up(request.y_up);
        self.front
            .runtime()
            .block_on(self.front.run_job(&new_job_id(), &job, cancel))
    }

    /// Checks that Redis answers (workers may come later: `/health` says).
    fn warm_up(&self) -> Result<(), GenerationError> {
        let queue = self.front.queue.clone();
        self.front
            .runtime()
            .block_on(async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut queue.con())
                    .await
            })
            .map(|_| ())
            .map_err(|e| GenerationError::Failed(format!("redis: {e}")))
    }

    fn name(&self) -> &str {
        &self.name
    }
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into(), "kind": kind })),
    )
        .into_response()
}

fn fleet_error(e: FleetError) -> Response {
    match e {
        FleetError::Request(m) => error(StatusCode::BAD_REQUEST, "bad_request", m),
        FleetError::NotFound(m) => error(StatusCode::NOT_FOUND, "not_found", m),
        FleetError::Redis(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            e.to_string(),
        ),
        other => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            other.to_string(),
        ),
    }
}

async fn create_batch(State(front): State<Arc<FrontEnd>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_BATCH_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("reading the body: {e}"),
            )
        }
    };
    let (id, items) = match serde_json::from_slice::<BatchBody>(&bytes) {
        Ok(BatchBody::Items(items)) => (None, items),
        Ok(BatchBody::Named { id, items }) => (id, items),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body must be a JSON list of items: {e}"),
            )
        }
    };
    let id = id.unwrap_or_else(new_job_id);
    match batch::submit_batch(&front.queue, &id, &items, &front.profile).await {
        Ok(created) => (
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            axum::Json(serde_json::json!({ "id": id, "items": items.len(), "created": created })),
        )
            .into_response(),
        Err(e) => fleet_error(e),
    }
}

async fn batch_progress(State(front): State<Arc<FrontEnd>>, Path(id): Path<String>) -> Response {
    match batch::progress(&front.queue, &id).await {
        Ok(p) => axum::Json(p).into_response(),
        Err(e) => fleet_error(e),
    }
}

async fn batch_results(State(front): State<Arc<FrontEnd>>, Path(id): Path<String>) -> Response {
    let results = match batch::results(&front.queue, &id).await {
        Ok(r) => r,
        Err(FleetError::Request(m)) => return error(StatusCode::CONFLICT, "not_finished", m),
        Err(e) => return fleet_error(e),
    };
    match tokio::task::spawn_blocking(move || results.zip()).await {
        Ok(Ok(zip)) => (
            [
                (header::CONTENT_TYPE, "application/zip".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.zip\""),
                ),
            ],
            zip,
        )
            .into_response(),
        Ok(Err(e)) => fleet_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "failed", e.to_string()),
    }
}

/// Prometheus exposition of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, v) in samples {
        out.push_str(&format!("{name}{labels} {v}\n"));
    }
}

/// The front end as the HTTP service's extension.
pub struct FleetExtension(pub Arc<FrontEnd>);

impl ServiceExtension for FleetExtension {
    fn name(&self) -> &'static str {
        "fleet"
    }

    fn routes(&self) -> Router {
        Router::new()
            .route("/batches", post(create_batch))
            .route("/batches/{id}", get(batch_progress))
            .route("/batches/{id}/results", get(batch_results))
            .layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES))
            .with_state(self.0.clone())
    }

    fn health(&self) -> ExtensionHealth {
        match self.0.fresh_snapshot() {
            Err(e) => ExtensionHealth {
                ready: false,
                status: "redis_unavailable",
                detail: serde_json::json!({ "redis": e, "profile": self.0.profile }),
            },
            Ok(s) => {
                let serving = s
                    .workers
                    .iter()
                    .filter(|w| w.profile == self.0.profile)
                    .count();
                ExtensionHealth {
                    ready: serving > 0,
                    status: "no_workers",
                    detail: serde_json::json!({
                        "redis": "up",
                        "profile": self.0.profile,
                        "workers_alive": serving,
                        "workers": s.workers,
                        "queues": s.profiles,
                        "dead_letters": s.dead_letters,
                        "counters": s.counters,
                    }),
                }
            }
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let snapshot = self.0.fresh_snapshot();
        family(
            &mut out,
            "splatforge_fleet_redis_up",
            "gauge",
            "Whether Redis answered the front end's last poll (every second).",
            &[(String::new(), snapshot.is_ok() as u64)],
        );
        let Ok(s) = snapshot else { return out };
        let per_profile = |f: fn(&crate::queue::ProfileDepth) -> u64| -> Vec<(String, u64)> {
            s.profiles
                .iter()
                .map(|p| (format!("{{profile=\"{}\"}}", p.profile), f(p)))
                .collect()
        };
        family(
            &mut out,
            "splatforge_fleet_queue_depth",
            "gauge",
            "Jobs waiting for a worker.",
            &per_profile(|p| p.waiting),
        );
        family(
            &mut out,
            "splatforge_fleet_in_flight",
            "gauge",
            "Jobs delivered to a worker and not yet acknowledged.",
            &per_profile(|p| p.in_flight),
        );
        let counters: Vec<(String, u64)> = s
            .counters
            .iter()
            .map(|(k, v)| (format!("{{event=\"{k}\"}}"), *v))
            .collect();
        family(
            &mut out,
            "splatforge_fleet_jobs_total",
            "counter",
            "Fleet job events: submitted, completed, retries, reclaimed (from dead workers), dead, duplicate_runs.",
            &counters,
        );
        family(
            &mut out,
            "splatforge_fleet_dead_letters",
            "gauge",
            "Entries in the dead-letter stream.",
            &[(String::new(), s.dead_letters)],
        );
        family(
            &mut out,
            "splatforge_fleet_workers_alive",
            "gauge",
            "Workers that heartbeat within the liveness window.",
            &[(String::new(), s.workers.len() as u64)],
        );
        let running: Vec<(String, u64)> = s
            .workers
            .iter()
            .map(|w| {
                (
                    format!("{{worker=\"{}\",profile=\"{}\"}}", w.name, w.profile),
                    w.running as u64,
                )
            })
            .collect();
        family(
            &mut out,
            "splatforge_fleet_worker_running",
            "gauge",
            "Jobs running on each live worker.",
            &running,
        );
        out
    }
}
