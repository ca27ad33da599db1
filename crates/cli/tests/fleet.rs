//! Issue 14 with the real binary, real HTTP and a real Redis, on the tiny
//! models: two `splatforge worker`s and a `splatforge serve --redis` front
//! end. `kill -9` of the worker running a request's job → the other worker
//! claims it after `--claim-after` and the request still gets its PLY;
//! `splatforge submit` writes the batch's files and `_failed.json`, and
//! submitting the same file again resumes the same jobs (no new job).
//! Three worker processes share a 50-job batch, each job run once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splatforge_fleet::test_redis::TestRedis;

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

fn worker(redis: &TestRedis, models: &Path, name: &str) -> Process {
    let models = models.to_str().unwrap();
    let args = [
        "worker",
        "--redis",
        &redis.url(),
        "--redis-prefix",
        "t",
        "--claim-after",
        "2",
        "--models",
        models,
    ];
    let p = Process::start(
        name,
        &[&args[..], &["--profile", "development", "--name", name]].concat(),
        "ready",
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
    let models = dir.path().join("models");
    let out = Command::new(BIN)
        .args(["models", "make-tiny"])
        .arg(&models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();

    let front = Process::start(
        "front",
        &[
            "serve",
            "--redis",
            &redis.url(),
            "--redis-prefix",
            "t",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        .into_iter()
        .chain(["--profile", "development", "--timeout", "120"])
        .collect::<Vec<_>>(),
        "listening on http://",
    );
    let addr: SocketAddr = front
        .wait_for("address")
        .split("listening on http://")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
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
    let submit = || {
        Command::new(BIN)
            .args([
                "submit",
                items.to_str().unwrap(),
                "-o",
                results.to_str().unwrap(),
                "--profile",
                "development",
            ])
            .args([
                "--redis",
                &redis.url(),
                "--redis-prefix",
                "t",
                "--timeout",
                "300",
            ])
            .output()
            .unwrap()
    };
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
    let models = dir.path().join("models");
    let out = Command::new(BIN)
        .args(["models", "make-tiny"])
        .arg(&models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let submit = Command::new(BIN)
        .args([
            "submit",
            items.to_str().unwrap(),
            "-o",
            results.to_str().unwrap(),
            "--profile",
            "development",
            "--redis",
            &redis.url(),
            "--redis-prefix",
            "t",
            "--timeout",
            "900",
        ])
        .output()
        .unwrap();
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
