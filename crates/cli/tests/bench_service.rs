//! `splatforge bench --suite service` with the real binary on the tiny models (issue 18,
//! item 5): it starts `serve` per workers count, counts every request it sends, reports
//! the latency spread and the server's own per-stage times (timed requests only, warm-ups
//! left out), and a request the server refuses is counted as failed, with a non-zero exit.

mod common;
use common::path_arg;

use std::path::Path;
use std::process::{Command, Output};

use common::make_models;

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args(["bench", "--suite", "service", "--device", "cpu"])
        .args(args)
        .output()
        .unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn text_route_with_one_and_two_workers_counts_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(dir.path(), "models", &["make-tiny"]);
    let (json, md) = (dir.path().join("run.json"), dir.path().join("run.md"));
    let out = bench(&[
        "--profile",
        "development",
        "--models",
        path_arg(&models),
        "--workers",
        "1,2",
        "--concurrency",
        "2",
        "--requests",
        "3",
        "--json",
        path_arg(&json),
        "--md",
        path_arg(&md),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = read_json(&json);
    assert_eq!(report["suite"], "service");
    assert_eq!(report["device"], "cpu");
    let cases = report["cases"].as_array().unwrap();
    let workers: Vec<u64> = cases
        .iter()
        .map(|c| c["workers"].as_u64().unwrap())
        .collect();
    assert_eq!(workers, [1, 2]);
    for case in cases {
        assert_eq!(case["profile"], "development", "{case}");
        assert_eq!(case["route"], "POST /generate/", "{case}");
        assert_eq!(case["concurrency"], 2, "{case}");
        assert_eq!(
            (&case["requests"], &case["completed"], &case["failed"]),
            (&3.into(), &3.into(), &0.into()),
            "{case}"
        );
        assert_eq!(case["warm_up_failed"], 0, "{case}");
        assert!(case["failures"].as_object().unwrap().is_empty(), "{case}");
        assert!(f(&case["results_per_hour"]) > 0.0, "{case}");
        let l = &case["latency_ms"];
        let (p50, p90, p99, max) = (
            f(&l["p50_ms"]),
            f(&l["p90_ms"]),
            f(&l["p99_ms"]),
            f(&l["max_ms"]),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
            "{case}"
        );
        // 3 completed in the timed phase: results/h is 3 over its wall time.
        let expected = 3.0 * 3600.0 / f(&case["elapsed_s"]);
        assert!(
            (f(&case["results_per_hour"]) - expected).abs() < 1e-6 * expected,
            "{case}"
        );
        // The server's stage times cover the 3 timed requests, not the warm-ups, in the
        // pipeline's order.
        let server = &case["server"];
        let stages: Vec<(&str, u64)> = server["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| (st["name"].as_str().unwrap(), st["count"].as_u64().unwrap()))
            .collect();
        let names: Vec<&str> = stages.iter().map(|(n, _)| *n).collect();
        let at = |stage: &str| {
            let at = names.iter().position(|n| *n == stage);
            at.unwrap_or_else(|| panic!("no {stage} in {case}"))
        };
        assert_eq!(at("queue"), 0, "{case}");
        assert!(
            at("diffusion") < at("fit") && at("fit") < at("encode"),
            "{case}"
        );
        assert!(stages.iter().all(|(_, n)| *n == 3), "{case}");
        assert!(f(&server["generation_ms"]) > 0.0, "{case}");
    }
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(
        table.contains("| development | POST /generate/ | 1 | 2 | 3 | 0 |"),
        "{table}"
    );
    assert!(
        table.contains("| development | POST /generate/ | 2 | 2 | 3 | 0 |"),
        "{table}"
    );
    assert!(table.contains("diffusion "), "{table}");
    // The table is printed too.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| case | route | workers |"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The competition route: a picture gets its PLYs; a file that is no image gets a 400 for
/// every timed request, counted as failed with its answer, no latency is made up, and the
/// command exits 1 after writing the report.
#[test]
fn image_route_completes_and_refused_requests_are_counted_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let trellis = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let image_case = |image: &Path, requests: &str| {
        let json = dir.path().join("run.json");
        let out = bench(&[
            "--profile",
            "image-development",
            "--trellis",
            path_arg(&trellis),
            "--image",
            path_arg(image),
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--requests",
            requests,
            "--json",
            path_arg(&json),
        ]);
        let report = read_json(&json);
        (out, report["cases"][0].clone())
    };

    // A small opaque picture (the matte runs) keeps the tiny models' CPU time down.
    let picture = dir.path().join("picture.png");
    image::RgbImage::from_fn(96, 96, |x, y| {
        let inside = (x as i32 - 48).pow(2) + (y as i32 - 48).pow(2) < 30 * 30;
        image::Rgb(if inside { [120, 120, 135] } else { [255; 3] })
    })
    .save(&picture)
    .unwrap();
    let (out, case) = image_case(&picture, "2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(case["route"], "POST /generate", "{case}");
    assert_eq!(
        (&case["requests"], &case["completed"], &case["failed"]),
        (&2.into(), &2.into(), &0.into()),
        "{case}"
    );
    let l = &case["latency_ms"];
    assert!(f(&l["p50_ms"]) <= f(&l["p99_ms"]), "{case}");
    let stages = case["server"]["stages"].as_array().unwrap();
    assert!(stages.iter().any(|st| st["name"] == "slat"), "{case}");

    let not_an_image = dir.path().join("prompt.txt");
    std::fs::write(&not_an_image, "a red chair").unwrap();
    let (out, case) = image_case(&not_an_image, "4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("4 request(s) failed"), "{stderr}");
    assert_eq!(
        (&case["requests"], &case["completed"], &case["failed"]),
        (&4.into(), &0.into(), &4.into()),
        "{case}"
    );
    assert_eq!(case["failures"]["400"], 4, "{case}");
    assert_eq!(case["warm_up_failed"], 1, "{case}");
    assert!(
        case["first_failure"]
            .as_str()
            .unwrap()
            .contains("not in a known image format"),
        "{case}"
    );
    assert!(case["latency_ms"].is_null(), "{case}");
    assert_eq!(f(&case["results_per_hour"]), 0.0, "{case}");
}
