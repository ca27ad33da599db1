//! Issue 13, item 3: `splatforge serve` with a text-via-image profile (`pipeline:
//! flux-trellis`) and the tiny random-weight FLUX and TRELLIS models, through real HTTP:
//! `/generate/` takes a text prompt and answers a PLY with the FLUX and TRELLIS stage
//! timings; the same seed gives the same bytes; the stage metrics cover FLUX.

use std::path::{Path, PathBuf};
use std::process::Command;

use splatforge_splat::read_splat_bytes;

mod common;
use common::{get, post, post_with_headers, wait_healthy, Server};

fn start(flux: &Path, trellis: &Path) -> Server {
    let flux = flux.as_os_str();
    let trellis = trellis.as_os_str();
    let args: [&std::ffi::OsStr; 6] = [
        "--profile".as_ref(),
        "text-image-development".as_ref(),
        "--flux".as_ref(),
        flux,
        "--models".as_ref(),
        trellis,
    ];
    Server::start(args, |_| {})
}

/// The tiny FLUX (`models make-tiny`) and TRELLIS (`models make-random --size tiny`) folders.
fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    let run = |args: &[&str], out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_splatforge"))
            .args(args)
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let tiny = dir.join("tiny");
    run(&["models", "make-tiny"], &tiny);
    let trellis = dir.join("trellis");
    run(
        &[
            "models",
            "make-random",
            "--family",
            "trellis",
            "--size",
            "tiny",
        ],
        &trellis,
    );
    (tiny.join("flux-schnell-diffusers"), trellis)
}

#[test]
fn a_text_prompt_through_tiny_flux_and_trellis_behind_the_real_service() {
    let dir = tempfile::tempdir().unwrap();
    let (flux, trellis) = tiny_models(dir.path());
    let server = start(&flux, &trellis);
    let addr = server.addr;
    wait_healthy(addr);
    let version = get(addr, "/version");
    let version = String::from_utf8_lossy(&version.body);
    assert!(
        version.contains("flux-trellis:text-image-development"),
        "{version}"
    );

    let json = serde_json::json!({"prompt": "a red chair", "seed": 3}).to_string();
    let r = post(addr, "application/json", json.as_bytes());
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        r.head,
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.body.starts_with(b"ply\n"));
    let first = read_splat_bytes(&r.body).unwrap();
    assert!(!first.is_empty());
    for stage in [
        "flux_text",
        "flux_decode",
        "preprocess",
        "slat",
        "gs_decoder",
    ] {
        assert!(r.head.contains(stage), "no {stage} timing in\n{}", r.head);
    }
    let again = post(addr, "application/json", json.as_bytes());
    assert_eq!(again.status, 200);
    assert_eq!(again.body, r.body, "same seed, same bytes");

    // A deadline far too short for the profile: every step of the ladder, FLUX's included,
    // and still an answer (item 5); the matte ran in its own stage before.
    assert!(r.head.contains("matte="), "{}", r.head);
    let hurried = post_with_headers(
        addr,
        "/generate/",
        "application/json",
        &[("X-Deadline-Ms", "200")],
        json.as_bytes(),
    );
    assert_eq!(
        hurried.status,
        200,
        "{}",
        String::from_utf8_lossy(&hurried.body)
    );
    assert!(
        hurried.head.to_ascii_lowercase().contains(
            "x-degraded: trellis_steps=2+2->1+1, matte=birefnet->threshold, flux_steps=2->1"
        ),
        "{}",
        hurried.head
    );
    assert!(hurried.body.starts_with(b"ply\n"));

    // An empty prompt is the client's fault; the worker goes on.
    let r = post(addr, "application/json", br#"{"prompt": ""}"#);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    let metrics = String::from_utf8_lossy(&get(addr, "/metrics").body).into_owned();
    for stage in ["flux_text", "flux", "flux_decode", "slat"] {
        assert!(
            metrics.contains(&format!(
                "splatforge_stage_duration_seconds_count{{stage=\"{stage}\"}}"
            )),
            "no {stage} in\n{metrics}"
        );
    }
    drop(server);
}
