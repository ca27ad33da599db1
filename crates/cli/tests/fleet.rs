//! Issue 14 with the real binary, real HTTP and a real Redis, on the tiny
//! models: two `splatforge worker`s and a `splatforge serve --redis` front
//! end. `kill -9` of the worker running a request's job → the other worker
//! claims it after `--claim-after` and the request still gets its PLY;
//! `splatforge submit` writes the batch's files and `_failed.json`, and
//! submitting the same file again resumes the same jobs (no new job).
//! Three worker processes share a 50-job batch, each job run once.
//! Image jobs on the tiny TRELLIS models: the competition `/generate` and
//! base64 `/generate/` through the fleet answer the bytes single-host
//! `serve` answers, a text-via-image worker (FLUX, then TRELLIS) the splat
//! `generate` writes; a bad image dies at once with its error (400 over
//! HTTP, `_failed.json` in a batch) while the others finish.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splatforge_fleet::test_redis::TestRedis;

mod common;
use common::make_models;

const BIN: &str = env!("CARGO_BIN_EXE_splatforge");

/// A child process, killed when dropped; its stderr lines are echoed and
/// the first line containing `signal` is sent back.
struct Process {
    child: Child,
    seen: mpsc::Receiver<String>,
}

impl Process {
    fn start(tag: &str, args: &[&str], signal: &'static str) -> Process {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("splatforge starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, seen) = mpsc::channel();
        let tag = tag.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(signal) {
                    let _ = tx.send(line.clone());
                }
                eprintln!("[{tag}] {line}");
            }
        });
        Process { child, seen }
    }

    fn wait_for(&self, what: &str) -> String {
        self.seen
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no '{what}' line"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(addr: SocketAddr, raw: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(180))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (
        head.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status"),
        buf[split + 4..].to_vec(),
    )
}

fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn post_prompt(addr: SocketAddr, prompt: &str) -> (u16, Vec<u8>) {
    let body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n--b--\r\n"
    );
    let head = format!(
        "POST /generate/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http(addr, &[head.as_bytes(), body.as_bytes()].concat())
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http(addr, &[head.as_bytes(), body].concat())
}

/// 404's competition request: the image as `prompt_image_file`, and `seed`.
fn post_competition(addr: SocketAddr, image: &[u8], seed: u64) -> (u16, Vec<u8>) {
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"prompt_image_file\"; filename=\"prompt.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    body.extend_from_slice(image);
    body.extend_from_slice(
        format!(
            "\r\n--b\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n{seed}\r\n--b--\r\n"
        )
        .as_bytes(),
    );
    post(addr, "/generate", "multipart/form-data; boundary=b", &body)
}

/// The three-gen route with the image's bytes in base64 in `prompt`.
fn post_base64_image(addr: SocketAddr, image: &[u8], seed: u64) -> (u16, Vec<u8>) {
    use base64::Engine;
    let prompt = base64::engine::general_purpose::STANDARD.encode(image);
    let json = serde_json::json!({ "prompt": prompt, "seed": seed }).to_string();
    post(addr, "/generate/", "application/json", json.as_bytes())
}

/// Starts `splatforge serve ARGS… --host 127.0.0.1 --port 0` and returns it
/// with its address.
fn serve(tag: &str, args: &[&str]) -> (Process, SocketAddr) {
    let args: Vec<&str> = ["serve", "--host", "127.0.0.1", "--port", "0"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let p = Process::start(tag, &args, "listening on http://");
    let addr = p
        .wait_for("address")
        .split("listening on http://")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (p, addr)
}

fn wait_healthy(addr: SocketAddr) {
    let t0 = Instant::now();
    while get(addr, "/health").0 != 200 {
        assert!(t0.elapsed() < Duration::from_secs(120), "never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `splatforge submit ITEMS -o OUT --profile PROFILE` on the tests' fleet.
fn submit(redis: &TestRedis, items: &Path, out: &Path, profile: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("submit")
        .arg(items)
        .arg("-o")
        .arg(out)
        .args(["--profile", profile, "--redis", &redis.url()])
        .args(["--redis-prefix", "t", "--timeout", "900"])
        .output()
        .unwrap()
}

/// `splatforge worker --name NAME ARGS…` on the tests' fleet (prefix `t`,
/// claims after 2 s); [`Process::wait_for`] `ready` before giving it jobs.
fn start_worker(redis: &TestRedis, name: &str, args: &[&str]) -> Process {
    let url = redis.url();
    let fleet = ["--redis", &url, "--redis-prefix", "t", "--claim-after", "2"];
    Process::start(
        name,
        &[&["worker", "--name", name][..], &fleet, args].concat(),
        "ready",
    )
}

/// A ready worker of the `development` profile on the tiny models.
fn worker(redis: &TestRedis, models: &Path, name: &str) -> Process {
    let models = models.to_str().unwrap();
    let p = start_worker(
        redis,
        name,
        &["--profile", "development", "--models", models],
    );
    p.wait_for("ready");
    p
}

/// State, worker and attempts of every job.
fn job_fields(con: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("t:job:*").query(con).unwrap();
    let fields = ["state", "worker", "attempts"];
    keys.iter()
        .map(|k| {
            let values: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(k)
                .arg(&fields[..])
                .query(con)
                .unwrap();
            fields
                .iter()
                .zip(values)
                .map(|(f, v)| (f.to_string(), v.unwrap_or_default()))
                .collect()
        })
        .collect()
}

fn counter(con: &mut redis::Connection, name: &str) -> u64 {
    let v: Option<u64> = redis::cmd("HGET")
        .arg("t:stats")
        .arg(name)
        .query(con)
        .unwrap();
    v.unwrap_or(0)
}

#[test]
fn a_killed_worker_loses_no_job_and_batches_resume() {
    let Some(redis) = TestRedis::start_or_skip("a_killed_worker_loses_no_job_and_batches_resume")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(dir.path(), "models", &["make-tiny"]);
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();

    let url = redis.url();
    let (_front, addr) = serve(
        "front",
        &[
            "--redis",
            &url,
            "--redis-prefix",
            "t",
            "--profile",
            "development",
            "--timeout",
            "120",
        ],
    );
    // No worker yet: /health says so.
    let t0 = Instant::now();
    loop {
        let (status, body) = get(addr, "/health");
        let body = String::from_utf8_lossy(&body).to_string();
        assert_eq!(status, 503, "{body}");
        if body.contains("\"status\":\"no_workers\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut workers = HashMap::from([
        ("wa", worker(&redis, &models, "wa")),
        ("wb", worker(&redis, &models, "wb")),
    ]);
    let t0 = Instant::now();
    while get(addr, "/health").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not healthy with two workers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // kill -9 the worker that runs the request's job, mid-job.
    let request = std::thread::spawn(move || post_prompt(addr, "a red chair"));
    let t0 = Instant::now();
    let victim = loop {
        if let Some(w) = job_fields(&mut con)
            .iter()
            .find(|j| j["state"] == "running")
            .map(|j| j["worker"].clone())
        {
            break w;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the job never ran");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut killed = workers.remove(victim.as_str()).expect("a known worker");
    assert!(Command::new("kill")
        .arg("-9")
        .arg(killed.child.id().to_string())
        .status()
        .unwrap()
        .success());
    let _ = killed.child.wait();
    let (status, body) = request.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body.starts_with(b"ply\n"));
    splatforge_splat::read_splat_bytes(&body).unwrap();
    let jobs = job_fields(&mut con);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["state"], "done");
    assert_eq!(jobs[0]["attempts"], "2", "{:?}", jobs[0]);
    assert_ne!(jobs[0]["worker"], victim, "finished by the survivor");
    assert_eq!(counter(&mut con, "reclaimed"), 1);

    // A batch from the command line, twice: the second run submits nothing new.
    let items = dir.path().join("items.jsonl");
    std::fs::write(&items, "{\"prompt\": \"a red chair\", \"stem\": \"chair\"}\n{\"prompt\": \"a blue car\", \"format\": \"spz\", \"seed\": 2}\n")
        .unwrap();
    let results = dir.path().join("out");
    let submit = || submit(&redis, &items, &results, "development");
    let first = submit();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("(submitted)"));
    let submitted = counter(&mut con, "submitted");
    assert_eq!(submitted, 3);
    let mut files: Vec<String> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["00001.spz", "_failed.json", "chair.ply"]);
    assert_eq!(
        std::fs::read_to_string(results.join("_failed.json"))
            .unwrap()
            .trim(),
        "[]"
    );
    splatforge_splat::read_splat_file(&results.join("00001.spz")).unwrap();
    let second = submit();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("(resumed)"));
    assert_eq!(
        counter(&mut con, "submitted"),
        submitted,
        "a duplicate submission made new jobs"
    );
    assert_eq!(counter(&mut con, "completed"), 3);
    assert_eq!(counter(&mut con, "duplicate_runs"), 0);
}

/// Three worker processes share a 50-job batch from `splatforge submit`:
/// every job has its result file, each ran exactly once, and the work was
/// spread (no worker idle).
#[test]
fn three_worker_processes_finish_fifty_jobs_once_each() {
    let Some(redis) =
        TestRedis::start_or_skip("three_worker_processes_finish_fifty_jobs_once_each")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(dir.path(), "models", &["make-tiny"]);
    const JOBS: usize = 50;
    let items = dir.path().join("items.jsonl");
    let lines: String = (0..JOBS)
        .map(|i| {
            format!(
                "{{\"prompt\": \"object number {i}\", \"stem\": \"job{i:02}\", \"seed\": {i}}}\n"
            )
        })
        .collect();
    std::fs::write(&items, lines).unwrap();
    let _workers: Vec<Process> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| worker(&redis, &models, name))
        .collect();
    let results = dir.path().join("out");
    let submit = submit(&redis, &items, &results, "development");
    assert!(
        submit.status.success(),
        "{}",
        String::from_utf8_lossy(&submit.stderr)
    );
    for i in 0..JOBS {
        let path = results.join(format!("job{i:02}.ply"));
        let g = splatforge_splat::read_splat_file(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!g.is_empty(), "{}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(results.join("_failed.json"))
            .unwrap()
            .trim(),
        "[]"
    );
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(counter(&mut con, "submitted"), JOBS as u64);
    assert_eq!(counter(&mut con, "completed"), JOBS as u64);
    assert_eq!(counter(&mut con, "duplicate_runs"), 0);
    let jobs = job_fields(&mut con);
    assert_eq!(jobs.len(), JOBS);
    for j in &jobs {
        assert_eq!(j["state"], "done", "{j:?}");
        assert_eq!(j["attempts"], "1", "{j:?}");
    }
    for name in ["w1", "w2", "w3"] {
        assert!(
            jobs.iter().any(|j| j["worker"] == name),
            "worker {name} ran no job"
        );
    }
}

/// Issue 14: image jobs through the fleet give single-host `serve`'s bytes
/// (the competition route Y-up, `/generate/` in `save_ply`'s frame), from
/// HTTP and from `splatforge submit`, and a text-via-image worker (FLUX then
/// TRELLIS) gives `generate`'s splat; a bad image fails its own job only,
/// at once (no retry), with the generator's error; and Redis keeps no image
/// once its jobs are over.
#[test]
fn image_jobs_through_the_fleet_match_single_host() {
    let Some(redis) = TestRedis::start_or_skip("image_jobs_through_the_fleet_match_single_host")
    else {
        return;
    };
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/ghost_rgba.png");
    let Ok(ghost) = std::fs::read(&fixture) else {
        eprintln!(
            "SKIPPED image_jobs_through_the_fleet_match_single_host: no {}",
            fixture.display()
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let models = models.to_str().unwrap();
    let profile = ["--profile", "image-development"];
    // A picture with no object: the generator's bad input.
    let mut clear = Vec::new();
    image::RgbaImage::new(8, 8)
        .write_to(
            &mut std::io::Cursor::new(&mut clear),
            image::ImageFormat::Png,
        )
        .unwrap();

    // Single host first: the reference bytes.
    let (single, addr) = serve("single", &[&profile[..], &["--models", models]].concat());
    wait_healthy(addr);
    let (status, competition) = post_competition(addr, &ghost, 7);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&competition));
    let (status, three_gen) = post_base64_image(addr, &ghost, 3);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&three_gen));
    assert_ne!(competition, three_gen);
    drop(single);

    let fleet = ["--redis", &redis.url(), "--redis-prefix", "t"];
    let worker = start_worker(
        &redis,
        "wi",
        &[&profile[..], &["--models", models]].concat(),
    );
    // Text via an image (FLUX, then TRELLIS) on its own profile's stream.
    let tiny = make_models(dir.path(), "tiny", &["make-tiny"]);
    let flux = tiny.join("flux-schnell-diffusers");
    let flux = flux.to_str().unwrap();
    let text_image = ["--profile", "text-image-development", "--flux", flux];
    let flux_worker = start_worker(
        &redis,
        "wf",
        &[&text_image[..], &["--models", models]].concat(),
    );
    let reference = dir.path().join("chair.ply");
    let out = Command::new(BIN)
        .args(["generate", "--prompt", "a red chair", "--seed", "5"])
        .args(text_image)
        .args(["--models", models, "-o"])
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    worker.wait_for("ready");
    flux_worker.wait_for("ready");
    let (_front, addr) = serve(
        "front",
        &[&fleet[..], &profile, &["--timeout", "120"]].concat(),
    );
    wait_healthy(addr);
    let (status, body) = post_competition(addr, &ghost, 7);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body == competition,
        "the competition route's PLY differs from single-host serve's"
    );
    let (status, body) = post_base64_image(addr, &ghost, 3);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body == three_gen,
        "/generate/'s PLY differs from single-host serve's"
    );
    let (status, body) = post_base64_image(addr, &clear, 3);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("bad_input") && text.contains("transparent"),
        "{text}"
    );
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("t:dead")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1["error"].contains("transparent"), "{dead:?}");
    assert_eq!(dead[0].1["attempts"], "1", "bad input is not retried");

    // A batch from a file: image files beside it, and base64 bytes.
    std::fs::write(dir.path().join("ghost.png"), &ghost).unwrap();
    std::fs::write(dir.path().join("clear.png"), &clear).unwrap();
    let ghost64 = serde_json::json!({
        "image": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ghost),
        "seed": 3,
        "stem": "ghost64",
    });
    let items = dir.path().join("items.jsonl");
    std::fs::write(
        &items,
        format!("{{\"image_path\": \"ghost.png\", \"seed\": 7, \"y_up\": true, \"stem\": \"ghost\"}}\n{{\"image_path\": \"clear.png\", \"stem\": \"clear\"}}\n{ghost64}\n{{\"prompt\": \"a red chair\", \"seed\": 5, \"profile\": \"text-image-development\", \"stem\": \"chair\"}}\n"),
    )
    .unwrap();
    let results = dir.path().join("out");
    let submit = submit(&redis, &items, &results, "image-development");
    let stderr = String::from_utf8_lossy(&submit.stderr);
    assert_eq!(submit.status.code(), Some(1), "one item failed: {stderr}");
    assert!(std::fs::read(results.join("ghost.ply")).unwrap() == competition);
    assert!(std::fs::read(results.join("ghost64.ply")).unwrap() == three_gen);
    assert!(!results.join("clear.ply").exists());
    assert_eq!(
        splatforge_splat::read_splat_file(&results.join("chair.ply")).unwrap(),
        splatforge_splat::read_splat_file(&reference).unwrap(),
        "the flux-trellis worker's splat differs from `generate`'s"
    );
    let failed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("_failed.json")).unwrap()).unwrap();
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0]["stem"].as_str(), failed[0]["image"].as_str()),
        (Some("clear"), Some("clear.png"))
    );
    assert!(
        failed[0]["error"].as_str().unwrap().contains("transparent"),
        "{failed:?}"
    );
    let images: Vec<String> = redis::cmd("KEYS").arg("t:image:*").query(&mut con).unwrap();
    assert!(images.is_empty(), "images left in redis: {images:?}");
    assert_eq!(counter(&mut con, "retries"), 0);
    drop((worker, flux_worker));
}
