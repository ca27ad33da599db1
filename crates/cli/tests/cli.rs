//! Drives the real `splatforge` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

mod common;
use common::{path_arg, splatforge};

use splatforge_mesh::evaluate::compare_in_views;
use splatforge_mesh::Mesh;
use splatforge_render::Camera;
use splatforge_splat::{read_splat_file, write_splat_file, EncodeOptions, Gaussians, SplatFormat};

fn fixture(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(name);
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} not found", path.display());
        None
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure is one `error:` line, exit status 2, and no panic.
fn assert_clean_error(o: &Output, expect: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(expect), "{err}");
}

fn max_position_error(a: &Gaussians, b: &Gaussians) -> f32 {
    a.means
        .iter()
        .zip(&b.means)
        .flat_map(|(p, q)| (0..3).map(move |k| (p[k] - q[k]).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn hamburger_through_spz_and_back() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (spz, back) = (dir.path().join("h.spz"), dir.path().join("h.ply"));
    assert!(splatforge(&["convert", path_arg(&ply), path_arg(&spz)])
        .status
        .success());
    assert!(splatforge(&["convert", path_arg(&spz), path_arg(&back)])
        .status
        .success());
    let out = splatforge(&["inspect", path_arg(&back)]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("splats      52709"),
        "{}",
        stdout(&out)
    );
    let (a, b) = (
        read_splat_file(&ply).unwrap(),
        read_splat_file(&back).unwrap(),
    );
    assert!(max_position_error(&a, &b) <= 1.0 / 4096.0);

    let json = splatforge(&["inspect", "--json", path_arg(&back)]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["gaussians"], 52709);
    assert_eq!(v["sh_degree"], 0);
}

#[test]
fn validate_passes_the_fixture_and_fails_a_truncated_copy() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let out = splatforge(&["validate", path_arg(&ply)]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("valid"));

    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half.ply");
    let bytes = std::fs::read(&ply).unwrap();
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(&splatforge(&["validate", path_arg(&half)]), "truncated");

    let out = splatforge(&[
        "validate",
        "--min-gaussians",
        "100000",
        "--json",
        path_arg(&ply),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
}

#[test]
fn robocop_404_spz_to_ply_to_niantic_spz_to_ply() {
    let Some(spz) = fixture("robocop-with-hammer.spz") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    for (from, to, extra) in [
        (spz.clone(), p("a.ply"), vec![]),
        (p("a.ply"), p("b.spz"), vec!["--spz-flavor", "niantic"]),
        (p("b.spz"), p("c.ply"), vec![]),
        (p("c.ply"), p("d.spz"), vec!["--spz-flavor", "404"]),
    ] {
        let mut args = vec!["convert", path_arg(&from), path_arg(&to)];
        args.extend(extra);
        let out = splatforge(&args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let original = read_splat_file(&spz).unwrap();
    for f in ["a.ply", "c.ply", "d.spz"] {
        let g = read_splat_file(&p(f)).unwrap();
        assert_eq!(g.len(), 267_776, "{f}");
        assert!(max_position_error(&original, &g) <= 1.0 / 4096.0, "{f}");
    }
    assert_eq!(
        &std::fs::read(p("d.spz")).unwrap()[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "zstd magic"
    );
}

#[test]
fn base64_output_decodes_to_the_same_splat() {
    use base64::Engine;
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let b64 = dir.path().join("h.spz");
    assert!(splatforge(&[
        "convert",
        "--spz-flavor",
        "404",
        "--base64",
        path_arg(&ply),
        path_arg(&b64)
    ])
    .status
    .success());
    let text = std::fs::read_to_string(&b64).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    let g = splatforge_splat::read_splat_bytes(&raw).unwrap();
    assert_eq!(g.len(), 52_709);
}

#[test]
fn normalize_fits_the_box_and_converts_axes() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n.ply");
    let o = splatforge(&[
        "normalize",
        "--box",
        "--box-size",
        "2",
        "--up",
        "z-to-y",
        "--no-normals",
        path_arg(&ply),
        path_arg(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (lo, hi) = read_splat_file(&out).unwrap().bounds().unwrap();
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    assert!((extent - 2.0).abs() < 1e-4, "{extent}");
    for a in 0..3 {
        assert!(
            (lo[a] + hi[a]).abs() < 1e-4,
            "--box centres the bounding box"
        );
    }

    // By default the validators' transform: the mean of all coordinates
    // goes to 0 (not each axis's), the longest side to 1.5.
    let o = splatforge(&["normalize", path_arg(&ply), path_arg(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = read_splat_file(&out).unwrap();
    let (lo, hi) = g.bounds().unwrap();
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    let mean = g
        .means
        .as_flattened()
        .iter()
        .map(|&v| f64::from(v))
        .sum::<f64>()
        / (3 * g.len()) as f64;
    assert!(
        (extent - 1.5).abs() < 1e-4 && mean.abs() < 1e-5,
        "extent {extent}, mean {mean}"
    );
}

/// Issue 17's must-show for item 1; fails on the old code ("unknown magic
/// bytes").
#[test]
fn inspect_reads_base64_of_ply_404_spz_and_niantic_spz() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, flavor) in [
        ("b64.ply", "niantic"),
        ("b64-404.spz", "404"),
        ("b64-niantic.spz", "niantic"),
        ("b64-v3.spz", "niantic-v3"),
    ] {
        let out = dir.path().join(name);
        let o = splatforge(&[
            "convert",
            "--base64",
            "--spz-flavor",
            flavor,
            path_arg(&ply),
            path_arg(&out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            std::fs::read(&out)
                .unwrap()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)),
            "{name}"
        );
        let o = splatforge(&["inspect", path_arg(&out)]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("splats      52709"),
            "{name}: {}",
            stdout(&o)
        );
    }
    let not_base64 = dir.path().join("text.ply");
    std::fs::write(&not_base64, "this is no splat\n").unwrap();
    assert_clean_error(
        &splatforge(&["inspect", path_arg(&not_base64)]),
        "not PLY, not SPZ (gzip, zstd or NGSP), not base64 of either",
    );
}

/// Peak signal-to-noise ratio of two equally sized 8-bit images, in dB.
fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let mse = se / a.as_raw().len() as f64;
    10.0 * (255.0f64.powi(2) / mse).log10()
}

/// Whether `python3` with numpy runs here.
fn numpy_available() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Issue 17's must-show for item 2: our render of the validators' first
/// view (518², elevation −15°, radius 2.5, fov 49.1°) after our transform
/// against our render of the validator's transform done in numpy
/// (tools/validator_transform.py): PSNR ≥ 40 dB. The old transform (the
/// bounding box, now `render --box`) stays below it, so this fails on the
/// old code. One view, not the 16 of `--validator-views`, to keep a debug
/// build's three renders short.
#[test]
fn validator_transform_render_matches_numpy() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    if !numpy_available() {
        eprintln!("skipping: python3 with numpy not found (pip install numpy)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/validator_transform.py");
    let o = Command::new("python3")
        .args([path_arg(&script), path_arg(&ply), path_arg(&p("numpy.ply"))])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let render = |input: &Path, extra: &[&str], output: &Path| {
        let mut args = vec!["render", path_arg(input), "-o", path_arg(output)];
        args.extend(extra);
        let o = splatforge(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(output).unwrap().to_rgb8()
    };
    let reference = render(&p("numpy.ply"), &["--no-normalize"], &p("numpy.png"));
    let ours = render(&ply, &[], &p("ours.png"));
    let bounding_box = render(&ply, &["--box"], &p("box.png"));
    let (exact, old) = (psnr(&ours, &reference), psnr(&bounding_box, &reference));
    eprintln!("PSNR against numpy's transform: ours {exact:.2} dB, bounding box {old:.2} dB");
    assert!(exact >= 40.0, "ours {exact:.2} dB");
    assert!(old < 40.0, "bounding box {old:.2} dB");
}

/// Fails on the old code (item 11), which wrote PNG bytes to x.jpg and a GIF to t.png.
#[test]
fn render_refuses_an_extension_that_is_not_its_format() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.ply");
    std::fs::write(
        &input,
        b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n",
    )
    .unwrap();
    for (extra, output, expect) in [
        (&[][..], "x.jpg", "a still is a PNG; name the output .png"),
        (&["--validator-views"][..], "x.gif", "a still is a PNG"),
        (
            &["--turntable", "3"][..],
            "t.png",
            "a turntable is an animated GIF; name the output .gif",
        ),
        (&[][..], "noext", "name the output .png"),
    ] {
        let out = dir.path().join(output);
        let mut args = vec!["render", path_arg(&input), "-o", path_arg(&out)];
        args.extend(extra);
        assert_clean_error(&splatforge(&args), expect);
        assert!(!out.exists(), "{output}");
    }
}

/// Fails on the old code (item 12), which printed "No such file or
/// directory (os error 2): No such file or directory (os error 2)".
#[test]
fn an_os_error_is_printed_once() {
    let o = splatforge(&["inspect", "/no/such/file.ply"]);
    assert_clean_error(&o, "No such file");
    assert_eq!(
        stderr(&o).matches("os error 2").count(),
        1,
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_inputs_give_one_error_line_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.spz");
    let cases: [(&str, &[u8], &str); 4] = [
        ("garbage.bin", b"\x00\x01garbage that is no splat", "unknown"),
        ("empty.ply", b"", "unknown"),
        ("huge.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 4000000000\nproperty float x\nend_header\n", "x"),
        ("nan.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\nproperty float f_dc_0\nproperty float f_dc_1\nproperty float f_dc_2\nproperty float opacity\nproperty float scale_0\nproperty float scale_1\nproperty float scale_2\nproperty float rot_0\nproperty float rot_1\nproperty float rot_2\nproperty float rot_3\nend_header\nnan 0 0 0 0 0 0 0 0 0 1 0 0 0\n", "NaN"),
    ];
    for (name, bytes, expect) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let o = splatforge(&["convert", path_arg(&input), path_arg(&out)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(
            !err.contains("panicked") && err.lines().count() == 1,
            "{name}: {err}"
        );
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "{name}: {err}"
        );
        assert!(!out.exists(), "{name} left an output file");
    }
    assert_clean_error(
        &splatforge(&["inspect", "/no/such/file.ply"]),
        "No such file",
    );
    let unknown_ext = dir.path().join("out.obj");
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    assert_clean_error(
        &splatforge(&["convert", path_arg(&ply), path_arg(&unknown_ext)]),
        "extension",
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        4,
        "only the inputs remain"
    );
}

#[test]
fn render_writes_the_validator_contact_sheet_one_view_and_a_turntable() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sheet = dir.path().join("sheet.png");
    let o = splatforge(&[
        "render",
        path_arg(&ply),
        "--validator-views",
        "-o",
        path_arg(&sheet),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&sheet).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (2072, 2072));
    // Every view shows the object at its centre and white background at its corner.
    for v in 0..16u32 {
        let (x0, y0) = ((v % 4) * 518, (v / 4) * 518);
        assert_ne!(
            img.get_pixel(x0 + 259, y0 + 259).0,
            [255, 255, 255],
            "view {v} centre"
        );
        assert_eq!(
            img.get_pixel(x0 + 3, y0 + 3).0,
            [255, 255, 255],
            "view {v} corner"
        );
    }

    let one = dir.path().join("one.png");
    let o = splatforge(&[
        "render",
        path_arg(&ply),
        "--size",
        "64",
        "--elevation",
        "-30",
        "--background",
        "0,0,0",
        "-o",
        path_arg(&one),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&one).unwrap().to_rgb8();
    assert_eq!(
        (img.dimensions(), img.get_pixel(0, 0).0),
        ((64, 64), [0, 0, 0])
    );

    let gif = dir.path().join("turn.gif");
    let o = splatforge(&[
        "render",
        path_arg(&ply),
        "--turntable",
        "4",
        "--size",
        "48",
        "-o",
        path_arg(&gif),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&std::fs::read(&gif).unwrap()[..6], b"GIF89a");

    assert_clean_error(
        &splatforge(&[
            "render",
            path_arg(&ply),
            "--size",
            "100000",
            "-o",
            path_arg(&one),
        ]),
        "",
    );
    assert_clean_error(
        &splatforge(&[
            "render",
            path_arg(&ply),
            "--turntable",
            "0",
            "-o",
            path_arg(&gif),
        ]),
        "turntable",
    );
}

/// The mesh of a GLB file as the `gltf` crate reads it (colours as stored).
fn read_glb(path: &Path) -> Mesh {
    let bytes = std::fs::read(path).unwrap();
    // `from_slice` validates the document.
    let gltf = gltf::Gltf::from_slice(&bytes).unwrap();
    let blob = gltf.blob.as_deref().unwrap();
    let primitive = gltf.meshes().next().unwrap().primitives().next().unwrap();
    let reader = primitive.reader(|_| Some(blob));
    let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
    Mesh {
        positions: reader.read_positions().unwrap().collect(),
        normals: reader.read_normals().unwrap().collect(),
        colors: reader.read_colors(0).unwrap().into_rgb_f32().collect(),
        triangles: indices
            .chunks_exact(3)
            .map(|t| [t[0], t[1], t[2]])
            .collect(),
        ..Default::default()
    }
}

#[test]
fn mesh_of_the_hamburger_reads_back_and_matches_its_silhouettes() {
    let Some(ply) = fixture("hamburger.ply") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let glb = dir.path().join("hamburger.glb");
    let t0 = Instant::now();
    let out = splatforge(&[
        "mesh",
        path_arg(&ply),
        "-o",
        path_arg(&glb),
        "--resolution",
        "48",
        "--faces",
        "3000",
        "--views",
        "12",
    ]);
    eprintln!("splatforge mesh took {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mesh = read_glb(&glb);
    assert!(
        mesh.triangles.len() <= 3000 && mesh.triangles.len() > 1000,
        "{}",
        mesh.triangles.len()
    );
    assert_eq!(mesh.normals.len(), mesh.positions.len());
    assert_eq!(mesh.colors.len(), mesh.positions.len());
    assert!(mesh
        .triangles
        .iter()
        .flatten()
        .all(|&i| (i as usize) < mesh.positions.len()));

    // The mesh is in the splat's frame: its bounds are the splat's.
    let g = read_splat_file(&ply).unwrap();
    let (lo, hi) = mesh.bounds().unwrap();
    let (glo, ghi) = g.bounds().unwrap();
    for a in 0..3 {
        let extent = ghi[a] - glo[a];
        assert!(
            lo[a] > glo[a] - 0.1 * extent && hi[a] < ghi[a] + 0.1 * extent,
            "axis {a}"
        );
    }
    // Silhouettes in four of the validator's views (small, for a debug build).
    let cameras: Vec<Camera> = (0..4)
        .map(|i| Camera::orbit(-15.0, 90.0 * i as f32, 2.5, 49.1, 128, 128))
        .collect();
    let c = compare_in_views(&g, &mesh, &cameras).unwrap();
    assert!(c.silhouette_iou > 0.9, "IoU {}", c.silhouette_iou);

    // --unit-cube: centred, longest side 1.
    let cube = dir.path().join("cube.glb");
    let out = splatforge(&[
        "mesh",
        path_arg(&ply),
        "-o",
        path_arg(&cube),
        "--resolution",
        "24",
        "--faces",
        "500",
        "--views",
        "6",
        "--unit-cube",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (lo, hi) = read_glb(&cube).bounds().unwrap();
    let longest = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    assert!((longest - 1.0).abs() < 1e-4, "{longest}");
    assert!((0..3).all(|a| (lo[a] + hi[a]).abs() < 1e-4));
}

/// `splatforge ARGS` fails with one error line naming `expect`, and
/// leaves neither `output` nor a temporary file beside it.
fn assert_refused(args: &[&str], output: &Path, expect: &str) {
    assert_clean_error(&splatforge(args), expect);
    assert!(!output.exists());
    let leftovers: Vec<_> = std::fs::read_dir(output.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn mesh_refuses_bad_inputs_with_one_line_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.glb");
    let ply = |name: &str, g: &Gaussians| {
        let path = dir.path().join(name);
        write_splat_file(&path, g, &EncodeOptions::new(SplatFormat::Ply)).unwrap();
        path
    };
    let empty = ply("empty.ply", &Gaussians::default());
    assert_refused(
        &["mesh", path_arg(&empty), "-o", path_arg(&out)],
        &out,
        "empty",
    );

    let mut faint = Gaussians::with_capacity(3, 0);
    for i in 0..3 {
        faint.means.push([i as f32, 0.0, 0.0]);
        faint.log_scales.push([-3.0; 3]);
        faint.rotations.push([1.0, 0.0, 0.0, 0.0]);
        faint.opacity_logits.push(-8.0);
        faint.sh_dc.push([0.0; 3]);
    }
    let faint = ply("faint.ply", &faint);
    assert_refused(
        &["mesh", path_arg(&faint), "-o", path_arg(&out)],
        &out,
        "opaque",
    );
    assert_refused(
        &[
            "mesh",
            path_arg(&faint),
            "-o",
            path_arg(&out),
            "--faces",
            "0",
        ],
        &out,
        "--faces 0",
    );
    assert_refused(
        &[
            "mesh",
            path_arg(&faint),
            "-o",
            path_arg(&out),
            "--resolution",
            "100000",
        ],
        &out,
        "--resolution",
    );
    let ply_out = dir.path().join("out.ply");
    assert_refused(
        &["mesh", path_arg(&faint), "-o", path_arg(&ply_out)],
        &ply_out,
        ".glb",
    );
}
