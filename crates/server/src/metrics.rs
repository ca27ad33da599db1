//! The service's Prometheus metrics, kept and rendered by `prometheus-client`
//! in the Prometheus text format (version 0.0.4). Handlers and worker threads
//! update counters, histograms and the in-flight and connection gauges as
//! things happen; `/metrics` sets the pool's gauges (queues, memory,
//! readiness) just before it renders.
//!
//! Series (counters carry the `_total` suffix, histograms `_bucket`, `_sum`
//! and `_count`):
//! - `splatforge_http_requests_total{endpoint, outcome}`: requests answered
//!   or abandoned, one outcome each: `ok`, an error kind of the JSON answer
//!   (`bad_request`, `queue_full`, `timeout`, `body_timeout`, …),
//!   `disconnected` (the client left while its request was queued or
//!   running) or `upload_aborted` (the client left while sending its body).
//! - `splatforge_http_request_duration_seconds{endpoint}`: arrival to answer.
//! - `splatforge_http_requests_in_flight{endpoint}`.
//! - `splatforge_http_connections_open` and
//!   `splatforge_http_header_timeouts_total` (connections closed because
//!   their request headers did not arrive within the header timeout).
//! - `splatforge_jobs_total{device, outcome}`: jobs that left a device
//!   queue: run (`ok`, `cancelled`, `failed`, `bad_input`, `out_of_memory`,
//!   `panicked`),
//!   `skipped` (cancelled while queued, e.g. at the shutdown deadline) or
//!   `withdrawn` (taken out of the queue when its client left or timed out).
//! - `splatforge_queue_depth`, `splatforge_queue_capacity`,
//!   `splatforge_jobs_running` (by device), `splatforge_queue_wait_seconds`,
//!   `splatforge_generation_duration_seconds` (by device),
//!   `splatforge_stage_duration_seconds{stage}`.
//! - `splatforge_degraded_total{change}`: changes generators made to meet a request's
//!   deadline (`X-Deadline-Ms`), one per change and request (e.g. `trellis_steps`,
//!   `matte`, `flux_steps`); `splatforge_jobs_total{outcome="deadline_exceeded"}` counts
//!   jobs whose deadline had passed before they could start.
//! - `splatforge_device_memory_bytes` and `splatforge_device_memory_total_bytes`
//!   (by device, when the generator can tell), `splatforge_ready`,
//!   `splatforge_build_info{version, git, generator}` (always 1).

use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub device: u32,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DegradationLabels {
    pub change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub git: &'static str,
    pub generator: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram)
}

/// Every series of the service (see the module docs), registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histograms<EndpointLabels>,
    pub in_flight: Family<EndpointLabels, Gauge>,
    pub connections_open: Gauge,
    pub header_timeouts: Counter,
    pub jobs: Family<JobLabels, Counter>,
    pub queue_wait: Histograms<DeviceLabels>,
    pub generation: Histograms<DeviceLabels>,
    pub stage: Histograms<StageLabels>,
    pub degraded: Family<DegradationLabels, Counter>,
    pub queue_depth: Family<DeviceLabels, Gauge>,
    pub queue_capacity: Family<DeviceLabels, Gauge>,
    pub jobs_running: Family<DeviceLabels, Gauge>,
    pub device_memory: Family<DeviceLabels, Gauge>,
    pub device_memory_total: Family<DeviceLabels, Gauge>,
    pub ready: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: histograms(),
            in_flight: Family::default(),
            connections_open: Gauge::default(),
            header_timeouts: Counter::default(),
            jobs: Family::default(),
            queue_wait: histograms(),
            generation: histograms(),
            stage: histograms(),
            degraded: Family::default(),
            queue_depth: Family::default(),
            queue_capacity: Family::default(),
            jobs_running: Family::default(),
            device_memory: Family::default(),
            device_memory_total: Family::default(),
            ready: Gauge::default(),
            build_info: Family::default(),
        };
        let mut r = Registry::default();
        r.register(
            "splatforge_http_requests",
            "HTTP requests answered (or abandoned by the client), by endpoint and outcome",
            m.requests.clone(),
        );
        r.register(
            "splatforge_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by endpoint",
            m.request_duration.clone(),
        );
        r.register(
            "splatforge_http_requests_in_flight",
            "Requests being handled now, by endpoint",
            m.in_flight.clone(),
        );
        r.register(
            "splatforge_http_connections_open",
            "Client connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "splatforge_http_header_timeouts",
            "Connections closed because a request's headers did not arrive within the header timeout",
            m.header_timeouts.clone(),
        );
        r.register(
            "splatforge_jobs",
            "Jobs that left a device queue, by device and outcome",
            m.jobs.clone(),
        );
        r.register(
            "splatforge_queue_wait_seconds",
            "Time a job waited in its device queue",
            m.queue_wait.clone(),
        );
        r.register(
            "splatforge_generation_duration_seconds",
            "Wall time of Generator::generate, by device",
            m.generation.clone(),
        );
        r.register(
            "splatforge_stage_duration_seconds",
            "Wall time of each stage (the generator's stages, queue, encode, render), by stage",
            m.stage.clone(),
        );
        r.register(
            "splatforge_degraded",
            "Changes a generator made to meet a request's deadline, by change",
            m.degraded.clone(),
        );
        r.register(
            "splatforge_queue_depth",
            "Jobs waiting in a device queue",
            m.queue_depth.clone(),
        );
        r.register(
            "splatforge_queue_capacity",
            "Capacity of a device queue (--queue-size)",
            m.queue_capacity.clone(),
        );
        r.register(
            "splatforge_jobs_running",
            "Jobs a device's workers are running now",
            m.jobs_running.clone(),
        );
        r.register(
            "splatforge_device_memory_bytes",
            "Memory in use on a GPU (all processes, as nvidia-smi counts it), from the CUDA driver; absent on the CPU",
            m.device_memory.clone(),
        );
        r.register(
            "splatforge_device_memory_total_bytes",
            "Total memory of a GPU, from the CUDA driver; absent on the CPU",
            m.device_memory_total.clone(),
        );
        r.register(
            "splatforge_ready",
            "1 once every device's generator is loaded and warmed up",
            m.ready.clone(),
        );
        r.register(
            "splatforge_build_info",
            "Always 1; labels carry the version, git hash and generator",
            m.build_info.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Counts one answered (or abandoned) request and its duration.
    pub fn count_request(&self, endpoint: &'static str, outcome: &'static str, duration: Duration) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, outcome })
            .inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(duration.as_secs_f64());
    }

    /// Counts one job leaving a device queue.
    pub fn count_job(&self, device: u32, outcome: &'static str) {
        self.jobs
            .get_or_create(&JobLabels { device, outcome })
            .inc();
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_under_the_served_names() {
        let m = Metrics::new();
        m.count_request("/generate/", "ok", Duration::from_millis(30));
        m.count_request("/generate/", "ok", Duration::from_millis(30));
        m.stage
            .get_or_create(&StageLabels {
                stage: "fit \"x\"".into(),
            })
            .observe(0.03);
        m.queue_depth
            .get_or_create(&DeviceLabels { device: 0 })
            .set(3);
        let text = m.render();
        assert!(
            text.contains("# TYPE splatforge_http_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "splatforge_http_requests_total{endpoint=\"/generate/\",outcome=\"ok\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "splatforge_http_request_duration_seconds_count{endpoint=\"/generate/\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("splatforge_stage_duration_seconds_bucket{stage=\"fit \\\"x\\\"\",le=\"0.025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "splatforge_stage_duration_seconds_bucket{stage=\"fit \\\"x\\\"\",le=\"0.05\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "splatforge_stage_duration_seconds_bucket{stage=\"fit \\\"x\\\"\",le=\"+Inf\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE splatforge_queue_depth gauge\nsplatforge_queue_depth{device=\"0\"} 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("\nsplatforge_ready 0\n"), "{text}");
    }
}
