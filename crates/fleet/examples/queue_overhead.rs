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
//! - round trip: wall time of the whole call minus the generator's own and
//!   the worker's encoding (printed apart: `worker encode`).
//!
//! The generator returns a fixed 2,000-splat shell at once, so that only
//! the queue is measured (the PLY is ~500 kB, like a small real result).
//!
//! Image jobs: `--image-bytes N` makes every job an image job carrying N
//! bytes (each job's picture differs, so each is stored and deleted once),
//! `--splats M` sets the result's size (TRELLIS writes 32 Gaussians a voxel,
//! 68 bytes each), `--jobs J` the number of timed jobs, and
//! `--results-dir DIR` sends results over 1 MiB to files, as a fleet with
//! TRELLIS-sized results runs.
//!
//! `cargo run --release -p splatforge-fleet --example queue_overhead [-- --everysec] [--image-bytes N] [--splats M] [--jobs J] [--results-dir DIR]`

use std::time::{Duration, Instant};

use splatforge_fleet::front::{FleetGenerator, FrontEnd};
use splatforge_fleet::test_redis::TestRedis;
use splatforge_fleet::worker::{run_worker, WorkerConfig};
use splatforge_fleet::FleetConfig;
use splatforge_server::{
    CancelToken, Generation, GenerationError, GenerationRequest, Generator, RequestInput,
};
use splatforge_splat::{Gaussians, SH_C0};

const WARM_UP_JOBS: usize = 20;

/// The value after `--name` on the command line, if any.
fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn number(name: &str, default: usize) -> usize {
    flag(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
    })
}

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
    let jobs = number("--jobs", 200);
    let image_bytes = number("--image-bytes", 0);
    let splats = number("--splats", 2000);
    let results_dir = flag("--results-dir").map(std::path::PathBuf::from);
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
        results_dir,
        ..FleetConfig::default()
    };
    let input = if image_bytes > 0 {
        RequestInput::Image
    } else {
        RequestInput::Text
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
            input,
            devices: vec![0],
            workers_per_device: 1,
            name: Some("bench-worker".into()),
            shutdown_timeout: Duration::from_secs(5),
        },
        move |_device: u32| Ok::<_, GenerationError>(Shell(splats)),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let front = FrontEnd::start(config, "bench").unwrap();
    let generator = FleetGenerator::new(front);
    let (mut to_start, mut to_response, mut round_trip) = (Vec::new(), Vec::new(), Vec::new());
    // The worker's PLY encoding: single-host serve encodes once for HTTP,
    // the fleet also on the worker (and decodes on the front end, which
    // "finish -> response" holds).
    let mut encode = Vec::new();
    for i in 0..WARM_UP_JOBS + jobs {
        // A different picture each job: every one is stored and deleted.
        let image = (image_bytes > 0).then(|| {
            let mut bytes = vec![(i % 251) as u8; image_bytes];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            std::sync::Arc::new(bytes)
        });
        let t = Instant::now();
        let g = generator
            .generate(
                &GenerationRequest {
                    prompt: if image.is_some() {
                        String::new()
                    } else {
                        format!("job {i}")
                    },
                    seed: None,
                    image,
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
            encode.push(stage("worker_encode"));
        }
    }
    println!(
        "{jobs} jobs, one at a time, appendfsync {}, {}, results of {splats} splats",
        if everysec { "everysec" } else { "always" },
        if image_bytes > 0 {
            format!("image jobs of {image_bytes} bytes")
        } else {
            "text jobs".to_string()
        }
    );
    summary("enqueue -> start", to_start);
    summary("finish -> response", to_response);
    summary("round trip - generate", round_trip);
    summary("worker encode", encode);
    // What one finished job keeps in Redis (its hash: request, timings, the
    // result or its path), and whether any image outlived its job.
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg("bench:job:*")
        .query(&mut con)
        .unwrap();
    let images: Vec<String> = redis::cmd("KEYS")
        .arg("bench:image:*")
        .query(&mut con)
        .unwrap();
    // SAMPLES 0: every field (the default samples 5 and may miss the result).
    let usage: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&jobs[0])
        .arg("SAMPLES")
        .arg(0)
        .query(&mut con)
        .unwrap();
    println!(
        "a finished job's hash: {usage} B in redis; images left: {}",
        images.len()
    );
    let _ = stop_tx.send(());
    worker_rt.block_on(worker).unwrap().unwrap();
}
