//! Issue 13, item 3: text via an image. `splatforge generate --prompt … --flux TINY_FLUX
//! --models TINY_TRELLIS` runs FLUX.1-schnell → matte → TRELLIS on the tiny random-weight
//! models and writes a PLY that `splatforge validate --min-gaussians 1` accepts.

use std::path::{Path, PathBuf};

mod common;
use common::make_models;
use common::{path_arg, splatforge, text};

/// `models` arguments of a tiny random TRELLIS folder.
const TINY_TRELLIS: [&str; 5] = ["make-random", "--family", "trellis", "--size", "tiny"];

/// The tiny FLUX (`models make-tiny`) and TRELLIS (`models make-random --size tiny`) folders.
fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    let tiny = dir.join("tiny");
    let out = splatforge(&["models", "make-tiny", path_arg(&tiny)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trellis = make_models(dir, "trellis", &TINY_TRELLIS);
    (tiny.join("flux-schnell-diffusers"), trellis)
}

#[test]
fn a_prompt_through_tiny_flux_and_trellis_makes_a_valid_ply() {
    let dir = tempfile::tempdir().unwrap();
    let (flux, trellis) = tiny_models(dir.path());

    // The profile names the path; --print-config shows flux: and trellis:, not MVDream's.
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "-o",
        "x.ply",
        "--profile",
        "text-image-quality",
        "--print-config",
        "--set",
        "flux.width=768",
    ]);
    let yaml = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        yaml.contains("pipeline: flux-trellis")
            && yaml.contains("prompt_template:")
            && yaml.contains("width: 768")
            && yaml.contains("trellis:")
            && !yaml.contains("diffusion:"),
        "{yaml}"
    );

    // --flux without --profile and tiny TRELLIS: text-image-development.
    let ply = dir.path().join("chair.ply");
    let views = dir.path().join("views");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "--flux",
        path_arg(&flux),
        "--models",
        path_arg(&trellis),
        "-o",
        path_arg(&ply),
        "--seed",
        "3",
        "--save-views",
        path_arg(&views),
    ]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("text-image-development"), "{stderr}");
    for stage in [
        "flux_text",
        "flux ",
        "flux_decode",
        "preprocess",
        "dinov2",
        "sparse_structure",
        "slat",
        "gs_decoder",
        "write",
        "total",
    ] {
        assert!(stdout.contains(stage), "no {stage} in\n{stdout}");
    }
    let flux_png = image::open(views.join("flux.png")).unwrap();
    assert_eq!((flux_png.width(), flux_png.height()), (64, 64));
    let cutout = image::open(views.join("cutout.png")).unwrap();
    assert_eq!((cutout.width(), cutout.height()), (518, 518));
    let out = splatforge(&["validate", path_arg(&ply), "--min-gaussians", "1"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // --json with the profile named: the same seed gives the same splat; the prompt FLUX
    // saw is the template's.
    let again = dir.path().join("again.ply");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "--profile",
        "text-image-development",
        "--flux",
        path_arg(&flux),
        "--models",
        path_arg(&trellis),
        "-o",
        path_arg(&again),
        "--seed",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pipeline"], "flux-trellis");
    assert_eq!(json["prompt"], "a red chair");
    let seen = json["flux_prompt"].as_str().unwrap();
    assert!(
        seen.contains("a red chair") && seen.contains("white background"),
        "{seen}"
    );
    for stage in ["flux_text", "flux", "flux_decode", "slat", "write"] {
        assert!(
            json["stages_ms"][stage].as_f64().is_some(),
            "{stage}: {json}"
        );
    }
    assert_eq!(json["slat_sampler"]["steps"], 2);
    assert_eq!(
        std::fs::read(&ply).unwrap(),
        std::fs::read(&again).unwrap(),
        "same seed, same splat"
    );
}

#[test]
fn bad_flux_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let trellis = make_models(dir.path(), "trellis", &TINY_TRELLIS);
    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "-o", "x.ply", "--models", path_arg(&trellis)];
        args.extend_from_slice(extra);
        let out = splatforge(&args);
        assert!(!out.status.success(), "{extra:?} succeeded");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
        err
    };
    let err = run(&[
        "--prompt",
        "a chair",
        "--flux",
        path_arg(&empty),
        "--profile",
        "text-image-development",
    ]);
    assert!(err.contains("no FLUX model here"), "{err}");
    let err = run(&[
        "--prompt",
        "a chair",
        "--flux",
        path_arg(&empty),
        "--profile",
        "speed",
    ]);
    assert!(err.contains("text-image-quality"), "{err}");
    let err = run(&["--image", path_arg(&empty), "--flux", path_arg(&empty)]);
    assert!(err.contains("--flux is for --prompt"), "{err}");
    let err = run(&[
        "--prompt",
        " ",
        "--profile",
        "text-image-development",
        "--flux",
        path_arg(&empty),
    ]);
    assert!(err.contains("--prompt is empty"), "{err}");
}

/// `models make-random --family flux --size tiny` (the streaming writer of the full-size
/// model, at the tiny size) gives a folder `generate --flux` runs, as the GPU `text` suite does.
#[test]
fn make_random_flux_tiny_runs_through_generate() {
    let dir = tempfile::tempdir().unwrap();
    let flux = dir.path().join("flux");
    let out = splatforge(&[
        "models",
        "make-random",
        "--family",
        "flux",
        "--size",
        "tiny",
        path_arg(&flux),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("parameters: transformer"), "{stdout}");
    assert!(flux
        .join("transformer/diffusion_pytorch_model.safetensors.index.json")
        .is_file());
    // The folder must be new or empty.
    let again = splatforge(&[
        "models",
        "make-random",
        "--family",
        "flux",
        "--size",
        "tiny",
        path_arg(&flux),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );

    let trellis = make_models(dir.path(), "trellis", &TINY_TRELLIS);
    let ply = dir.path().join("chair.ply");
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a red chair",
        "--flux",
        path_arg(&flux),
        "--models",
        path_arg(&trellis),
        "--profile",
        "text-image-development",
        "-o",
        path_arg(&ply),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = splatforge(&["validate", path_arg(&ply), "--min-gaussians", "1"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}
