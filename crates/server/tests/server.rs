//! The service end to end: a real server on an ephemeral loopback port, real
//! HTTP requests, and the model-free test generator of `common`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use splatforge_server::ServerConfig;
use splatforge_splat::ply::read_ply;
use splatforge_splat::spz::read_spz;
use splatforge_splat::validate::{validate, ValidationConfig};
use splatforge_splat::Gaussians;

fn relaxed() -> ValidationConfig {
    ValidationConfig {
        min_gaussians: 1,
        ..Default::default()
    }
}

fn assert_valid(g: &Gaussians) {
    let report = validate(g, &relaxed());
    assert!(
        report.passed,
        "validator checks failed: {:?}",
        report.checks
    );
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    r.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_returns_a_valid_binary_ply_with_stage_timings() {
    let s = TestServer::ready(test_config(), TestGeneratorSpec::default()).await;
    let c = client();
    let r = post_generate(&c, &s, &[("prompt", "a red chair"), ("seed", "7")]).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-gaussian-count"], "800");
    assert_eq!(h["x-splat-format"], "ply");
    let stages = h["x-stage-timings"].to_str().unwrap().to_string();
    for stage in ["queue=", "think=", "layout=", "encode=", "total="] {
        assert!(stages.contains(stage), "{stages}");
    }
    assert!(h["server-timing"].to_str().unwrap().contains("layout;dur="));
    let body = r.bytes().await.unwrap();
    assert!(body.starts_with(b"ply\nformat binary_little_endian 1.0\n"));
    assert!(
        std::str::from_utf8(&body[..400]).is_err()
            || body.windows(18).any(|w| w == b"property float nx\n")
    );
    let g = read_ply(&body).unwrap();
    assert_eq!(g.len(), 800);
    assert_valid(&g);

    // Seeded and deterministic; another prompt gives another splat.
    let again = post_generate(&c, &s, &[("prompt", "a red chair"), ("seed", "7")])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body, again);
    let other = post_generate(&c, &s, &[("prompt", "a blue lamp"), ("seed", "7")])
        .await
        .bytes()
        .await
        .unwrap();
    assert_ne!(body, other);
    assert_eq!(s.stats().prompts.lock().unwrap()[0], "a red chair");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spz_and_base64_variants_and_urlencoded_and_json_bodies() {
    let s = TestServer::ready(test_config(), TestGeneratorSpec::default()).await;
    let c = client();
    let reference = read_ply(
        &post_generate(&c, &s, &[("prompt", "a cat")])
            .await
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();

    // 404's zstd SPZ, urlencoded as the old miner's aiohttp sends it.
    let r = c
        .post(s.url("/generate/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("prompt=a+cat&format=spz")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-splat-format"], "spz");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd frame");
    let g = read_spz(&bytes).unwrap();
    assert_eq!(g.len(), reference.len());
    assert_valid(&g);
    let max_err = g
        .means
        .iter()
        .zip(&reference.means)
        .flat_map(|(a, b)| (0..3).map(move |k| (a[k] - b[k]).abs()))
        .fold(0f32, f32::max);
    assert!(
        max_err < 1e-2,
        "SPZ positions within quantisation: {max_err}"
    );

    // base64 PLY (the pre-2025 transport) and base64 SPZ (the validators').
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = post_generate(&c, &s, &[("prompt", "a cat"), ("encoding", "base64")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(
        read_ply(&b64.decode(r.bytes().await.unwrap()).unwrap()).unwrap(),
        reference
    );
    let r = post_generate(
        &c,
        &s,
        &[
            ("prompt", "a cat"),
            ("format", "SPZ"),
            ("encoding", "base64"),
        ],
    )
    .await;
    assert_eq!(
        read_spz(&b64.decode(r.bytes().await.unwrap()).unwrap())
            .unwrap()
            .len(),
        reference.len()
    );

    // A JSON object works too; unknown fields are ignored.
    let r = c
        .post(s.url("/generate"))
        .json(&serde_json::json!({"prompt": "a cat", "seed": 0, "extra": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        read_ply(&r.bytes().await.unwrap()).unwrap(),
        reference,
        "seed 0 = no seed for the test generator"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_warmed_up_then_200_and_version_names_the_generator() {
    let spec = TestGeneratorSpec::default().warm_up(Duration::from_millis(700));
    let s = TestServer::start(
        ServerConfig {
            devices: vec![0, 1],
            ..test_config()
        },
        spec,
    )
    .await;
    let c = client();
    let r = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body = json(r).await;
    assert_eq!(body["status"], "loading");
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);
    let r = post_generate(&c, &s, &[("prompt", "early")]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(json(r).await["kind"], "not_ready");
    let v = json(c.get(s.url("/version")).send().await.unwrap()).await;
    assert_eq!(v["generator"], serde_json::Value::Null);

    s.wait_ready().await;
    assert_eq!(
        s.stats().warm_ups.load(Ordering::SeqCst),
        2,
        "one generator per device, each warmed up"
    );
    let body = json(c.get(s.url("/health")).send().await.unwrap()).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["generator"], "test-generator");
    assert_eq!(body["devices"][1]["state"], "ready");
    assert_eq!(body["devices"][0]["queue_capacity"], 4);
    let v = json(c.get(s.url("/version")).send().await.unwrap()).await;
    assert_eq!(v["name"], "splatforge-server");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["generator"], "test-generator");
    assert!(v.get("git").is_some());
    assert_eq!(
        post_generate(&c, &s, &[("prompt", "now")]).await.status(),
        200
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_with_a_json_error() {
    let s = TestServer::ready(
        ServerConfig {
            max_body_bytes: 64 * 1024,
            ..test_config()
        },
        TestGeneratorSpec::default(),
    )
    .await;
    let c = client();
    async fn expect(r: reqwest::Response, status: u16, needle: &str) {
        assert_eq!(r.status(), status);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: serde_json::Value = r.json().await.unwrap();
        let msg = body["error"].as_str().expect("an error message");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }
    let form = |body: Vec<u8>| {
        c.post(s.url("/generate/"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    expect(
        post_generate(&c, &s, &[("seed", "1")]).await,
        400,
        "missing form field 'prompt'",
    )
    .await;
    expect(post_generate(&c, &s, &[("prompt", "")]).await, 400, "empty").await;
    expect(
        post_generate(&c, &s, &[("prompt", " \t\n ")]).await,
        400,
        "empty",
    )
    .await;
    expect(form(b"".to_vec()).await.unwrap(), 400, "missing").await;
    // A text server takes no image.
    expect(
        post_generate(&c, &s, &[("prompt", "a chair"), ("image", "\u{89}PNG")]).await,
        400,
        "takes no 'image' field",
    )
    .await;

    // Characters, not bytes: 1024 two-byte characters pass, 1025 do not.
    let ok = "é".repeat(1024);
    assert_eq!(
        post_generate(&c, &s, &[("prompt", &ok)]).await.status(),
        200
    );
    expect(
        post_generate(&c, &s, &[("prompt", &"é".repeat(1025))]).await,
        400,
        "1025 characters",
    )
    .await;
    expect(
        post_generate(&c, &s, &[("prompt", &"a".repeat(1100))]).await,
        400,
        "at most 1024",
    )
    .await;

    // Invalid UTF-8, percent-encoded and raw in a multipart part.
    expect(
        form(b"prompt=caf%E9".to_vec()).await.unwrap(),
        400,
        "not valid UTF-8",
    )
    .await;
    let part = reqwest::multipart::Part::bytes(vec![b'a', 0xff, 0xfe, b'b']);
    let r = c
        .post(s.url("/generate/"))
        .multipart(reqwest::multipart::Form::new().part("prompt", part))
        .send()
        .await
        .unwrap();
    expect(r, 400, "not valid UTF-8").await;

    // Too large: by Content-Length, and streamed without one.
    expect(
        form(vec![b'a'; 64 * 1024 + 1]).await.unwrap(),
        413,
        "over 65536 bytes",
    )
    .await;
    let (status, text) = raw_chunked_post(&s, "/generate/", 65, 1024).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"error\""), "{text}");

    expect(
        post_generate(&c, &s, &[("prompt", "x"), ("seed", "-3")]).await,
        400,
        "seed",
    )
    .await;
    expect(
        post_generate(&c, &s, &[("prompt", "x"), ("format", "obj")]).await,
        400,
        "format",
    )
    .await;
    expect(
        post_generate(&c, &s, &[("prompt", "x"), ("encoding", "hex")]).await,
        400,
        "encoding",
    )
    .await;
    let r = c
        .post(s.url("/generate/"))
        .header("content-type", "text/plain")
        .body("prompt=x")
        .send()
        .await
        .unwrap();
    expect(r, 415, "Content-Type").await;
    let r = c
        .post(s.url("/generate/"))
        .header("content-type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    expect(r, 400, "object").await;
    expect(
        c.get(s.url("/nope")).send().await.unwrap(),
        404,
        "no such endpoint",
    )
    .await;
    let r = c.get(s.url("/generate/")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    expect(r, 405, "takes POST").await;

    // None of it reached the generator except the one good prompt, and the
    // server still serves.
    assert_eq!(s.stats().calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        post_generate(&c, &s, &[("prompt", "fine")]).await.status(),
        200
    );
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="bad_request"}"#
        ),
        13.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="payload_too_large"}"#
        ),
        2.0
    );
    s.stop().await.unwrap();
}

/// POSTs `chunks` chunks of `size` bytes with chunked transfer encoding (no
/// Content-Length) over a raw socket; returns the status and the raw answer.
async fn raw_chunked_post(s: &TestServer, path: &str, chunks: usize, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{size:x}\r\n{}\r\n", "x".repeat(size));
    for _ in 0..chunks {
        // The server may answer 413 and close before everything is sent.
        if sock.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    // No final chunk: the server has all it reads, and answers before the
    // body ends (so that it closes with nothing unread, without a reset).
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Sends `n` concurrent requests; returns (status, body, retry-after) each.
async fn burst(s: &TestServer, n: usize, prompt: &str) -> Vec<(u16, Vec<u8>, Option<String>)> {
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, url, prompt) = (c.clone(), s.url("/generate/"), format!("{prompt} {i}"));
        tasks.push(tokio::spawn(async move {
            let form = reqwest::multipart::Form::new().text("prompt", prompt);
            let r = c
                .post(url)
                .multipart(form)
                .send()
                .await
                .expect("every request is answered");
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (
                status,
                r.bytes().await.expect("a complete body").to_vec(),
                retry,
            )
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_requests_against_a_queue_of_four_each_get_a_ply_or_a_503() {
    let spec = TestGeneratorSpec::default().delay(Duration::from_millis(60));
    let s = TestServer::ready(
        ServerConfig {
            queue_size: 4,
            ..test_config()
        },
        spec,
    )
    .await;
    let answers = burst(&s, 32, "a chair").await;
    let (mut ok, mut busy) = (0, 0);
    for (status, body, retry) in &answers {
        match status {
            200 => {
                assert_valid(&read_ply(body).unwrap());
                ok += 1;
            }
            503 => {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v["kind"], "queue_full");
                let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
                assert!((1..=60).contains(&secs));
                busy += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok + busy, 32, "none lost");
    assert!(ok >= 4, "the four queued succeed at least: {ok}");
    assert!(
        busy >= 1,
        "a queue of 4 cannot hold a burst of 32: {busy} rejected"
    );
    assert_eq!(s.stats().max_active.load(Ordering::SeqCst), 1, "one worker");

    // Healthy after, and the metrics agree with what the clients saw.
    let c = client();
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(
        post_generate(&c, &s, &[("prompt", "after")]).await.status(),
        200
    );
    let m = s.metrics().await;
    let req = |outcome: &str| {
        sample(
            &m,
            &format!(
                r#"splatforge_http_requests_total{{endpoint="/generate/",outcome="{outcome}"}}"#
            ),
        )
    };
    assert_eq!(req("ok"), (ok + 1) as f64, "{m}");
    assert_eq!(req("queue_full"), busy as f64);
    assert_eq!(
        sample(&m, r#"splatforge_jobs_total{device="0",outcome="ok"}"#),
        (ok + 1) as f64
    );
    assert_eq!(sample(&m, r#"splatforge_queue_depth{device="0"}"#), 0.0);
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_in_flight{endpoint="/generate/"}"#
        ),
        0.0
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_of_a_generator_that_is_not_concurrent_take_turns() {
    let spec = TestGeneratorSpec::default()
        .delay(Duration::from_millis(40))
        .not_concurrent();
    let config = ServerConfig {
        workers_per_device: 4,
        queue_size: 8,
        ..test_config()
    };
    let s = TestServer::ready(config, spec).await;
    let answers = burst(&s, 8, "a lamp").await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(statuses.iter().all(|&c| c == 200), "{statuses:?}");
    assert_eq!(
        s.stats().max_active.load(Ordering::SeqCst),
        1,
        "one generation of the device at a time"
    );
    let m = s.metrics().await;
    assert!(
        sample(
            &m,
            r#"splatforge_stage_duration_seconds_count{stage="device_turn"}"#
        ) >= 8.0,
        "{m}"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_spread_over_two_devices() {
    let spec = TestGeneratorSpec::default().delay(Duration::from_millis(40));
    let config = ServerConfig {
        devices: vec![0, 1],
        workers_per_device: 2,
        queue_size: 2,
        ..test_config()
    };
    let s = TestServer::ready(config, spec).await;
    let answers = burst(&s, 16, "a lamp").await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    assert_eq!(ok + answers.iter().filter(|a| a.0 == 503).count(), 16);
    assert!(ok >= 4, "the queues hold 2 × 2 at least: {ok}");
    assert!(
        s.stats().max_active.load(Ordering::SeqCst) >= 2,
        "workers run in parallel"
    );
    assert!(s.stats().max_active.load(Ordering::SeqCst) <= 4);
    let m = s.metrics().await;
    let d0 = sample(&m, r#"splatforge_jobs_total{device="0",outcome="ok"}"#);
    let d1 = sample(&m, r#"splatforge_jobs_total{device="1",outcome="ok"}"#);
    assert_eq!(d0 + d1, ok as f64);
    assert!(d0 > 0.0 && d1 > 0.0, "both devices served: {d0} / {d1}");
    assert_eq!(
        sample(&m, r#"splatforge_device_memory_bytes{device="1"}"#),
        1_000_001.0
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_its_timeout_gets_504_and_its_job_is_cancelled() {
    let spec = TestGeneratorSpec::default().then(Behaviour::Sleep(Duration::from_secs(20)));
    let s = TestServer::ready(
        ServerConfig {
            timeout: Duration::from_millis(400),
            ..test_config()
        },
        spec,
    )
    .await;
    let c = client();
    let t = Instant::now();
    let r = post_generate(&c, &s, &[("prompt", "slow")]).await;
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(json(r).await["kind"], "timeout");
    wait_for(
        || s.stats().cancelled() == 1,
        "the generator sees its token fire",
    )
    .await;
    // The worker is free again at once.
    assert_eq!(
        post_generate(&c, &s, &[("prompt", "fast")]).await.status(),
        200
    );
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"splatforge_jobs_total{device="0",outcome="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="timeout"}"#
        ),
        1.0
    );
    s.stop().await.unwrap();
}

async fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_out_of_memory_and_panics_are_500s_and_the_worker_keeps_serving() {
    let spec = TestGeneratorSpec::default()
        .then(Behaviour::Fail)
        .then(Behaviour::OutOfMemory)
        .then(Behaviour::Panic)
        .then(Behaviour::Ok);
    let s = TestServer::ready(test_config(), spec).await;
    let c = client();
    for (kind, needle) in [
        ("failed", "scripted failure"),
        ("out_of_memory", "OUT_OF_MEMORY"),
        ("panicked", "scripted panic"),
    ] {
        let r = post_generate(&c, &s, &[("prompt", kind)]).await;
        assert_eq!(r.status(), 500, "{kind}");
        let body = json(r).await;
        assert_eq!(body["kind"], kind);
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let r = post_generate(&c, &s, &[("prompt", "then fine")]).await;
    assert_eq!(r.status(), 200);
    assert_valid(&read_ply(&r.bytes().await.unwrap()).unwrap());
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    let m = s.metrics().await;
    for outcome in ["failed", "out_of_memory", "panicked", "ok"] {
        assert_eq!(
            sample(
                &m,
                &format!(r#"splatforge_jobs_total{{device="0",outcome="{outcome}"}}"#)
            ),
            1.0,
            "{outcome}"
        );
        assert_eq!(
            sample(
                &m,
                &format!(
                    r#"splatforge_http_requests_total{{endpoint="/generate/",outcome="{outcome}"}}"#
                )
            ),
            1.0
        );
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_running_and_queued_jobs() {
    let spec = TestGeneratorSpec::default().then(Behaviour::Sleep(Duration::from_secs(20)));
    let s = TestServer::ready(test_config(), spec).await;
    let impatient = |ms| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(ms))
            .build()
            .unwrap()
    };
    // A runs (and would take 20 s); B waits behind it. Both clients give up.
    let (ca, cb) = (impatient(700), impatient(300));
    let a = tokio::spawn({
        let url = s.url("/generate/");
        async move { ca.post(url).form(&[("prompt", "A")]).send().await }
    });
    wait_for(|| s.stats().calls.load(Ordering::SeqCst) == 1, "A running").await;
    let b = cb
        .post(s.url("/generate/"))
        .form(&[("prompt", "B")])
        .send()
        .await;
    assert!(b.unwrap_err().is_timeout());
    assert!(a.await.unwrap().unwrap_err().is_timeout());
    wait_for(
        || s.stats().cancelled() == 1,
        "A's generator sees its token fire",
    )
    .await;
    let c = client();
    // B was skipped without running: the next request runs at once.
    let t = Instant::now();
    assert_eq!(
        post_generate(&c, &s, &[("prompt", "C")]).await.status(),
        200
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(*s.stats().prompts.lock().unwrap(), ["A", "C"]);
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="disconnected"}"#
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_jobs_total{device="0",outcome="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_jobs_total{device="0",outcome="withdrawn"}"#
        ),
        1.0,
        "B left its queue at once"
    );
    assert_eq!(
        sample(&m, r#"splatforge_jobs_total{device="0",outcome="skipped"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_in_flight{endpoint="/generate/"}"#
        ),
        0.0
    );
    s.stop().await.unwrap();
}

/// Issue 17, item 5: queue 4, one long job running, three queued clients
/// that disconnect and one live queued client: the queue was full of dead
/// jobs until they reached the front; now their slots are free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_the_queue_free_their_slots_at_once() {
    let spec = TestGeneratorSpec::default().then(Behaviour::Sleep(Duration::from_secs(2)));
    let s = TestServer::ready(
        ServerConfig {
            queue_size: 4,
            ..test_config()
        },
        spec,
    )
    .await;
    let c = client();
    let depth = || async {
        let h = json(c.get(s.url("/health")).send().await.unwrap()).await;
        h["devices"][0]["queue_depth"].as_u64().unwrap()
    };
    let post = |client: reqwest::Client, prompt: &'static str| {
        let url = s.url("/generate/");
        tokio::spawn(async move { client.post(url).form(&[("prompt", prompt)]).send().await })
    };
    let long = post(client(), "long");
    wait_for(
        || s.stats().calls.load(Ordering::SeqCst) == 1,
        "the long job running",
    )
    .await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let leaving: Vec<_> = ["gone 1", "gone 2", "gone 3"]
        .into_iter()
        .map(|p| post(impatient.clone(), p))
        .collect();
    let end = Instant::now() + Duration::from_secs(5);
    while depth().await != 3 {
        assert!(Instant::now() < end, "the three never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = post(client(), "live 1");
    for l in leaving {
        assert!(l.await.unwrap().unwrap_err().is_timeout());
    }
    let left = Instant::now();
    while depth().await != 1 {
        assert!(
            left.elapsed() < Duration::from_millis(500),
            "the leavers' slots were not freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The long job still runs; a live request is queued, not refused.
    assert_eq!(s.stats().calls.load(Ordering::SeqCst), 1);
    let r = post_generate(&c, &s, &[("prompt", "live 2")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(live.await.unwrap().unwrap().status(), 200);
    assert_eq!(long.await.unwrap().unwrap().status(), 200);
    assert_eq!(
        *s.stats().prompts.lock().unwrap(),
        ["long", "live 1", "live 2"],
        "no dead job ran"
    );
    let m = s.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"splatforge_jobs_total{device="0",outcome="withdrawn"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"splatforge_jobs_total{device="0",outcome="skipped"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="disconnected"}"#
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="queue_full"}"#
        ),
        0.0
    );
    s.stop().await.unwrap();
}

/// Issue 17, item 6: a client that closes its connection in the middle of
/// its body is counted as `upload_aborted`, not as a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_mid_upload_is_counted_as_upload_aborted() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::ready(test_config(), TestGeneratorSpec::default()).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // 14 of the 1000 bytes announced, then the connection closes.
    let head = "POST /generate/ HTTP/1.1\r\nHost: loopback\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 1000\r\n\r\nprompt=a+chair";
    sock.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(sock);
    let outcome = |m: &str, o: &str| {
        sample(
            m,
            &format!(r#"splatforge_http_requests_total{{endpoint="/generate/",outcome="{o}"}}"#),
        )
    };
    let end = Instant::now() + Duration::from_secs(5);
    let mut m = s.metrics().await;
    while outcome(&m, "upload_aborted") + outcome(&m, "bad_request") == 0.0 && Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = s.metrics().await;
    }
    assert_eq!(outcome(&m, "upload_aborted"), 1.0, "{m}");
    assert_eq!(outcome(&m, "bad_request"), 0.0);
    assert_eq!(s.stats().calls.load(Ordering::SeqCst), 0);
    s.stop().await.unwrap();
}

/// Issue 17, item 7: each lenient case is refused, the same way on both
/// generation routes and in every body encoding, before any generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_input_is_refused_alike_on_every_route_and_encoding() {
    let s = TestServer::ready(test_config(), TestGeneratorSpec::default()).await;
    let c = client();
    async fn expect(r: reqwest::Response, status: u16, needle: &str) {
        assert_eq!(r.status(), status);
        let body: serde_json::Value = r.json().await.unwrap();
        let msg = body["error"].as_str().expect("a JSON error");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }
    for route in ["/generate/", "/generate_video/"] {
        let url = s.url(route);
        // No Content-Type: refused, not guessed to be a form.
        expect(
            c.post(&url).body("prompt=a+cat").send().await.unwrap(),
            415,
            "no Content-Type",
        )
        .await;
        // Text fields are JSON strings; numeric fields integers or digit strings.
        expect(
            c.post(&url)
                .json(&serde_json::json!({"prompt": 5}))
                .send()
                .await
                .unwrap(),
            400,
            "must be a string",
        )
        .await;
        let r = c
            .post(&url)
            .json(&serde_json::json!({"prompt": "a cat", "seed": [1]}))
            .send()
            .await
            .unwrap();
        expect(r, 400, "'seed' must be an integer, got an array").await;
        // A field given twice, in each encoding.
        let r = c
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("prompt=a+cat&prompt=a+dog")
            .send()
            .await
            .unwrap();
        expect(r, 400, "'prompt' is given 2 times").await;
        let form = reqwest::multipart::Form::new()
            .text("prompt", "a cat")
            .text("prompt", "a dog");
        expect(
            c.post(&url).multipart(form).send().await.unwrap(),
            400,
            "'prompt' is given 2 times",
        )
        .await;
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"prompt": "a cat", "seed": 1, "seed": 2}"#)
            .send()
            .await
            .unwrap();
        expect(r, 400, "'seed' is given 2 times").await;
    }
    // Above the largest video resolution: refused, not clamped.
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_res", "5000")])
        .send()
        .await
        .unwrap();
    expect(r, 400, "video_res must be 16 to 1088").await;
    assert_eq!(s.stats().calls.load(Ordering::SeqCst), 0);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_finishes_running_and_queued_jobs() {
    let spec = TestGeneratorSpec::default().delay(Duration::from_millis(150));
    let mut s = TestServer::ready(
        ServerConfig {
            queue_size: 8,
            ..test_config()
        },
        spec,
    )
    .await;
    let load = {
        let base = s.base.clone();
        let spec = s.spec.clone();
        let fake = TestServer::handle_for(base, spec);
        tokio::spawn(async move { burst(&fake, 6, "box").await })
    };
    // Wait until all six are accepted: one running, five queued.
    let c = client();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let h = json(c.get(s.url("/health")).send().await.unwrap()).await;
        let (q, r) = (
            h["devices"][0]["queue_depth"].as_u64().unwrap(),
            h["devices"][0]["running"].as_u64().unwrap(),
        );
        if q + r == 6 {
            break;
        }
        assert!(Instant::now() < end, "the burst never queued: {h}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c);
    let t = Instant::now();
    s.trigger_shutdown();
    let answers = load.await.unwrap();
    assert!(
        answers.iter().all(|a| a.0 == 200),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    for a in &answers {
        assert_valid(&read_ply(&a.1).unwrap());
    }
    s.join().await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "it waited for the queue"
    );
    assert_eq!(s.stats().completed.load(Ordering::SeqCst), 6);
    // Nothing listens any more.
    assert!(client().get(s.url("/health")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_shutdown_deadline_remaining_jobs_are_cancelled_and_answered() {
    let spec = TestGeneratorSpec::default().then(Behaviour::Sleep(Duration::from_secs(30)));
    let config = ServerConfig {
        shutdown_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let mut s = TestServer::ready(config, spec).await;
    let pending = {
        let url = s.url("/generate/");
        tokio::spawn(async move {
            client()
                .post(url)
                .form(&[("prompt", "forever")])
                .send()
                .await
                .unwrap()
        })
    };
    wait_for(|| s.stats().calls.load(Ordering::SeqCst) == 1, "running").await;
    let t = Instant::now();
    s.trigger_shutdown();
    let r = pending.await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(json(r).await["kind"], "shutting_down");
    s.join().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(s.stats().cancelled(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_fails_to_load_stops_the_server_with_an_error() {
    let spec = TestGeneratorSpec::default()
        .warm_up(Duration::from_millis(200))
        .fail_to_load(1);
    let mut s = TestServer::start(
        ServerConfig {
            devices: vec![0, 1],
            ..test_config()
        },
        spec,
    )
    .await;
    let err = s.join().await.unwrap_err();
    assert!(err.to_string().contains("device 1 has no models"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_expected_series_with_the_right_counts() {
    let s = TestServer::ready(test_config(), TestGeneratorSpec::default()).await;
    let c = client();
    for p in ["one", "two"] {
        assert_eq!(post_generate(&c, &s, &[("prompt", p)]).await.status(), 200);
    }
    assert_eq!(post_generate(&c, &s, &[("prompt", "")]).await.status(), 400);
    c.get(s.url("/version")).send().await.unwrap();
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = r.text().await.unwrap();
    let expect = [
        (
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"splatforge_http_requests_total{endpoint="/generate/",outcome="bad_request"}"#,
            1.0,
        ),
        (
            r#"splatforge_http_requests_total{endpoint="/version",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"splatforge_http_requests_total{endpoint="/metrics",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"splatforge_http_request_duration_seconds_count{endpoint="/generate/"}"#,
            3.0,
        ),
        (r#"splatforge_jobs_total{device="0",outcome="ok"}"#, 2.0),
        (
            r#"splatforge_generation_duration_seconds_count{device="0"}"#,
            2.0,
        ),
        (r#"splatforge_queue_wait_seconds_count{device="0"}"#, 2.0),
        (
            r#"splatforge_stage_duration_seconds_count{stage="layout"}"#,
            2.0,
        ),
        (
            r#"splatforge_stage_duration_seconds_count{stage="think"}"#,
            2.0,
        ),
        (
            r#"splatforge_stage_duration_seconds_count{stage="queue"}"#,
            2.0,
        ),
        (
            r#"splatforge_stage_duration_seconds_count{stage="encode"}"#,
            2.0,
        ),
        (
            r#"splatforge_stage_duration_seconds_bucket{stage="layout",le="+Inf"}"#,
            2.0,
        ),
        (r#"splatforge_queue_depth{device="0"}"#, 0.0),
        (r#"splatforge_queue_capacity{device="0"}"#, 4.0),
        (r#"splatforge_jobs_running{device="0"}"#, 0.0),
        (r#"splatforge_device_memory_bytes{device="0"}"#, 1_000_000.0),
        (
            r#"splatforge_device_memory_total_bytes{device="0"}"#,
            8_000_000.0,
        ),
        ("splatforge_ready", 1.0),
        (
            r#"splatforge_http_requests_in_flight{endpoint="/generate/"}"#,
            0.0,
        ),
    ];
    for (series, value) in expect {
        assert!(
            m.lines().any(|l| l.starts_with(series)),
            "missing {series}\n{m}"
        );
        assert_eq!(sample(&m, series), value, "{series}");
    }
    for family in ["counter", "histogram", "gauge"] {
        assert!(m.contains(&format!(" {family}\n")));
    }
    assert!(m.contains("splatforge_build_info{version=\""));
    assert!(m.contains("generator=\"test-generator\"} 1\n"));
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_video_returns_a_turntable_gif() {
    use image::AnimationDecoder as _;
    let s = TestServer::ready(
        ServerConfig {
            max_video_res: 64,
            ..test_config()
        },
        TestGeneratorSpec::default(),
    )
    .await;
    let c = client();
    let r = c
        .post(s.url("/generate_video/"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("prompt", "a mug")
                .text("video_res", "48")
                .text("frames", "6")
                .text("video_format", "gif"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/gif");
    assert!(r.headers()["x-stage-timings"]
        .to_str()
        .unwrap()
        .contains("render="));
    let gif = r.bytes().await.unwrap();
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&gif[..]))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 6);
    assert_eq!(frames[0].buffer().dimensions(), (48, 48));
    // The splat is drawn: the centre is not the white background, the corner is.
    let f = frames[0].buffer();
    assert_ne!(f.get_pixel(24, 24).0[..3], [255, 255, 255]);
    assert_eq!(f.get_pixel(0, 0).0[..3], [255, 255, 255]);
    // Without video_res: 404's default, or the server's cap when lower.
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[
            ("prompt", "a mug"),
            ("frames", "2"),
            ("video_format", "gif"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-video-res"], "64");
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_res", "8")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("frames", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_format", "avi")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await.unwrap();
}

#[cfg(feature = "mp4")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_video_returns_an_h264_mp4_by_default() {
    let s = TestServer::ready(
        ServerConfig {
            max_video_res: 64,
            ..test_config()
        },
        TestGeneratorSpec::default(),
    )
    .await;
    let c = client();
    // 404's request: prompt and video_res, here over this server's cap.
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_res", "1088")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(json(r).await["error"]
        .as_str()
        .unwrap()
        .contains("16 to 64"));
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_res", "64"), ("frames", "10")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.headers()["x-video-res"], "64");
    let mp4_bytes = r.bytes().await.unwrap();
    assert_eq!(&mp4_bytes[4..8], b"ftyp");
    let size = mp4_bytes.len() as u64;
    let reader =
        mp4::Mp4Reader::read_header(std::io::Cursor::new(mp4_bytes.to_vec()), size).unwrap();
    assert_eq!(reader.tracks().len(), 1);
    let track = reader.tracks().values().next().unwrap();
    assert_eq!(track.media_type().unwrap(), mp4::MediaType::H264);
    assert_eq!((track.width(), track.height()), (64, 64));
    assert_eq!(track.sample_count(), 10);
    assert_eq!(
        track.duration(),
        Duration::from_millis(400),
        "10 frames at 25 fps"
    );
    // Odd resolutions are made even for H.264.
    let r = c
        .post(s.url("/generate_video/"))
        .form(&[("prompt", "a mug"), ("video_res", "33"), ("frames", "2")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-video-res"], "32");
    s.stop().await.unwrap();
}
