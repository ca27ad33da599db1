//! The fleet against a real `redis-server` (see `TestRedis`): in-process
//! workers running the server tests' `TestGenerator`, the front end behind
//! the real HTTP service. Each test starts its own Redis on a free port.

#[path = "../../server/tests/common/mod.rs"]
mod server_common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use server_common::{client, sample, Behaviour, TestGeneratorSpec};
use splatforge_fleet::batch::FailedItem;
use splatforge_fleet::front::{FleetExtension, FleetGenerator, FrontEnd};
use splatforge_fleet::queue::{FailMode, Start};
use splatforge_fleet::test_redis::TestRedis;
use splatforge_fleet::worker::{run_worker, WorkerConfig};
use splatforge_fleet::{FleetConfig, JobState, OutputFormat, Queue, Submission};
use splatforge_server::{bind, RequestInput, ServerConfig};
use tokio::sync::oneshot;

const PROFILE: &str = "development";

fn fleet(redis: &TestRedis) -> FleetConfig {
    FleetConfig {
        redis_url: redis.url(),
        prefix: "t".into(),
        claim_after: Duration::from_secs(2),
        max_attempts: 3,
        worker_liveness: Duration::from_secs(2),
        ..FleetConfig::default()
    }
}

/// An in-process worker; stops (cleanly) when dropped.
struct Worker {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    fn start(config: FleetConfig, name: &str, slots: usize, spec: &TestGeneratorSpec) -> Worker {
        let config = WorkerConfig {
            fleet: config,
            profile: PROFILE.into(),
            input: RequestInput::Text,
            devices: vec![0],
            workers_per_device: slots,
            name: Some(name.into()),
            shutdown_timeout: Duration::from_secs(5),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let factory = spec.factory();
        let handle = tokio::spawn(async move {
            run_worker(config, factory, async move {
                let _ = rx.await;
            })
            .await
            .expect("the worker runs");
        });
        Worker {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("the worker stops")
                .expect("worker task");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn request(prompt: &str) -> Submission {
    Submission::text(prompt, Some(1), OutputFormat::Ply)
}

async fn wait_terminal(q: &Queue, ids: &[String], limit: Duration) -> Vec<JobState> {
    let t0 = Instant::now();
    loop {
        // Errors while Redis restarts are retried (the connection reconnects).
        let states: Vec<JobState> = match q.states(ids).await {
            Ok(states) => states.into_iter().map(|s| s.expect("known job")).collect(),
            Err(_) => vec![JobState::Queued],
        };
        if states.iter().all(|s| s.is_terminal()) {
            return states;
        }
        assert!(
            t0.elapsed() < limit,
            "jobs not finished after {limit:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_are_deduplicated_spread_and_stored_once() {
    let Some(redis) = TestRedis::start_or_skip("jobs_are_deduplicated_spread_and_stored_once")
    else {
        return;
    };
    let config = fleet(&redis);
    let q = Queue::connect(config.clone()).await.unwrap();

    // A duplicate submission returns the existing job.
    assert_eq!(
        q.submit("j0", PROFILE, &request("a red chair"))
            .await
            .unwrap(),
        (true, JobState::Queued)
    );
    assert_eq!(
        q.submit("j0", PROFILE, &request("something else"))
            .await
            .unwrap(),
        (false, JobState::Queued)
    );
    assert!(q.submit("bad id", PROFILE, &request("x")).await.is_err());
    assert!(q.submit("j1", PROFILE, &request("")).await.is_err());

    let spec = TestGeneratorSpec::default().delay(Duration::from_millis(20));
    let workers: Vec<Worker> = (0..3)
        .map(|i| Worker::start(config.clone(), &format!("w{i}"), 1, &spec))
        .collect();
    let mut ids = vec!["j0".to_string()];
    for i in 1..50 {
        let id = format!("j{i}");
        q.submit(&id, PROFILE, &request(&format!("prompt {i}")))
            .await
            .unwrap();
        ids.push(id);
    }
    let states = wait_terminal(&q, &ids, Duration::from_secs(60)).await;
    assert!(states.iter().all(|s| *s == JobState::Done), "{states:?}");
    // Each job ran once, and each result is its own splat.
    assert_eq!(spec.stats.completed.load(Ordering::SeqCst), 50);
    let prompts: HashSet<String> = spec.stats.prompts.lock().unwrap().iter().cloned().collect();
    assert_eq!(prompts.len(), 50, "the duplicate kept the first request");
    assert!(prompts.contains("a red chair") && !prompts.contains("something else"));
    let r = q.result("j7").await.unwrap().expect("a result");
    assert!(
        r.bytes.starts_with(b"ply\n") && r.gaussians == 800,
        "{} bytes",
        r.bytes.len()
    );
    assert!(r.timings.iter().any(|(s, _)| s == "encode"));
    let snap = q.snapshot().await.unwrap();
    assert_eq!(snap.counters.get("completed"), Some(&50));
    assert_eq!(snap.counters.get("duplicate_runs"), None);
    assert_eq!(snap.workers.len(), 3, "{:?}", snap.workers);
    let served: HashSet<String> = futures_util::future::join_all(ids.iter().map(|id| q.status(id)))
        .await
        .into_iter()
        .map(|s| s.unwrap().unwrap().worker.unwrap())
        .collect();
    assert!(served.len() >= 2, "one worker did everything: {served:?}");
    for w in workers {
        w.stop().await;
    }
    assert!(
        q.alive_workers().await.unwrap().is_empty(),
        "stopped workers leave the fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_job_goes_to_the_dead_letters_and_the_rest_run() {
    let Some(redis) =
        TestRedis::start_or_skip("a_poison_job_goes_to_the_dead_letters_and_the_rest_run")
    else {
        return;
    };
    let config = fleet(&redis);
    let q = Queue::connect(config.clone()).await.unwrap();
    q.submit("poison", PROFILE, &request("poison"))
        .await
        .unwrap();
    // One slot: the poison job's three attempts come first (each failure
    // puts it back at the end of the stream, behind nothing).
    let spec = TestGeneratorSpec::default()
        .then(Behaviour::Fail)
        .then(Behaviour::Panic)
        .then(Behaviour::OutOfMemory);
    let worker = Worker::start(config.clone(), "w", 1, &spec);
    let states = wait_terminal(&q, &["poison".into()], Duration::from_secs(30)).await;
    assert_eq!(states, [JobState::Dead]);
    let status = q.status("poison").await.unwrap().unwrap();
    assert_eq!(status.attempts, 3);
    assert!(
        status
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("out of memory"),
        "{status:?}"
    );
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].0.as_str(), dead[0].2), ("poison", 3));
    assert!(dead[0].1.contains("out of memory"), "{dead:?}");
    // A resubmission of the dead id returns the dead job, and others run.
    assert_eq!(
        q.submit("poison", PROFILE, &request("poison"))
            .await
            .unwrap(),
        (false, JobState::Dead)
    );
    q.submit("fine", PROFILE, &request("fine")).await.unwrap();
    assert_eq!(
        wait_terminal(&q, &["fine".into()], Duration::from_secs(30)).await,
        [JobState::Done]
    );
    let snap = q.snapshot().await.unwrap();
    assert_eq!(
        (
            snap.counters.get("retries"),
            snap.counters.get("dead"),
            snap.dead_letters
        ),
        (Some(&2), Some(&1), 1)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_batch_loses_no_job() {
    let Some(mut redis) = TestRedis::start_or_skip("a_redis_restart_mid_batch_loses_no_job") else {
        return;
    };
    let config = fleet(&redis);
    let q = Queue::connect(config.clone()).await.unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for id in &ids {
        q.submit(id, PROFILE, &request(id)).await.unwrap();
    }
    let spec = TestGeneratorSpec::default().delay(Duration::from_millis(100));
    let worker = Worker::start(config.clone(), "w", 2, &spec);
    let t0 = Instant::now();
    while spec.stats.completed.load(Ordering::SeqCst) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no progress before the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: only the append-only file survives.
    redis.restart();
    let states = wait_terminal(&q, &ids, Duration::from_secs(60)).await;
    assert!(states.iter().all(|s| *s == JobState::Done), "{states:?}");
    for id in &ids {
        assert!(q.result(id).await.unwrap().is_some(), "{id} has no result");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_front_end_serves_http_batches_health_and_metrics() {
    let Some(redis) =
        TestRedis::start_or_skip("the_front_end_serves_http_batches_health_and_metrics")
    else {
        return;
    };
    let results_dir = tempfile::tempdir().unwrap();
    // Results over 10 kB go to the directory (an 800-splat PLY is ~200 kB).
    let config = FleetConfig {
        inline_limit: 10_000,
        results_dir: Some(results_dir.path().into()),
        ..fleet(&redis)
    };
    let front = tokio::task::spawn_blocking({
        let config = config.clone();
        move || FrontEnd::start(config, PROFILE).unwrap()
    })
    .await
    .unwrap();
    let server_config = ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        workers_per_device: 16,
        queue_size: 16,
        timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let bound = bind(server_config).unwrap();
    let base = format!("http://{}", bound.local_addr());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let generator_front = front.clone();
    let server = tokio::spawn(bound.serve_with_extension(
        move |_device: u32| {
            Ok::<_, splatforge_server::GenerationError>(FleetGenerator::new(
                generator_front.clone(),
            ))
        },
        std::sync::Arc::new(FleetExtension(front.clone())),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let c = client();
    let form = |prompt: &str| reqwest::multipart::Form::new().text("prompt", prompt.to_string());

    // No worker yet: /health says so, and a request waits out its timeout.
    let t0 = Instant::now();
    let health = loop {
        let r = c.get(format!("{base}/health")).send().await;
        if let Ok(r) = r {
            let body: serde_json::Value = r.json().await.unwrap();
            // The service's own warm-up (a Redis ping per slot) may still
            // be loading on a busy machine.
            if body["fleet"]["redis"] == "up" && body["status"] != "loading" {
                break body;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the front end never polled redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "no_workers", "{health}");
    assert_eq!(health["fleet"]["workers_alive"], 0, "{health}");
    let t0 = Instant::now();
    let r = c
        .post(format!("{base}/generate/"))
        .multipart(form("nobody home"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "answered before the timeout"
    );
    // The timed-out job is withdrawn (just after the answer), so that no
    // worker runs it.
    let mut redis_con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("t:job:*")
            .query_async(&mut redis_con)
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let state: String = redis::cmd("HGET")
            .arg(&keys[0])
            .arg("state")
            .query_async(&mut redis_con)
            .await
            .unwrap();
        if state == "cancelled" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the timed-out job is still {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // With a worker: PLYs, with the queue's timings.
    let spec = TestGeneratorSpec::default().then(Behaviour::Fail);
    let worker = Worker::start(
        FleetConfig {
            max_attempts: 1,
            ..config.clone()
        },
        "w",
        1,
        &spec,
    );
    let t0 = Instant::now();
    while c
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never healthy with a worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The scripted failure hits the batch's first item; HTTP works after.
    let items = serde_json::json!({ "items": [
        { "prompt": "will fail", "stem": "broken" },
        { "prompt": "a red chair", "stem": "chair", "seed": 3 },
        { "prompt": "a blue car", "stem": "car", "format": "spz" },
    ]});
    let r = c
        .post(format!("{base}/batches"))
        .json(&items)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    loop {
        let p: serde_json::Value = c
            .get(format!("{base}/batches/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if p["finished"] == true {
            assert_eq!(
                (
                    p["done"].as_u64(),
                    p["failed"].as_u64(),
                    p["total"].as_u64()
                ),
                (Some(2), Some(1), Some(3)),
                "{p}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "batch not finished: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c
        .get(format!("{base}/batches/{id}/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    let zip = r.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip.to_vec())).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["_failed.json", "car.spz", "chair.ply"]);
    let mut read = |name: &str| {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut archive.by_name(name).unwrap(), &mut v).unwrap();
        v
    };
    assert!(read("chair.ply").starts_with(b"ply\n"));
    splatforge_splat::read_splat_bytes(&read("car.spz")).unwrap();
    let failed: Vec<FailedItem> = serde_json::from_slice(&read("_failed.json")).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].stem.as_str(), failed[0].prompt.as_str()),
        ("broken", "will fail")
    );
    assert!(failed[0].error.contains("scripted failure"), "{failed:?}");
    // The large PLY went to the results directory, Redis holds the path.
    assert!(results_dir.path().join(format!("{id}.1.ply")).is_file());
    assert_eq!(
        c.get(format!("{base}/batches/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    // A batch of a profile no worker serves stays queued: no results yet.
    let waiting = serde_json::json!([{ "prompt": "a chair", "profile": "quality" }]);
    let r = c
        .post(format!("{base}/batches"))
        .json(&waiting)
        .send()
        .await
        .unwrap();
    let waiting_id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p: serde_json::Value = c
        .get(format!("{base}/batches/{waiting_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (p["queued"].as_u64(), p["finished"].as_bool()),
        (Some(1), Some(false)),
        "{p}"
    );
    let r = c
        .get(format!("{base}/batches/{waiting_id}/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let bad = c
        .post(format!("{base}/batches"))
        .json(&serde_json::json!([{ "image_url": "http://x/y.png" }]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("does not download"));
    let bad = c
        .post(format!("{base}/batches"))
        .json(&serde_json::json!([{ "image_path": "/etc/hostname" }]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("only `splatforge submit` reads"));

    // 32 concurrent requests through the front end: each gets a PLY (16
    // wait at once, 16 queue) or a 503; none is lost.
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{base}/generate/"));
            tokio::spawn(async move {
                c.post(url)
                    .multipart(form(&format!("thing {i}")))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for h in handles {
        let r = h.await.unwrap();
        let status = r.status().as_u16();
        if status == 200 {
            let timings = r.headers()["x-stage-timings"].to_str().unwrap().to_string();
            assert!(
                timings.contains("queue_wait") && timings.contains("think"),
                "{timings}"
            );
            assert!(r.bytes().await.unwrap().starts_with(b"ply\n"));
        }
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503 || *s == 504),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 16,
        "{statuses:?}"
    );

    // The front end polls Redis every second: wait for a poll after the above.
    let t0 = Instant::now();
    let metrics = loop {
        let m = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&m, "splatforge_fleet_jobs_total{event=\"completed\"}") >= 18.0
            || t0.elapsed() > Duration::from_secs(5)
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sample(&metrics, "splatforge_fleet_redis_up"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "splatforge_fleet_workers_alive"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "splatforge_fleet_dead_letters"),
        1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "splatforge_fleet_jobs_total{event=\"completed\"}") >= 18.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("splatforge_fleet_queue_depth{profile=\"development\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("splatforge_fleet_worker_running{worker=\"w\",profile=\"development\"}"),
        "{metrics}"
    );

    worker.stop().await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_workers_keep_dying_is_dead_lettered() {
    let Some(redis) = TestRedis::start_or_skip("a_job_whose_workers_keep_dying_is_dead_lettered")
    else {
        return;
    };
    let config = FleetConfig {
        max_attempts: 2,
        ..fleet(&redis)
    };
    let q = Queue::connect(config.clone()).await.unwrap();
    q.ensure_group(PROFILE).await.unwrap();
    q.submit("doomed", PROFILE, &request("doomed"))
        .await
        .unwrap();
    // Two workers take it, start it and vanish without a word.
    let d = q
        .read_new(PROFILE, "ghost-1", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("an entry");
    assert!(matches!(
        q.start(PROFILE, &d, "ghost-1").await.unwrap(),
        Start::Run { attempt: 1, .. }
    ));
    assert_eq!(
        q.reclaim(PROFILE, "ghost-2").await.unwrap(),
        None,
        "claimed before the timeout"
    );
    tokio::time::sleep(config.claim_after).await;
    let d = q
        .reclaim(PROFILE, "ghost-2")
        .await
        .unwrap()
        .expect("claimable after the timeout");
    assert!(d.reclaimed);
    assert!(matches!(
        q.start(PROFILE, &d, "ghost-2").await.unwrap(),
        Start::Run { attempt: 2, .. }
    ));
    // A live worker claims it next and gives up on it.
    tokio::time::sleep(config.claim_after).await;
    let spec = TestGeneratorSpec::default();
    let worker = Worker::start(config.clone(), "w", 1, &spec);
    assert_eq!(
        wait_terminal(&q, &["doomed".into()], Duration::from_secs(30)).await,
        [JobState::Dead]
    );
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!((dead[0].0.as_str(), dead[0].2), ("doomed", 2), "{dead:?}");
    assert!(dead[0].1.contains("stopped heartbeating"), "{dead:?}");
    assert_eq!(
        spec.stats.calls.load(Ordering::SeqCst),
        0,
        "a dead job was run"
    );
    worker.stop().await;
}

/// Image jobs: each distinct picture is stored once however many queued or
/// running jobs hold it (a duplicate submission adds no hold), the worker
/// reads it back by hash, and the last holder to finish, die or be
/// withdrawn deletes it; bad input dies at once with its kind recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn image_jobs_store_each_picture_once_and_release_it() {
    let Some(redis) = TestRedis::start_or_skip("image_jobs_store_each_picture_once_and_release_it")
    else {
        return;
    };
    let config = fleet(&redis);
    let q = Queue::connect(config.clone()).await.unwrap();
    q.ensure_group(PROFILE).await.unwrap();
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let picture = std::sync::Arc::new(vec![7u8; 200_000]);
    let other = std::sync::Arc::new(vec![9u8; 1_000]);
    let job = |bytes: &std::sync::Arc<Vec<u8>>| {
        Submission::image(bytes.clone(), Some(2), OutputFormat::Ply).y_up(true)
    };
    for (id, bytes) in [
        ("a1", &picture),
        ("a2", &picture),
        ("b", &other),
        ("a1", &picture),
    ] {
        q.submit(id, PROFILE, &job(bytes)).await.unwrap();
    }
    let hash = job(&picture).request.image.unwrap();
    let refs_con = con.clone();
    let refs = |key: String| {
        let mut con = refs_con.clone();
        async move {
            let refs: Option<i64> = redis::cmd("HGET")
                .arg(key)
                .arg("refs")
                .query_async(&mut con)
                .await
                .unwrap();
            refs
        }
    };
    let mut images: Vec<String> = redis::cmd("KEYS")
        .arg("t:image:*")
        .query_async(&mut con)
        .await
        .unwrap();
    images.sort();
    assert_eq!(images.len(), 2, "{images:?}");
    assert_eq!(refs(q.image_key(&hash)).await, Some(2));
    // The job hash holds the hash, not the bytes.
    let job_bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("t:job:a2")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(job_bytes < 2_000, "{job_bytes} B");

    assert!(q.cancel("a1").await.unwrap());
    assert_eq!(refs(q.image_key(&hash)).await, Some(1));

    let mut started = Vec::new();
    while started.len() < 2 {
        let d = q
            .read_new(PROFILE, "w", Duration::from_secs(1))
            .await
            .unwrap()
            .expect("an entry");
        match q.start(PROFILE, &d, "w").await.unwrap() {
            Start::Run { request, .. } => started.push((d, request)),
            Start::Skip => assert_eq!(d.job, "a1", "only the withdrawn job is skipped"),
            other => panic!("{other:?}"),
        }
    }
    let (d, request) = &started[0];
    assert_eq!(d.job, "a2");
    assert!(request.y_up && request.prompt.is_empty());
    assert_eq!(q.image(&hash).await.unwrap().as_deref(), Some(&picture[..]));
    let result = splatforge_fleet::queue::Finished {
        format: OutputFormat::Ply,
        bytes: b"ply\n".to_vec(),
        timings: Vec::new(),
        gaussians: 0,
    };
    assert!(q
        .finish(PROFILE, d, "w", request.image.as_deref(), &result)
        .await
        .unwrap());
    assert_eq!(
        q.image(&hash).await.unwrap(),
        None,
        "the last holder deleted it"
    );

    let (d, request) = &started[1];
    assert_eq!(d.job, "b");
    let dead = q
        .fail(
            PROFILE,
            d,
            "w",
            request.image.as_deref(),
            "image: fully transparent",
            FailMode::BadInput,
        )
        .await
        .unwrap();
    assert!(dead, "bad input is not retried");
    let status = q.status("b").await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.attempts, status.error_kind.as_deref()),
        (JobState::Dead, 1, Some("bad_input"))
    );
    assert_eq!(
        q.dead_letters(1).await.unwrap()[0],
        ("b".to_string(), "image: fully transparent".to_string(), 1)
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("t:image:*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // A text profile's worker refuses an image job at once, without running it.
    let spec = TestGeneratorSpec::default();
    let worker = Worker::start(config.clone(), "w", 1, &spec);
    q.submit("misfiled", PROFILE, &job(&other)).await.unwrap();
    assert_eq!(
        wait_terminal(&q, &["misfiled".into()], Duration::from_secs(30)).await,
        [JobState::Dead]
    );
    let status = q.status("misfiled").await.unwrap().unwrap();
    assert_eq!(status.error_kind.as_deref(), Some("bad_input"));
    assert!(
        status
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("turns text prompts into 3D; this job carries an image"),
        "{status:?}"
    );
    assert_eq!(spec.stats.calls.load(Ordering::SeqCst), 0);
    assert_eq!(
        q.image(&job(&other).request.image.unwrap()).await.unwrap(),
        None
    );
    worker.stop().await;
}
