//! Issue 12's "tiny TRELLIS end to end": `splatforge models make-random --family trellis
//! --size tiny DIR`, then `splatforge generate --image ghost_rgba.png --models DIR` → a PLY
//! that `splatforge validate --min-gaussians 1` accepts; bad images fail with one line.

use std::path::{Path, PathBuf};

mod common;
use common::make_models;
use common::{ghost_fixture, path_arg, splatforge, text};

/// `splatforge generate --image IMAGE -o OUT --models MODELS [more…] --json` → its report.
fn generate_json(image: &Path, out: &Path, models: &Path, more: &[&str]) -> serde_json::Value {
    let args = [
        &[
            "generate",
            "--image",
            path_arg(image),
            "-o",
            path_arg(out),
            "--models",
            path_arg(models),
        ],
        more,
        &["--json"],
    ]
    .concat();
    let run = splatforge(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    serde_json::from_slice(&run.stdout).unwrap()
}

fn tiny_trellis(dir: &Path) -> PathBuf {
    let models = make_models(
        dir,
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    assert!(models.join("pipeline.json").is_file());
    assert!(models
        .join("dinov2_vitl14_reg4_pretrain.safetensors")
        .is_file());
    models
}

#[test]
fn tiny_trellis_turns_the_ghost_into_a_valid_ply() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_trellis(dir.path());
    let ghost = ghost_fixture();

    // Without --profile, tiny models get image-development; --print-config says so.
    let out = splatforge(&[
        "generate",
        "--image",
        path_arg(&ghost),
        "-o",
        "x.ply",
        "--models",
        path_arg(&models),
        "--print-config",
        "--slat-steps",
        "3",
    ]);
    let yaml = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(yaml.contains("# profile: image-development"), "{yaml}");
    assert!(
        yaml.contains("pipeline: trellis") && yaml.contains("slat_steps: 3"),
        "{yaml}"
    );
    assert!(!yaml.contains("diffusion:"), "{yaml}");

    let ply = dir.path().join("ghost.ply");
    let out = splatforge(&[
        "generate",
        "--image",
        path_arg(&ghost),
        "-o",
        path_arg(&ply),
        "--models",
        path_arg(&models),
        "--seed",
        "5",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for stage in [
        "matte",
        "preprocess",
        "dinov2",
        "sparse_structure",
        "ss_decoder",
        "slat",
        "gs_decoder",
        "write",
        "total",
    ] {
        assert!(stdout.contains(stage), "no {stage} in\n{stdout}");
    }
    let out = splatforge(&["validate", path_arg(&ply), "--min-gaussians", "1"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // --json, same seed: the same splat, and the samplers the profile chose.
    let again = dir.path().join("again.ply");
    let out = splatforge(&[
        "generate",
        "--image",
        path_arg(&ghost),
        "-o",
        path_arg(&again),
        "--models",
        path_arg(&models),
        "--seed",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["pipeline"], "trellis");
    assert_eq!(report["profile"], "image-development");
    assert_eq!(report["seed"], 5);
    assert_eq!(report["sparse_structure_sampler"]["steps"], 2);
    assert_eq!(report["slat_sampler"]["cfg_strength"], 5.0);
    assert!(report["gaussians"].as_u64().unwrap() >= 1);
    for stage in ["dinov2", "sparse_structure", "slat", "gs_decoder", "write"] {
        assert!(report["stages_ms"][stage].is_number(), "{report}");
    }
    assert_eq!(std::fs::read(&ply).unwrap(), std::fs::read(&again).unwrap());

    // An opaque JPEG on white (no alpha) gets the profile's matte: the tiny random
    // BiRefNet that make-random put in the folder (`birefnet/`), in a `matte` stage of its
    // own; --save-views writes the 518² RGBA cut-out the 3D stage saw.
    let photo = dir.path().join("disc.jpg");
    image::RgbImage::from_fn(96, 64, |x, y| {
        let (dx, dy) = (x as f32 - 60.0, y as f32 - 30.0);
        image::Rgb(if dx * dx + dy * dy < 400.0 {
            [200, 30, 30]
        } else {
            [255, 255, 255]
        })
    })
    .save(&photo)
    .unwrap();
    assert!(models.join("birefnet/model.safetensors").is_file());
    assert!(models.join("birefnet_lite/model.safetensors").is_file());
    let views = dir.path().join("views");
    let disc_ply = dir.path().join("disc.ply");
    let report = generate_json(
        &photo,
        &disc_ply,
        &models,
        &["--save-views", path_arg(&views)],
    );
    assert_eq!(report["matte"], "birefnet", "{report}");
    assert!(report["stages_ms"]["matte"].is_number(), "{report}");
    assert!(disc_ply.is_file());
    let cutout = image::open(views.join("cutout.png")).unwrap();
    assert_eq!(cutout.color(), image::ColorType::Rgba8);
    let cutout = cutout.to_rgba8();
    assert_eq!(cutout.dimensions(), (518, 518));
    assert!(
        cutout.pixels().any(|p| p.0[3] < 255),
        "the matte's alpha is in the cut-out"
    );
    // --matte names the weights (here the lite folder); the ghost's own alpha wins over it.
    let lite = models.join("birefnet_lite");
    let report = generate_json(&ghost, &disc_ply, &models, &["--matte", path_arg(&lite)]);
    assert_eq!(report["matte"], "image", "{report}");
    // A BiRefNet alone (`make-random --family birefnet`), given by --matte, cuts the JPEG.
    let alone = dir.path().join("birefnet-tiny");
    let make = |dir: &Path| {
        splatforge(&[
            "models",
            "make-random",
            "--family",
            "birefnet",
            "--variant",
            "lite",
            "--size",
            "tiny",
            path_arg(dir),
        ])
    };
    let out = make(&alone);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(alone.join("model.safetensors").is_file());
    let report = generate_json(&photo, &disc_ply, &models, &["--matte", path_arg(&alone)]);
    assert_eq!(report["matte"], "birefnet", "{report}");
    let again = make(&alone);
    assert!(!again.status.success() && text(&again.stderr).contains("not empty"));

    // The threshold, chosen explicitly: transparent margin, the opaque red disc centred.
    let threshold = [
        "--set",
        "matte.method=threshold",
        "--save-views",
        path_arg(&views),
    ];
    let report = generate_json(&photo, &disc_ply, &models, &threshold);
    assert_eq!(report["matte"], "threshold", "{report}");
    let cutout = image::open(views.join("cutout.png")).unwrap().to_rgba8();
    assert_eq!(cutout.get_pixel(5, 5).0[3], 0, "the margin is transparent");
    let centre = cutout.get_pixel(259, 259).0;
    assert!(
        centre[3] == 255 && centre[0] > 150 && centre[1] < 80,
        "{centre:?}"
    );
}

#[test]
fn bad_images_and_wrong_profiles_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_trellis(dir.path());
    let not_png = dir.path().join("notes.png");
    std::fs::write(&not_png, "not a picture").unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let clear = dir.path().join("clear.png");
    image::RgbaImage::new(16, 16).save(&clear).unwrap();
    let out_ply = dir.path().join("out.ply");
    for (image, needle) in [
        (&not_png, "not an image"),
        (&empty, "empty"),
        (&clear, "transparent"),
        (&dir.path().join("missing.png"), "missing.png"),
    ] {
        let out = splatforge(&[
            "generate",
            "--image",
            path_arg(image),
            "-o",
            path_arg(&out_ply),
            "--models",
            path_arg(&models),
        ]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{}", image.display());
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error.len(), 1, "{stderr}");
        assert!(error[0].contains(needle), "{stderr}");
        assert!(!out_ply.exists(), "no output for a bad image");
    }
    // Matte weights that are not there: one line naming them, before any generation.
    let ghost = ghost_fixture();
    let missing = dir.path().join("no-birefnet.safetensors");
    let out = splatforge(&[
        "generate",
        "--image",
        path_arg(&ghost),
        "-o",
        path_arg(&out_ply),
        "--models",
        path_arg(&models),
        "--matte",
        path_arg(&missing),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("matte") && error[0].contains("no-birefnet"),
        "{stderr}"
    );
    // A text profile for an image, an image profile for a prompt.
    let out = splatforge(&[
        "generate",
        "--image",
        path_arg(&ghost),
        "-o",
        path_arg(&out_ply),
        "--models",
        path_arg(&models),
        "--profile",
        "development",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("image profile"),
        "{}",
        text(&out.stderr)
    );
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a chair",
        "-o",
        path_arg(&out_ply),
        "--profile",
        "image-speed",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--image"),
        "{}",
        text(&out.stderr)
    );
}
