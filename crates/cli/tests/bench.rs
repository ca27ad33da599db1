//! `splatforge bench` with the real binary: the quick suite on tiny models
//! writes a JSON and a Markdown report with every stage of both paths, and
//! `--compare` passes against itself and fails on an injected 2× slowdown.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_splatforge");

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("bench").args(args).output().unwrap()
}

/// `report` with every time divided by `factor` (a base that was that much faster).
fn faster_base(report: &serde_json::Value, factor: f64, path: &Path) {
    let mut base = report.clone();
    for case in base["cases"].as_array_mut().unwrap() {
        let scale = |s: &mut serde_json::Value| {
            for k in ["median_ms", "p90_ms"] {
                s[k] = (s[k].as_f64().unwrap() / factor).into();
            }
        };
        scale(&mut case["total"]);
        for stage in case["stages"].as_array_mut().unwrap() {
            scale(stage);
        }
    }
    std::fs::write(path, serde_json::to_string(&base).unwrap()).unwrap();
}

#[test]
fn quick_suite_reports_both_paths_and_compare_catches_a_slowdown() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let md = dir.path().join("run.md");
    let out = bench(&[
        "--suite",
        "quick",
        "--repeat",
        "2",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
        "--md",
        md.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["development", "image-development", "text-image-development"]
    );
    for case in cases {
        assert_eq!(case["runs"], 2);
        assert!(case["gaussians"].as_u64().unwrap() > 0, "{case}");
        let stages = case["stages"].as_array().unwrap();
        assert!(stages.len() >= 3, "{case}");
        let sum: f64 = stages
            .iter()
            .map(|s| s["median_ms"].as_f64().unwrap())
            .sum();
        let total = case["total"]["median_ms"].as_f64().unwrap();
        assert!(total > 0.0 && sum > 0.0, "{case}");
        for s in stages {
            assert!(s["p90_ms"].as_f64().unwrap() >= s["median_ms"].as_f64().unwrap() - 1e-9);
        }
    }
    let table = std::fs::read_to_string(&md).unwrap();
    assert!(table.contains("### development (mvdream"), "{table}");
    assert!(table.contains("### image-development (trellis"), "{table}");
    assert!(table.contains("| slat |"), "{table}");
    assert!(
        table.contains("### text-image-development (flux-trellis"),
        "{table}"
    );
    assert!(table.contains("| flux |"), "{table}");

    // The same report against itself: no regression.
    let same = bench(&[
        "--input",
        json.to_str().unwrap(),
        "--compare",
        json.to_str().unwrap(),
    ]);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    // Against a base twice as fast: a regression, named, and a non-zero exit.
    let base = dir.path().join("base.json");
    faster_base(&report, 2.0, &base);
    let slower = bench(&[
        "--input",
        json.to_str().unwrap(),
        "--compare",
        base.to_str().unwrap(),
    ]);
    assert_eq!(slower.status.code(), Some(1));
    let err = String::from_utf8_lossy(&slower.stderr);
    assert!(err.contains("regression: development"), "{err}");
    assert!(err.contains("2.00×"), "{err}");
    let stdout = String::from_utf8_lossy(&slower.stdout);
    assert!(stdout.contains("| 2.00 |"), "{stdout}");
}
