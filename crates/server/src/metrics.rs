//! A small Prometheus registry: counters and histograms with labels, plus
//! gauges sampled at scrape time, rendered in the text exposition format
//! (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 17] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Names of the series this crate exports (see the README section in the
/// crate docs for what each means).
pub mod names {
    pub const REQUESTS: &str = "splatforge_http_requests_total";
    pub const REQUEST_DURATION: &str = "splatforge_http_request_duration_seconds";
    pub const IN_FLIGHT: &str = "splatforge_http_requests_in_flight";
    pub const JOBS: &str = "splatforge_jobs_total";
    pub const QUEUE_DEPTH: &str = "splatforge_queue_depth";
    pub const QUEUE_CAPACITY: &str = "splatforge_queue_capacity";
    pub const JOBS_RUNNING: &str = "splatforge_jobs_running";
    pub const QUEUE_WAIT: &str = "splatforge_queue_wait_seconds";
    pub const GENERATION: &str = "splatforge_generation_duration_seconds";
    pub const STAGE: &str = "splatforge_stage_duration_seconds";
    pub const DEVICE_MEMORY: &str = "splatforge_device_memory_bytes";
    pub const DEVICE_MEMORY_TOTAL: &str = "splatforge_device_memory_total_bytes";
    pub const READY: &str = "splatforge_ready";
    pub const BUILD_INFO: &str = "splatforge_build_info";
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Histogram,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
            Kind::Gauge => "gauge",
        }
    }
}

#[derive(Clone, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

struct Family {
    help: &'static str,
    kind: Kind,
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Histogram>,
}

/// One gauge value sampled at scrape time.
pub struct GaugeSample {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// Counters and histograms, updated from handlers and worker threads.
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
    gauge_help: BTreeMap<&'static str, &'static str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        use names::*;
        let mut families = BTreeMap::new();
        let mut add = |name, kind, help| {
            families.insert(name, Family { help, kind, counters: BTreeMap::new(), histograms: BTreeMap::new() });
        };
        add(REQUESTS, Kind::Counter, "HTTP requests answered (or abandoned by the client), by endpoint and outcome.");
        add(REQUEST_DURATION, Kind::Histogram, "Time from a request's arrival to its answer, by endpoint.");
        add(JOBS, Kind::Counter, "Jobs taken off a device queue by a worker, by device and outcome.");
        add(QUEUE_WAIT, Kind::Histogram, "Time a job waited in its device queue.");
        add(GENERATION, Kind::Histogram, "Wall time of Generator::generate, by device.");
        add(STAGE, Kind::Histogram, "Wall time of each stage (the generator's stages, queue, encode, render), by stage.");
        let gauge_help = BTreeMap::from([
            (IN_FLIGHT, "Requests being handled now, by endpoint."),
            (QUEUE_DEPTH, "Jobs waiting in a device queue."),
            (QUEUE_CAPACITY, "Capacity of a device queue (--queue-size)."),
            (JOBS_RUNNING, "Jobs a device's workers are running now."),
            (
                DEVICE_MEMORY,
                "Memory in use on a GPU (all processes, as nvidia-smi counts it), from the CUDA driver; absent on the CPU.",
            ),
            (DEVICE_MEMORY_TOTAL, "Total memory of a GPU, from the CUDA driver; absent on the CPU."),
            (READY, "1 once every device's generator is loaded and warmed up."),
            (BUILD_INFO, "Always 1; labels carry the version, git hash and generator."),
        ]);
        Metrics { families: Mutex::new(families), gauge_help }
    }

    fn with_family<R>(&self, name: &'static str, f: impl FnOnce(&mut Family) -> R) -> R {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.get_mut(name).unwrap_or_else(|| panic!("unregistered metric {name}"));
        f(family)
    }

    /// Adds 1 to a counter series.
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        let key = render_labels(labels);
        self.with_family(name, |f| {
            debug_assert!(f.kind == Kind::Counter);
            *f.counters.entry(key).or_default() += 1;
        });
    }

    /// Records one observation in a histogram series.
    pub fn observe(&self, name: &'static str, labels: &[(&str, &str)], value: Duration) {
        let key = render_labels(labels);
        let v = value.as_secs_f64();
        self.with_family(name, |f| {
            debug_assert!(f.kind == Kind::Histogram);
            let h = f.histograms.entry(key).or_default();
            for (i, &le) in LATENCY_BUCKETS.iter().enumerate() {
                if v <= le {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += v;
        });
    }

    /// The current value of a counter series (0 when never incremented).
    pub fn counter(&self, name: &'static str, labels: &[(&str, &str)]) -> u64 {
        let key = render_labels(labels);
        self.with_family(name, |f| f.counters.get(&key).copied().unwrap_or(0))
    }

    /// Everything, in the Prometheus text format, with `gauges` appended.
    pub fn render(&self, gauges: &[GaugeSample]) -> String {
        let mut out = String::new();
        {
            let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
            for (name, f) in families.iter() {
                let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {}", f.help, f.kind.as_str());
                for (labels, v) in &f.counters {
                    let _ = writeln!(out, "{name}{} {v}", braces(labels));
                }
                for (labels, h) in &f.histograms {
                    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                        let l = join_labels(labels, &format!("le=\"{le}\""));
                        let _ = writeln!(out, "{name}_bucket{{{l}}} {}", h.buckets[i]);
                    }
                    let l = join_labels(labels, "le=\"+Inf\"");
                    let _ = writeln!(out, "{name}_bucket{{{l}}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
                    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
                }
            }
        }
        let mut last: Option<&str> = None;
        let mut sorted: Vec<&GaugeSample> = gauges.iter().collect();
        sorted.sort_by_key(|g| g.name);
        for g in sorted {
            if last != Some(g.name) {
                let help = self.gauge_help.get(g.name).copied().unwrap_or("");
                let _ = writeln!(out, "# HELP {} {help}\n# TYPE {} {}", g.name, g.name, Kind::Gauge.as_str());
                last = Some(g.name);
            }
            let labels: Vec<(&str, &str)> = g.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let _ = writeln!(out, "{}{} {}", g.name, braces(&render_labels(&labels)), g.value);
        }
        out
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn join_labels(labels: &str, extra: &str) -> String {
    if labels.is_empty() {
        extra.to_string()
    } else {
        format!("{labels},{extra}")
    }
}

/// `k1="v1",k2="v2"` with values escaped.
fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.inc(names::REQUESTS, &[("endpoint", "/generate/"), ("outcome", "ok")]);
        m.inc(names::REQUESTS, &[("endpoint", "/generate/"), ("outcome", "ok")]);
        m.observe(names::STAGE, &[("stage", "fit \"x\"")], Duration::from_millis(30));
        let text = m.render(&[GaugeSample { name: names::QUEUE_DEPTH, labels: vec![("device", "0".into())], value: 3.0 }]);
        assert!(text.contains("splatforge_http_requests_total{endpoint=\"/generate/\",outcome=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("splatforge_stage_duration_seconds_bucket{stage=\"fit \\\"x\\\"\",le=\"0.025\"} 0\n"));
        assert!(text.contains("splatforge_stage_duration_seconds_bucket{stage=\"fit \\\"x\\\"\",le=\"0.05\"} 1\n"));
        assert!(text.contains("splatforge_stage_duration_seconds_count{stage=\"fit \\\"x\\\"\"} 1\n"));
        assert!(text.contains("# TYPE splatforge_queue_depth gauge\nsplatforge_queue_depth{device=\"0\"} 3\n"));
        assert_eq!(m.counter(names::REQUESTS, &[("endpoint", "/generate/"), ("outcome", "ok")]), 2);
    }
}
