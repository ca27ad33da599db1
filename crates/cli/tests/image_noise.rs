//! `generate --image --noise FILE`: both sampling stages start from the file's noise instead
//! of the seed's (the parity run against the official pipeline hands ours torch's draws this
//! way), and `--save-latents FILE` writes what a run sampled. On the tiny random TRELLIS
//! models: the file holding what our generator draws for a seed gives that seed's splat byte
//! for byte (so the file path and the seed path are one code path), the same file twice the
//! same splat, another stage-2 noise another splat, and a file of another structure a
//! one-line error saying the voxel sets differ. `--structure FILE` runs stage 2 on the file's
//! voxels with stage 1 skipped: the saved latents' voxels and noise give the seed's splat.

use std::path::{Path, PathBuf};

mod common;
use common::make_models;
use common::{ghost_fixture, path_arg, splatforge, text};
use splatforge_nn::rng::{normals, SplitMix64};
use splatforge_trellis::pipeline::{slat_noise_seed, trellis_configs};
use splatforge_trellis::stage1::ModelSize;

/// One tensor of a safetensors file: name, dtype (`F32`, `F64`, …), shape, little-endian bytes.
type Entry<'a> = (&'a str, &'a str, Vec<usize>, Vec<u8>);

/// Writes a safetensors file by the format's definition (u64 header length, JSON header,
/// data), independently of the readers under test.
fn write_safetensors(path: &Path, entries: &[Entry]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend(json);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The tiny models' noise shapes: stage 1 `[1, C, R, R, R]`, stage 2's channels.
fn noise_shapes() -> (Vec<usize>, usize) {
    let c = trellis_configs(ModelSize::Tiny);
    let r = c.ss_flow.resolution;
    (
        vec![1, c.ss_flow.in_channels, r, r, r],
        c.slat_flow.in_channels,
    )
}

/// Our generator's stage-1 noise for `seed` (the first values of its stream).
fn seeded_ss_noise(seed: u64) -> Vec<f32> {
    let (shape, _) = noise_shapes();
    normals(&mut SplitMix64::new(seed), shape.iter().product())
}

/// Our generator's stage-2 noise for `seed` on `voxels` voxels (the stream continued).
fn seeded_slat_noise(seed: u64, voxels: usize) -> Vec<f32> {
    let (shape, channels) = noise_shapes();
    let next = slat_noise_seed(seed, shape.iter().product());
    normals(&mut SplitMix64::new(next), voxels * channels)
}

/// A noise file with `ss` as `ss_noise` and `slat` (`channels` wide) as `slat_noise`.
fn noise_file(path: &Path, ss: &[f32], slat: &[f32]) -> PathBuf {
    let (shape, channels) = noise_shapes();
    write_safetensors(
        path,
        &[
            ("ss_noise", "F32", shape, f32_bytes(ss)),
            (
                "slat_noise",
                "F32",
                vec![slat.len() / channels, channels],
                f32_bytes(slat),
            ),
        ],
    );
    path.to_path_buf()
}

#[test]
fn noise_files_drive_both_stages_through_the_seed_path() {
    let dir = tempfile::tempdir().unwrap();
    let models = make_models(
        dir.path(),
        "trellis",
        &["make-random", "--family", "trellis", "--size", "tiny"],
    );
    let image = ghost_fixture();
    // `generate --image` with one sampler step a stage (fast), `more` flags, → (PLY bytes, report)
    // or the failure's stderr.
    let generate = |name: &str, more: &[&str]| -> Result<(Vec<u8>, serde_json::Value), String> {
        let ply = dir.path().join(name);
        let base = [
            "generate",
            "--image",
            path_arg(&image),
            "-o",
            path_arg(&ply),
            "--models",
            path_arg(&models),
            "--ss-steps",
            "1",
            "--slat-steps",
            "1",
            "--json",
        ];
        let out = splatforge(&[&base[..], more].concat());
        if !out.status.success() {
            assert!(!ply.exists(), "no output for a failed run");
            return Err(text(&out.stderr));
        }
        let report = serde_json::from_slice(&out.stdout).unwrap();
        Ok((std::fs::read(&ply).unwrap(), report))
    };

    let latents = dir.path().join("latents.safetensors");
    let (seeded, report) = generate(
        "seeded.ply",
        &["--seed", "5", "--save-latents", path_arg(&latents)],
    )
    .expect("the seed's run");
    let voxels = report["voxels"].as_u64().unwrap() as usize;
    assert!(voxels > 0, "{report}");
    assert_eq!(report["noise"], serde_json::Value::Null);

    // (d) A file holding what our generator draws for seed 5 gives seed 5's splat, whatever
    // the seed flag says.
    let ss = seeded_ss_noise(5);
    let drawn = noise_file(
        &dir.path().join("drawn.safetensors"),
        &ss,
        &seeded_slat_noise(5, voxels),
    );
    let (from_file, report) = generate("drawn.ply", &["--noise", path_arg(&drawn), "--seed", "6"])
        .expect("the file's run");
    assert_eq!(report["noise"], path_arg(&drawn));
    assert_eq!(report["voxels"].as_u64(), Some(voxels as u64));
    assert!(
        from_file == seeded,
        "the seed's noise from a file: the seed's splat"
    );
    // What --save-latents wrote (with its voxels) reads back as noise: the same splat.
    let (replayed, _) = generate("replayed.ply", &["--noise", path_arg(&latents)]).expect("replay");
    assert!(replayed == seeded, "the saved latents replay the run");

    // (a) + (b) Another stage-2 noise on the same structure: another splat, the same one
    // each time the file is used.
    let other = noise_file(
        &dir.path().join("other.safetensors"),
        &ss,
        &seeded_slat_noise(77, voxels),
    );
    let (first, _) = generate("other1.ply", &["--noise", path_arg(&other)]).expect("other noise");
    let (second, _) = generate("other2.ply", &["--noise", path_arg(&other)]).expect("other again");
    assert!(first == second, "the same file twice: the same bytes");
    assert!(first != seeded, "another stage-2 noise: another splat");

    // (c) One row too many: the file's voxels are not ours.
    let wrong = noise_file(
        &dir.path().join("wrong.safetensors"),
        &ss,
        &seeded_slat_noise(5, voxels + 1),
    );
    let err = generate("wrong.ply", &["--noise", path_arg(&wrong)]).unwrap_err();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("wrong.safetensors")
            && lines[0].contains(&format!("{} rows", voxels + 1))
            && lines[0].contains(&format!("{voxels} voxels"))
            && lines[0].contains("voxel sets differ"),
        "{err}"
    );

    // A missing tensor, another dtype: refused, naming it, before the models load.
    let (shape, _) = noise_shapes();
    let bad = dir.path().join("bad.safetensors");
    write_safetensors(&bad, &[("ss_noise", "F32", shape.clone(), f32_bytes(&ss))]);
    let err = generate("bad.ply", &["--noise", path_arg(&bad)]).unwrap_err();
    assert!(err.contains("no tensor \"slat_noise\""), "{err}");
    assert!(!err.contains("loaded TRELLIS"), "{err}");
    let doubles: Vec<u8> = ss.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect();
    write_safetensors(
        &bad,
        &[
            ("ss_noise", "F64", shape, doubles),
            ("slat_noise", "F32", vec![1, 1], f32_bytes(&[0.0])),
        ],
    );
    let err = generate("bad.ply", &["--noise", path_arg(&bad)]).unwrap_err();
    assert!(err.contains("ss_noise is F64, not F32"), "{err}");

    // --structure: stage 2 on the saved run's voxels (the latents file holds `coords`), with
    // its stage-2 noise: the seed's splat, without stage 1.
    let (on_structure, report) = generate(
        "structure.ply",
        &[
            "--structure",
            path_arg(&latents),
            "--noise",
            path_arg(&latents),
        ],
    )
    .expect("the run on a given structure");
    assert!(
        on_structure == seeded,
        "the same voxels and noise: the same splat"
    );
    assert_eq!(report["structure"], path_arg(&latents));
    assert_eq!(report["voxels"].as_u64(), Some(voxels as u64));
    let stages = report["stages_ms"].as_object().unwrap();
    assert!(
        stages.contains_key("slat") && !stages.contains_key("sparse_structure"),
        "{report}"
    );
    let err = generate(
        "keep.ply",
        &[
            "--structure",
            path_arg(&latents),
            "--save-latents",
            path_arg(&dir.path().join("kept.safetensors")),
        ],
    )
    .unwrap_err();
    assert!(err.contains("--structure skips stage 1"), "{err}");
    let outside = dir.path().join("outside.safetensors");
    let far: Vec<u8> = [0i32, 1000, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_safetensors(&outside, &[("coords", "I32", vec![1, 3], far)]);
    let err = generate("outside.ply", &["--structure", path_arg(&outside)]).unwrap_err();
    assert!(
        err.contains("outside.safetensors") && err.contains("outside the model's"),
        "{err}"
    );

    // Only --image takes them.
    let out = splatforge(&[
        "generate",
        "--prompt",
        "a chair",
        "-o",
        path_arg(&dir.path().join("chair.ply")),
        "--noise",
        path_arg(&drawn),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("are for --image"),
        "{}",
        text(&out.stderr)
    );
}
