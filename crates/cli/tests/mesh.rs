//! Drives the real `splatforge mesh` binary on the hamburger fixture and
//! reads its GLB back with the `gltf` crate (an independent reader).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use splatforge_mesh::evaluate::compare_in_views;
use splatforge_mesh::Mesh;
use splatforge_render::Camera;
use splatforge_splat::{read_splat_file, write_splat_file, EncodeOptions, Gaussians, SplatFormat};

fn splatforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_splatforge"))
        .args(args)
        .output()
        .expect("binary runs")
}

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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
        s(&ply),
        "-o",
        s(&glb),
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
        s(&ply),
        "-o",
        s(&cube),
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

/// A failure is one `error:` line, exit status 2, no panic, and no output.
fn assert_refused(args: &[&str], output: &Path, expect: &str) {
    let o = splatforge(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(expect), "{err}");
    assert!(!output.exists());
    let leftovers: Vec<_> = std::fs::read_dir(output.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_inputs_are_refused_with_one_line_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.glb");
    let ply = |name: &str, g: &Gaussians| {
        let path = dir.path().join(name);
        write_splat_file(&path, g, &EncodeOptions::new(SplatFormat::Ply)).unwrap();
        path
    };
    let empty = ply("empty.ply", &Gaussians::default());
    assert_refused(&["mesh", s(&empty), "-o", s(&out)], &out, "empty");

    let mut faint = Gaussians::with_capacity(3, 0);
    for i in 0..3 {
        faint.means.push([i as f32, 0.0, 0.0]);
        faint.log_scales.push([-3.0; 3]);
        faint.rotations.push([1.0, 0.0, 0.0, 0.0]);
        faint.opacity_logits.push(-8.0);
        faint.sh_dc.push([0.0; 3]);
    }
    let faint = ply("faint.ply", &faint);
    assert_refused(&["mesh", s(&faint), "-o", s(&out)], &out, "opaque");
    assert_refused(
        &["mesh", s(&faint), "-o", s(&out), "--faces", "0"],
        &out,
        "--faces 0",
    );
    assert_refused(
        &["mesh", s(&faint), "-o", s(&out), "--resolution", "100000"],
        &out,
        "--resolution",
    );
    let ply_out = dir.path().join("out.ply");
    assert_refused(&["mesh", s(&faint), "-o", s(&ply_out)], &ply_out, ".glb");
}
