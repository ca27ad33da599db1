//! issue 6's Must-show with the real pipeline and the tiny models:
//! `splatforge models make-tiny DIR`, then `splatforge serve --port 0
//! --models DIR` (tiny models pick the `development` profile, as in
//! `generate`); `/health` turns 200; `POST
//! /generate/` with prompt "a red chair" returns a PLY; an empty and a
//! 1,100-character prompt get 4xx; 16 concurrent requests each get a PLY
//! or a 503. Plain HTTP/1.1 over `TcpStream`, no client library.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{get, make_models, post, wait_healthy, Response, Server};
use splatforge_splat::read_splat_bytes;
use splatforge_splat::validate::{validate, ValidationConfig};

fn post_prompt(addr: SocketAddr, prompt: &str) -> Response {
    let boundary = "splatforgetestboundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n--{boundary}--\r\n"
    );
    post(
        addr,
        &format!("multipart/form-data; boundary={boundary}"),
        body.as_bytes(),
    )
}

fn start(models: &std::path::Path) -> Server {
    let (profile_tx, profile_rx) = mpsc::channel();
    let args: [&std::ffi::OsStr; 4] = [
        "--queue-size".as_ref(),
        "3".as_ref(),
        "--models".as_ref(),
        models.as_os_str(),
    ];
    let server = Server::start(args, move |line| {
        if line.contains("tiny test models; using --profile development") {
            let _ = profile_tx.send(());
        }
    });
    profile_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("tiny models without --profile serve the development profile");
    server
}

#[test]
fn tiny_models_behind_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(dir.path(), "models", &["make-tiny"]);

    let mut server = start(&models);
    let addr = server.addr;

    // /health turns 200 once the models are loaded and warmed up.
    wait_healthy(addr);
    let version = get(addr, "/version");
    assert!(String::from_utf8_lossy(&version.body).contains("pipeline:development"));
    // The CPU has no device memory to report (a CUDA build reports its GPU's).
    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
    assert!(metrics.contains("splatforge_ready 1"), "{metrics}");
    assert!(!metrics.contains("splatforge_device_memory"), "{metrics}");

    // A PLY for "a red chair", with the stage timings.
    let r = post_prompt(addr, "a red chair");
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
        let r = post_prompt(addr, &prompt);
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
        .map(|i| std::thread::spawn(move || post_prompt(addr, &format!("a red car {i}"))))
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
    assert_eq!(get(addr, "/health").status, 200);

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
