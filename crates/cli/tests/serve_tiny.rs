//! issue 6's Must-show with the real pipeline and the tiny models:
//! `splatforge models make-tiny DIR`, then `splatforge serve --port 0
//! --models DIR` (tiny models pick the `development` profile, as in
//! `generate`); `/health` turns 200; `POST
//! /generate/` with prompt "a red chair" returns a PLY; an empty and a
//! 1,100-character prompt get 4xx; 16 concurrent requests each get a PLY
//! or a 503. Plain HTTP/1.1 over `TcpStream`, no client library.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splatforge_splat::read_splat_bytes;
use splatforge_splat::validate::{validate, ValidationConfig};

struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.write_all(raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let mut body = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(Response { status, head, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn post_prompt(addr: SocketAddr, prompt: &str) -> std::io::Result<Response> {
    let boundary = "splatforgetestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n--{boundary}--\r\n"
    );
    let head = format!(
        "POST /generate/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    request(addr, &[head.as_bytes(), body.as_bytes()].concat())
}

/// The server process; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(models: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--queue-size",
            "3",
            "--models",
        ])
        .arg(models)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let (profile_tx, profile_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line.split("listening on http://").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
            if line.contains("tiny test models; using --profile development") {
                let _ = profile_tx.send(());
            }
            eprintln!("[serve] {line}");
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints its address");
    profile_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tiny models without --profile serve the development profile");
    Server {
        child,
        addr: addr.parse().unwrap(),
    }
}

#[test]
fn tiny_models_behind_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args(["models", "make-tiny"])
        .arg(&models)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut server = start(&models);
    let addr = server.addr;

    // /health turns 200 once the models are loaded and warmed up.
    let t0 = Instant::now();
    loop {
        let r = get(addr, "/health").unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let version = get(addr, "/version").unwrap();
    assert!(String::from_utf8_lossy(&version.body).contains("pipeline:development"));
    // The CPU has no device memory to report (a CUDA build reports its GPU's).
    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").unwrap().body).into_owned();
    assert!(metrics.contains("splatforge_ready 1"), "{metrics}");
    assert!(!metrics.contains("splatforge_device_memory"), "{metrics}");

    // A PLY for "a red chair", with the stage timings.
    let r = post_prompt(addr, "a red chair").unwrap();
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("application/octet-stream"),
        "{}",
        r.head
    );
    assert!(r.body.starts_with(b"ply\n"));
    let g = read_splat_bytes(&r.body).unwrap();
    let report = validate(
        &g,
        &ValidationConfig {
            min_gaussians: 0,
            ..Default::default()
        },
    );
    assert!(report.passed, "{:#?}", report.checks);
    for stage in ["diffusion", "fit", "sds", "normalize"] {
        assert!(r.head.contains(stage), "no {stage} timing in\n{}", r.head);
    }

    // Bad prompts: 4xx with a JSON error.
    for prompt in [String::new(), "a".repeat(1100)] {
        let r = post_prompt(addr, &prompt).unwrap();
        assert!(
            (400..500).contains(&r.status),
            "{} chars: {}",
            prompt.len(),
            r.status
        );
        assert!(
            String::from_utf8_lossy(&r.body).contains("error"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }

    // 16 at once against 1 worker and a queue of 3: each a PLY or a 503.
    let handles: Vec<_> = (0..16)
        .map(|i| std::thread::spawn(move || post_prompt(addr, &format!("a red car {i}")).unwrap()))
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for h in handles {
        let r = h.join().unwrap();
        match r.status {
            200 => {
                assert!(r.body.starts_with(b"ply\n"));
                read_splat_bytes(&r.body).unwrap();
                ok += 1;
            }
            503 => {
                assert!(
                    r.head.to_ascii_lowercase().contains("retry-after"),
                    "{}",
                    r.head
                );
                busy += 1;
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert_eq!(ok + busy, 16);
    assert!((1..=4).contains(&ok), "{ok} PLYs, {busy} busy");
    assert_eq!(get(addr, "/health").unwrap().status, 200);

    // SIGTERM: a clean shutdown.
    if Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .is_ok_and(|s| s.success())
    {
        let t0 = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
