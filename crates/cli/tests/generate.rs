//! `splatforge generate` end to end on the tiny random-weight models:
//! `models make-tiny DIR`, then `generate --models DIR --profile development`.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{path_arg, splatforge, text};

use splatforge_splat::read_splat_file;
use splatforge_splat::validate::{validate, ValidationConfig};

/// Runs the binary, killing it and failing the test after `limit`.
fn splatforge_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("{args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn make_tiny_then_generate_writes_a_valid_splat_and_the_timing_table() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = splatforge(&["models", "make-tiny", path_arg(&models)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ply = dir.path().join("chair.ply");
    let views = dir.path().join("views");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "-o",
        path_arg(&ply),
        "--models",
        path_arg(&models),
        "--profile",
        "development",
        "--seed",
        "5",
        "--save-views",
        path_arg(&views),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, text(&out.stderr));
    for stage in [
        "diffusion",
        "alpha",
        "init",
        "fit",
        "sds",
        "normalize",
        "total",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(stage)),
            "{stage} missing:\n{stdout}"
        );
    }
    assert!(stdout.contains("seed 5"), "{stdout}");
    // Item 3 of issue 17 (fails on the old code): the development profile's
    // few hundred Gaussians would fail the validators' 7000 minimum.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("would fail `splatforge validate` (count: ")
            && stderr.contains("(minimum 7000)"),
        "{stderr}"
    );
    let g = read_splat_file(&ply).unwrap();
    let report = validate(
        &g,
        &ValidationConfig {
            min_gaussians: 0,
            ..Default::default()
        },
    );
    assert!(report.passed, "{:#?}", report.checks);
    assert!(views.join("view_3.png").is_file() && views.join("alpha_0.png").is_file());

    // SPZ by extension; --set reaches the pipeline (no SDS stage row).
    let spz = dir.path().join("chair.spz");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "-o",
        path_arg(&spz),
        "--models",
        path_arg(&models),
        "--profile",
        "development",
        "--set",
        "sds.sds_iters=0",
        "--set",
        "fit.iters=3",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, text(&out.stderr));
    assert!(!stdout.lines().any(|l| l.starts_with("sds")), "{stdout}");
    assert!(!read_splat_file(&spz).unwrap().is_empty());
}

#[test]
fn bad_configs_are_one_error_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ply = dir.path().join("x.ply");
    for (args, needle) in [
        (
            vec!["--profile", "development", "--set", "fit.itrs=3"],
            "itrs",
        ),
        (vec!["--profile", "fastest"], "fastest"),
        (
            vec![
                "--profile",
                "development",
                "--set",
                "diffusion.precision=fp8",
            ],
            "precision",
        ),
        (
            vec!["--profile", "development", "--models", "/no/such/models"],
            "/no/such/models",
        ),
    ] {
        let mut argv = vec!["generate", "--prompt", "a cat", "-o", path_arg(&ply)];
        argv.extend(args);
        let out = splatforge(&argv);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle) && err.lines().count() == 1,
            "{argv:?}: {err}"
        );
        assert!(!ply.exists());
    }
    let cfg = dir.path().join("mine.yaml");
    std::fs::write(&cfg, "fit:\n  iters: 42\n").unwrap();
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a cat",
        "-o",
        path_arg(&ply),
        "--profile",
        "speed",
        "--config",
        path_arg(&cfg),
        "--print-config",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(
        yaml.contains("# profile: speed") && yaml.contains("iters: 42"),
        "{yaml}"
    );
}

#[test]
fn make_random_then_repeated_generations_print_one_json_object_each() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("mvdream");
    // The same code path as `--size full`, at the tiny size.
    let out = splatforge(&[
        "models",
        "make-random",
        path_arg(&models),
        "--size",
        "tiny",
        "--dtype",
        "bf16",
        "--seed",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("parameters: unet"),
        "{}",
        text(&out.stdout)
    );
    assert!(models.join("model_index.json").is_file());
    let again = splatforge(&["models", "make-random", path_arg(&models), "--size", "tiny"]);
    let err = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("not empty") && err.lines().count() == 1,
        "{err}"
    );

    let ply = dir.path().join("chair.ply");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "-o",
        path_arg(&ply),
        "--models",
        path_arg(&models),
        "--profile",
        "development",
        "--seed",
        "3",
        "--repeat",
        "2",
        "--warm-up",
        "--json",
        "--set",
        "sds.sds_iters=0",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, text(&out.stderr));
    let runs: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r["profile"], "development");
        assert_eq!(r["device"], "cpu");
        assert_eq!(
            (r["run"].as_u64(), r["runs"].as_u64(), r["seed"].as_u64()),
            (Some(i as u64 + 1), Some(2), Some(3 + i as u64))
        );
        let stages = r["stages_ms"].as_object().unwrap();
        let names: Vec<&str> = stages.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["alpha", "diffusion", "fit", "init", "normalize"],
            "{r}"
        );
        let sum: f64 = stages.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - r["total_ms"].as_f64().unwrap()).abs() < 0.01, "{r}");
        assert!(
            r["load_ms"].as_f64().unwrap() > 0.0 && r["warm_up_ms"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert_eq!(r["latents_finite"], true);
        assert!(r["gaussians"].as_u64().unwrap() > 0);
        // No GPU memory on the CPU.
        assert!(
            r["device_memory_used_bytes"].is_null() && r["device_memory_total_bytes"].is_null()
        );
    }
    assert!(runs[0]["output"].is_null());
    assert_eq!(runs[1]["output"], path_arg(&ply));
    assert_eq!(
        read_splat_file(&ply).unwrap().len() as u64,
        runs[1]["gaussians"].as_u64().unwrap()
    );

    let out = splatforge(&[
        "generate",
        "--prompt",
        "a cat",
        "-o",
        path_arg(&ply),
        "--models",
        path_arg(&models),
        "--repeat",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Items 14, 10, 13 and 12 of issue 17, each failing on the old code:
/// tiny models without `--profile` ran the balanced profile for minutes;
/// `models flux` on the CPU failed in bf16; `models` took `--model`/`--out`
/// where `generate` takes `--models`/`-o`; a port clash printed the OS
/// error twice.
#[test]
fn tiny_models_pick_their_profile_and_every_command_shares_the_flag_names() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let out = splatforge(&["models", "make-tiny", path_arg(&models)]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let ply = dir.path().join("x.ply");
    let out = splatforge_within(
        &[
            "generate",
            "--prompt",
            "a cat",
            "-o",
            path_arg(&ply),
            "--models",
            path_arg(&models),
        ],
        &[],
        Duration::from_secs(240),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("tiny test models; using --profile development"),
        "{stderr}"
    );
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a cat",
        "-o",
        path_arg(&ply),
        "--models",
        path_arg(&models),
        "--profile",
        "speed",
        "--print-config",
    ]);
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("--profile development fits them"),
        "{stderr}"
    );

    // FLUX on the CPU with its default precision, the shared spelling and the old one.
    let flux = models.join("flux-schnell-diffusers");
    for (models_flag, output_flag) in [("--models", "-o"), ("--model", "--out")] {
        let png = dir.path().join(format!("flux{models_flag}.png"));
        let args = [
            "models",
            "flux",
            models_flag,
            path_arg(&flux),
            "--prompt",
            "a cat",
            output_flag,
            path_arg(&png),
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--max-sequence-length",
            "16",
        ];
        let out = splatforge_within(&args, &[], Duration::from_secs(240));
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (64, 64));
    }
    // Every error is one line, even with candle's backtraces switched on.
    let png = dir.path().join("sd.png");
    let out = splatforge_within(
        &[
            "models",
            "sd",
            "--models",
            path_arg(&flux),
            "--prompt",
            "a cat",
            "-o",
            path_arg(&png),
            "--width",
            "64",
            "--height",
            "64",
        ],
        &[("RUST_BACKTRACE", "1")],
        Duration::from_secs(240),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1,
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = splatforge_within(
        &[
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--models",
            path_arg(&models),
            "--profile",
            "development",
        ],
        &[],
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
}
