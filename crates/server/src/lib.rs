//! The splatforge generation service: a drop-in for the 404-GEN miner's
//! generation endpoint (`POST /generate/` → binary PLY), generic over a
//! [`Generator`].
//!
//! - One generator per device, built by a [`GeneratorFactory`] on a loader
//!   thread and warmed up before `/health` turns 200.
//! - `workers_per_device` worker threads per device share its generator and
//!   a bounded FIFO queue (`queue_size` waiting jobs); a full queue is a 503
//!   with `Retry-After`. Generation never runs on the async runtime.
//! - Every job carries a [`CancelToken`]: the request timeout (504), a client
//!   that disconnects, and the shutdown deadline fire it; a queued job whose
//!   token fired is skipped.
//! - A failing, out-of-memory or panicking generation is a 500 and the worker
//!   keeps serving. Every request is answered once (or counted as
//!   `disconnected` when the client left first) in
//!   `splatforge_http_requests_total`.
//! - Shutdown (the `shutdown` future, or SIGINT/SIGTERM in [`run`]) stops
//!   accepting connections, lets running and queued jobs finish until
//!   `shutdown_timeout`, then cancels what is left (503) and returns.
//! - Slow and idle clients are bounded: request headers must arrive within
//!   `header_read_timeout` (hyper's setting), a request body within
//!   `body_read_timeout` (408) and under `max_body_bytes` (tower-http's
//!   limit, 413), and at most `max_connections` connections are open at once.
//!   A client that leaves while its job waits frees its queue slot at once.
//!
//! Endpoints, request fields and metrics are listed in the crate README
//! section of the project README.

pub mod extension;
pub mod generator;
pub mod metrics;
pub mod output;

mod connections;
mod form;
mod generate;
mod pool;

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, watch};
use tower_http::limit::RequestBodyLimitLayer;

use connections::{serve_connections, ConnectionLimits};
pub use extension::{ExtensionHealth, ServiceExtension};
use generate::{endpoint_of, generate, generate_bare, generate_video};
pub use generator::{
    BudgetedGeneration, CancelToken, Degradation, DeviceMemory, Generation, GenerationError,
    GenerationRequest, Generator, GeneratorFactory, Turns,
};
use metrics::{BuildLabels, DeviceLabels, EndpointLabels, Metrics};
pub use output::{Encoding, OutputSpec, SplatFormat, VideoFormat};
use pool::{DeviceState, Job, JobFailure, JobOutput, Pool, PoolStatus, Rejection, Ticket};

/// Longest accepted prompt, in Unicode scalar values (404's limit).
pub const MAX_PROMPT_CHARS: usize = 1024;
/// Smallest accepted `video_res`.
pub const MIN_VIDEO_RES: u32 = 16;
/// Most turntable frames one request may ask for.
pub const MAX_VIDEO_FRAMES: u32 = 360;
/// Turntable frames when the request does not say (404: one every 5°).
pub const DEFAULT_VIDEO_FRAMES: u32 = 72;
/// `video_res` when the request does not say (404's default; the server's
/// `max_video_res` when that is lower).
pub const DEFAULT_VIDEO_RES: u32 = 1088;
/// The default address to listen on: loopback only. The 404 miner calls its
/// generation service on the same machine, and the service has no
/// authentication, so serving other machines (`--host 0.0.0.0`) is a choice
/// the operator makes, behind a firewall.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The crate version, and the git commit when it was known at build time.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_HASH: Option<&str> = option_env!("SPLATFORGE_GIT_HASH");

/// Everything the service is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to listen on ([`DEFAULT_HOST`], loopback).
    pub host: String,
    /// Port (10006; 0 picks a free one, see [`bind`]).
    pub port: u16,
    /// Device ids, one generator each (`[0]`).
    pub devices: Vec<u32>,
    /// Worker threads per device sharing its generator (1).
    pub workers_per_device: usize,
    /// Jobs that may wait per device, beyond those running (8).
    pub queue_size: usize,
    /// Per-request limit from queueing to answer (300 s, the miner's client timeout).
    pub timeout: Duration,
    /// After the shutdown signal, how long running and queued jobs may take
    /// before they are cancelled (300 s).
    pub shutdown_timeout: Duration,
    /// Largest request body (1 MiB); larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest accepted `video_res` (1088); larger ones get 400.
    pub max_video_res: u32,
    /// How long a client may take to send a request's headers, counted from
    /// the connection's opening or the end of its previous request (10 s);
    /// then the connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its headers
    /// are in (30 s); then it gets 408 and the connection is closed.
    pub body_read_timeout: Duration,
    /// Most connections open at once (256); more wait to be accepted.
    pub max_connections: usize,
    /// What `/generate/` and `/generate_video/` take: text prompts (the default) or images.
    pub input: RequestInput,
    /// The time budget of a competition request (`POST /generate` on an image server)
    /// without an `X-Deadline-Ms` header (None: no deadline).
    pub default_deadline: Option<Duration>,
}

/// What the served generator turns into 3D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestInput {
    /// A text prompt in the field `prompt`.
    #[default]
    Text,
    /// An image: the file field `image` (its bytes as sent), or the image file's bytes in
    /// base64 in `prompt` (how the 404 miner forwards image tasks; a `data:…;base64,`
    /// prefix is allowed).
    Image,
}

/// Larger request bodies an image server accepts by default (images, or their base64).
pub const IMAGE_MAX_BODY_BYTES: usize = 32 << 20;

/// Image file bytes sent as text (how the 404 miner forwards image tasks in `prompt`, and
/// the fleet's batch items): plain base64 or a `data:image/…;base64,` URL, white space
/// and line breaks ignored.
pub fn decode_base64_image(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    let text = text.trim();
    // A data URL's payload, if it is one.
    let payload = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String = payload.split_ascii_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(compact.as_bytes())
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: DEFAULT_HOST.into(),
            port: 10006,
            devices: vec![0],
            workers_per_device: 1,
            queue_size: 8,
            timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            max_video_res: DEFAULT_VIDEO_RES,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 256,
            input: RequestInput::Text,
            default_deadline: None,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(m.to_string()));
        if self.devices.is_empty() {
            return bad("at least one device is needed");
        }
        let mut seen = self.devices.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.devices.len() {
            return bad("a device is listed twice");
        }
        if self.workers_per_device == 0 {
            return bad("workers per device must be at least 1");
        }
        if self.queue_size == 0 {
            return bad("the queue size must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("the request timeout must be positive");
        }
        if self.max_body_bytes < 1024 {
            return bad("the body limit must be at least 1 KiB");
        }
        if self.max_video_res < MIN_VIDEO_RES {
            return bad("the largest video resolution must be at least 16");
        }
        if self.header_read_timeout.is_zero() || self.body_read_timeout.is_zero() {
            return bad("the header and body read timeouts must be positive");
        }
        if self.max_connections == 0 {
            return bad("at least one connection must be allowed");
        }
        if self.default_deadline.is_some_and(|d| d.is_zero()) {
            return bad("the default deadline must be positive");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A device's generator could not be built or warmed up.
    #[error("startup failed: {0}")]
    Startup(String),
}

/// A listening socket, before the service runs on it.
pub struct BoundServer {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    config: ServerConfig,
}

/// Validates `config` and binds its address (port 0 picks a free port:
/// read it from [`BoundServer::local_addr`]). Needs no async runtime.
pub fn bind(config: ServerConfig) -> Result<BoundServer, ServerError> {
    config.validate()?;
    let what = format!("binding {}:{}", config.host, config.port);
    let io = |source| ServerError::Io {
        context: what.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(io)?
        .collect();
    let listener = std::net::TcpListener::bind(&addrs[..]).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    Ok(BoundServer {
        listener,
        addr,
        config,
    })
}

/// Binds and serves until `shutdown` resolves (see [`BoundServer::serve`]).
pub async fn serve(
    config: ServerConfig,
    factory: impl GeneratorFactory,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    bind(config)?.serve(factory, shutdown).await
}

/// [`run`] with an extension (extra routes, readiness and metrics).
pub fn run_with_extension(
    config: ServerConfig,
    factory: impl GeneratorFactory,
    extension: Arc<dyn ServiceExtension>,
) -> Result<(), ServerError> {
    run_inner(config, factory, Some(extension))
}

/// Serves on a multi-threaded runtime of its own until SIGINT or SIGTERM
/// (the entry point for a binary).
pub fn run(config: ServerConfig, factory: impl GeneratorFactory) -> Result<(), ServerError> {
    run_inner(config, factory, None)
}

fn run_inner(
    config: ServerConfig,
    factory: impl GeneratorFactory,
    extension: Option<Arc<dyn ServiceExtension>>,
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("splatforge-http")
        .build()
        .map_err(|source| ServerError::Io {
            context: "starting the async runtime".into(),
            source,
        })?;
    let result = runtime.block_on(async move {
        let bound = bind(config)?;
        eprintln!(
            "splatforge-server {}: listening on http://{}",
            VERSION,
            bound.local_addr()
        );
        bound
            .serve_inner(factory, extension, shutdown_signal())
            .await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("splatforge-server: shutting down (finishing running and queued jobs)");
}

impl BoundServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the devices' loader threads, serves HTTP, and on `shutdown`
    /// drains gracefully. Returns `Err(ServerError::Startup)` when a device
    /// failed to load (after shutting down), `Ok` after a clean shutdown.
    pub async fn serve(
        self,
        factory: impl GeneratorFactory,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.serve_inner(factory, None, shutdown).await
    }

    /// [`BoundServer::serve`] with an extension (extra routes, readiness
    /// and metrics).
    pub async fn serve_with_extension(
        self,
        factory: impl GeneratorFactory,
        extension: Arc<dyn ServiceExtension>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.serve_inner(factory, Some(extension), shutdown).await
    }

    async fn serve_inner(
        self,
        factory: impl GeneratorFactory,
        extension: Option<Arc<dyn ServiceExtension>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let config = self.config;
        let metrics = Arc::new(Metrics::new());
        let factory: Arc<dyn GeneratorFactory> = Arc::new(factory);
        let pool = Pool::start(
            &config.devices,
            config.workers_per_device,
            config.queue_size,
            factory,
            metrics.clone(),
        );
        let app = Arc::new(App {
            config: config.clone(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            extension,
        });
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(|source| ServerError::Io {
                context: "registering the listener".into(),
                source,
            })?;

        let (drain_tx, mut drain_rx) = watch::channel(false);
        let mut status = pool.subscribe();
        let draining_pool = pool.clone();
        let graceful = async move {
            tokio::select! {
                _ = shutdown => {},
                _ = status.wait_for(|s| matches!(s, PoolStatus::Failed(_))) => {},
            }
            draining_pool.start_draining();
            let _ = drain_tx.send(true);
        };
        let limits = ConnectionLimits {
            header_read_timeout: config.header_read_timeout,
            max_connections: config.max_connections,
        };
        let server = serve_connections(listener, router(app), limits, metrics, graceful);
        tokio::pin!(server);
        let shutdown_timeout = config.shutdown_timeout;
        let deadline = async move {
            let _ = drain_rx.wait_for(|d| *d).await;
            tokio::time::sleep(shutdown_timeout).await;
        };
        tokio::select! {
            _ = &mut server => {},
            _ = deadline => {
                eprintln!("splatforge-server: shutdown deadline reached; cancelling the remaining jobs");
                pool.root.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), &mut server).await;
            }
        }
        pool.close();
        // Join the threads off the runtime, without blocking its shutdown
        // when a generator ignores its token.
        let (tx, rx) = oneshot::channel();
        let joining = pool.clone();
        std::thread::spawn(move || {
            joining.join();
            let _ = tx.send(());
        });
        if tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .is_err()
        {
            pool.root.cancel();
            eprintln!("splatforge-server: some worker threads did not stop in time; leaving them");
        }
        match &*pool.subscribe().borrow() {
            PoolStatus::Failed(e) => Err(ServerError::Startup(e.clone())),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP

struct App {
    config: ServerConfig,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    extension: Option<Arc<dyn ServiceExtension>>,
}

fn router(app: Arc<App>) -> Router {
    let extra = app.extension.as_ref().map(|e| e.routes());
    let router = Router::new()
        .route("/generate/", post(generate).fallback(method_not_allowed))
        .route(
            "/generate",
            post(generate_bare).fallback(method_not_allowed),
        )
        .route(
            "/generate_video/",
            post(generate_video).fallback(method_not_allowed),
        )
        .route(
            "/generate_video",
            post(generate_video).fallback(method_not_allowed),
        )
        // Only the routes above read bodies; the later layer is the outer one.
        .route_layer(RequestBodyLimitLayer::new(app.config.max_body_bytes))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            json_body_limit_answer,
        ))
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics_text).fallback(method_not_allowed))
        .route("/version", get(version).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(app);
    match extra {
        Some(routes) => router.merge(routes),
        None => router,
    }
}

/// tower-http answers a Content-Length over the body limit itself, in plain
/// text, before the handler runs: give that answer the JSON error and the
/// request count that every other answer gets.
async fn json_body_limit_answer(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = endpoint_of(request.uri().path(), &app.config);
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return Tracker::new(&app, endpoint).fail(form::too_large(app.config.max_body_bytes));
    }
    response
}

/// An error answer: status, a short machine-readable kind (also the metrics
/// outcome) and a message, sent as `{"error": message, "kind": kind}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "kind": self.kind });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A submitted job as its request sees it: its token, and where it waits.
struct SubmittedJob {
    token: CancelToken,
    ticket: Ticket,
}

/// Counts one request: in flight while alive, then exactly one outcome.
/// Dropped unfinished (the client went away and hyper dropped the handler),
/// it cancels the request's job, withdraws it from its queue and counts
/// `disconnected`.
struct Tracker {
    app: Arc<App>,
    endpoint: &'static str,
    started: Instant,
    job: Option<SubmittedJob>,
    done: bool,
}

impl Tracker {
    fn new(app: &Arc<App>, endpoint: &'static str) -> Self {
        app.metrics
            .in_flight
            .get_or_create(&EndpointLabels { endpoint })
            .inc();
        Tracker {
            app: app.clone(),
            endpoint,
            started: Instant::now(),
            job: None,
            done: false,
        }
    }

    fn count(&mut self, outcome: &'static str) {
        self.done = true;
        self.app
            .metrics
            .count_request(self.endpoint, outcome, self.started.elapsed());
    }

    /// Nobody waits for the job any more: stop it, and free its queue slot
    /// if it has not started.
    fn abandon_job(&mut self) {
        if let Some(job) = self.job.take() {
            job.token.cancel();
            self.app.pool.withdraw(&job.ticket);
        }
    }

    fn fail(mut self, e: ApiError) -> Response {
        self.count(e.kind);
        e.into_response()
    }

    fn ok(mut self, r: Response) -> Response {
        self.count("ok");
        r
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            self.abandon_job();
            self.count("disconnected");
        }
        self.app
            .metrics
            .in_flight
            .get_or_create(&EndpointLabels {
                endpoint: self.endpoint,
            })
            .dec();
    }
}

fn health_json(app: &App) -> (bool, serde_json::Value) {
    let devices: Vec<serde_json::Value> = app
        .pool
        .devices
        .iter()
        .map(|d| {
            let state = d.state();
            serde_json::json!({
                "device": d.id,
                "state": state.as_str(),
                "error": match &state { DeviceState::Failed(e) => Some(e.clone()), _ => None },
                "workers": d.workers,
                "queue_depth": d.depth(),
                "queue_capacity": d.capacity,
                "running": d.running(),
            })
        })
        .collect();
    let failed = app
        .pool
        .devices
        .iter()
        .any(|d| matches!(d.state(), DeviceState::Failed(_)));
    let extension = app.extension.as_ref().map(|e| (e.name(), e.health()));
    let generators_ready = app.pool.is_ready() && !app.pool.is_draining();
    let ready = generators_ready && extension.as_ref().is_none_or(|(_, h)| h.ready);
    let status = if failed {
        "failed"
    } else if app.pool.is_draining() {
        "draining"
    } else if ready {
        "ready"
    } else if generators_ready {
        extension.as_ref().map_or("loading", |(_, h)| h.status)
    } else {
        "loading"
    };
    let mut body = serde_json::json!({ "status": status, "generator": app.pool.generator_name(), "devices": devices });
    if let Some((name, h)) = extension {
        body[name] = h.detail;
    }
    (ready, body)
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let tracker = Tracker::new(&app, "/health");
    let (ready, body) = health_json(&app);
    if ready {
        tracker.ok(axum::Json(body).into_response())
    } else {
        let mut t = tracker;
        t.count("not_ready");
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
        r
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let tracker = Tracker::new(&app, "/metrics");
    // Asking generators for memory may touch a driver: not on the runtime.
    let pool = app.pool.clone();
    let memory: Vec<(u32, Option<DeviceMemory>)> = tokio::task::spawn_blocking(move || {
        pool.devices
            .iter()
            .map(|d| (d.id, d.generator().and_then(|g| g.device_memory())))
            .collect()
    })
    .await
    .unwrap_or_default();
    let m = &app.metrics;
    let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    for d in &app.pool.devices {
        let dev = DeviceLabels { device: d.id };
        m.queue_depth
            .get_or_create(&dev)
            .set(gauge(d.depth() as u64));
        m.queue_capacity
            .get_or_create(&dev)
            .set(gauge(d.capacity as u64));
        m.jobs_running
            .get_or_create(&dev)
            .set(gauge(d.running() as u64));
    }
    for (device, memory) in memory {
        let dev = DeviceLabels { device };
        match memory {
            Some(memory) => {
                m.device_memory
                    .get_or_create(&dev)
                    .set(gauge(memory.used_bytes));
                m.device_memory_total
                    .get_or_create(&dev)
                    .set(gauge(memory.total_bytes));
            }
            None => {
                m.device_memory.remove(&dev);
                m.device_memory_total.remove(&dev);
            }
        }
    }
    m.ready.set(i64::from(app.pool.is_ready()));
    // One series: the generator label is known once a device has loaded.
    m.build_info.clear();
    let build = BuildLabels {
        version: VERSION,
        git: GIT_HASH.unwrap_or("unknown"),
        generator: app.pool.generator_name().unwrap_or_default(),
    };
    m.build_info.get_or_create(&build).set(1);
    // Count this scrape before rendering so that it sees itself.
    let mut t = tracker;
    t.count("ok");
    let mut text = m.render();
    if let Some(e) = &app.extension {
        text.push_str(&e.metrics());
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn version(State(app): State<Arc<App>>) -> Response {
    let tracker = Tracker::new(&app, "/version");
    tracker.ok(axum::Json(serde_json::json!({
        "name": "splatforge-server",
        "version": VERSION,
        "git": GIT_HASH,
        "generator": app.pool.generator_name(),
    }))
    .into_response())
}

async fn not_found(State(app): State<Arc<App>>) -> Response {
    let tracker = Tracker::new(&app, "other");
    tracker.fail(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: POST /generate/, POST /generate_video/, GET /health, GET /metrics, GET /version",
    ))
}

async fn method_not_allowed(State(app): State<Arc<App>>, uri: axum::http::Uri) -> Response {
    let tracker = Tracker::new(&app, "other");
    let allow = if uri.path().starts_with("/generate") {
        "POST"
    } else {
        "GET, HEAD"
    };
    let mut r = tracker.fail(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} takes {allow}", uri.path()),
    ));
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}
