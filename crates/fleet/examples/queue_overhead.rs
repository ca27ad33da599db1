//! The time the fleet adds per job, on loopback: a real `redis-server`
//! (append-only file, `appendfsync always` as in the tests, or `everysec`
//! with `--everysec`), one in-process worker, and the front end's
//! generator submitting 200 jobs one after another (after 20 to warm up).
//!
//! - enqueue → start: the job's `created_us` (front end) to `started_us`
//!   (worker), i.e. submission, stream delivery and the start script;
//! - finish → response: `finished_us` (worker) to the front end holding
//!   the decoded splat, i.e. the finish script, the pub/sub notice, the
//!   result read and the PLY decode;
//! - round trip: wall time of the whole call minus the generator's own.
//!
//! The generator returns a fixed 2,000-splat shell at once, so that only
//! the queue is measured (the PLY is ~500 kB, like a small real result).
//!
//! `cargo run --release -p splatforge-fleet --example queue_overhead [-- --everysec]`

use std::time::{Duration, Instant};

use splatforge_fleet::front::{FleetGenerator, FrontEnd};
use splatforge_fleet::test_redis::TestRedis;
use splatforge_fleet::worker::{run_worker, WorkerConfig};
use splatforge_fleet::FleetConfig;
use splatforge_server::{CancelToken, Generation, GenerationError, GenerationRequest, Generator};
use splatforge_splat::{Gaussians, SH_C0};

const JOBS: usize = 200;
const WARM_UP_JOBS: usize = 20;

/// A shell of `n` Gaussians, the same every time.
struct Shell(usize);

impl Generator for Shell {
    fn generate(
        &self,
        _: &GenerationRequest,
        _: &CancelToken,
    ) -> Result<Generation, GenerationError> {
        let t = Instant::now();
        let mut g = Gaussians::with_capacity(self.0, 0);
        for i in 0..self.0 {
            let a = i as f32 * 2.399_963;
            let y = 1.0 - 2.0 * (i as f32 + 0.5) / self.0 as f32;
            let r = (1.0 - y * y).sqrt();
            g.means
                .push([0.5 * r * a.cos(), 0.5 * y, 0.5 * r * a.sin()]);
            g.log_scales.push([-3.5; 3]);
            g.rotations.push([1.0, 0.1, 0.0, 0.0]);
            g.opacity_logits.push(1.0);
            g.sh_dc.push([
                (0.8 - 0.5) / SH_C0,
                (0.3 - 0.5) / SH_C0,
                (0.2 - 0.5) / SH_C0,
            ]);
        }
        Ok(Generation {
            gaussians: g,
            stage_timings: vec![("generate".into(), t.elapsed())],
        })
    }
    fn warm_up(&self) -> Result<(), GenerationError> {
        Ok(())
    }
    fn name(&self) -> &str {
        "shell"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    println!(
        "{name:<22} median {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

fn main() {
    let everysec = std::env::args().any(|a| a == "--everysec");
    let Some(redis) = TestRedis::start_or_skip("queue_overhead") else {
        return;
    };
    if everysec {
        let mut con = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg("everysec")
            .query(&mut con)
            .unwrap();
    }
    let config = FleetConfig {
        redis_url: redis.url(),
        prefix: "bench".into(),
        ..FleetConfig::default()
    };
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = worker_rt.spawn(run_worker(
        WorkerConfig {
            fleet: config.clone(),
            profile: "bench".into(),
            devices: vec![0],
            workers_per_device: 1,
            name: Some("bench-worker".into()),
            shutdown_timeout: Duration::from_secs(5),
        },
        |_device: u32| Ok::<_, GenerationError>(Shell(2000)),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let front = FrontEnd::start(config, "bench").unwrap();
    let generator = FleetGenerator::new(front);
    let (mut to_start, mut to_response, mut round_trip) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARM_UP_JOBS + JOBS {
        let t = Instant::now();
        let g = generator
            .generate(
                &GenerationRequest {
                    prompt: format!("job {i}"),
                    seed: None,
                    image: None,
                    y_up: false,
                },
                &CancelToken::new(),
            )
            .expect("a job");
        let wall = t.elapsed();
        let stage = |name: &str| {
            g.stage_timings
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, d)| *d)
                .unwrap_or_default()
        };
        if i >= WARM_UP_JOBS {
            to_start.push(stage("queue_wait"));
            to_response.push(stage("result_fetch"));
            round_trip.push(wall.saturating_sub(stage("generate") + stage("worker_encode")));
        }
    }
    println!(
        "{JOBS} jobs, one at a time, appendfsync {}",
        if everysec { "everysec" } else { "always" }
    );
    summary("enqueue -> start", to_start);
    summary("finish -> response", to_response);
    summary("round trip - generate", round_trip);
    let _ = stop_tx.send(());
    worker_rt.block_on(worker).unwrap().unwrap();
}
