//! Generates the sample dataset in `data/shapes/`: posed RGBA views of a few
//! coloured SDF shapes, rendered by sphere tracing with Lambert shading.
//! This renderer is independent of `splatforge-render` (its own cameras,
//! rays and shading), so fitting it tests the whole chain, including the
//! `transforms.json` camera conventions.
//!
//! ```sh
//! cargo run --release -p splatforge-fit --example make_sample_dataset -- data/shapes
//! ```
//!
//! Train: 24 views (3 elevation rings × 8 azimuths), `camera_angle_x`.
//! Test: 8 views between them, `fl_x`/`fl_y`/`cx`/`cy`/`w`/`h` intrinsics.
//! 128×128 RGBA PNG, 4×4 supersampled (alpha = coverage), camera distance
//! 2.2, OpenGL camera-to-world matrices (nerfstudio / Blender convention).

use std::path::{Path, PathBuf};

type V = [f64; 3];

fn add(a: V, b: V) -> V {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn sub(a: V, b: V) -> V {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn mul(a: V, s: f64) -> V {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn dot(a: V, b: V) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn len(a: V) -> f64 {
    dot(a, a).sqrt()
}
fn norm(a: V) -> V {
    mul(a, 1.0 / len(a))
}
fn cross(a: V, b: V) -> V {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

const SIZE: u32 = 128;
const SS: u32 = 4;
const DIST: f64 = 2.2;
const ANGLE_X: f64 = 0.7;

/// Signed distance and albedo of the scene at `p`.
fn scene(p: V) -> (f64, V) {
    let mut best = (f64::INFINITY, [0.0; 3]);
    let mut take = |d: f64, c: V| {
        if d < best.0 {
            best = (d, c);
        }
    };
    // Striped red/white sphere.
    let c = [-0.24, 0.02, 0.12];
    let q = sub(p, c);
    let stripe = ((q[1] / 0.28) * 3.0 * std::f64::consts::PI).sin() > 0.0;
    take(
        len(q) - 0.28,
        if stripe {
            [0.85, 0.12, 0.1]
        } else {
            [0.95, 0.9, 0.85]
        },
    );
    // Green rounded box, turned 30° about y.
    let (s, co) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
    let q = sub(p, [0.26, -0.12, -0.1]);
    let q = [co * q[0] - s * q[2], q[1], s * q[0] + co * q[2]];
    let b = [0.16, 0.16, 0.16];
    let d = [q[0].abs() - b[0], q[1].abs() - b[1], q[2].abs() - b[2]];
    let outside = len([d[0].max(0.0), d[1].max(0.0), d[2].max(0.0)]);
    let inside = d[0].max(d[1]).max(d[2]).min(0.0);
    take(outside + inside - 0.03, [0.15, 0.7, 0.25]);
    // Blue torus lying flat on top.
    let q = sub(p, [0.05, 0.3, -0.12]);
    let ring = len([q[0], 0.0, q[2]]) - 0.2;
    take(len([ring, q[1], 0.0]) - 0.06, [0.15, 0.3, 0.9]);
    // Yellow capsule in front.
    let (a, bb) = ([-0.2, -0.34, 0.32], [0.32, -0.28, 0.22]);
    let pa = sub(p, a);
    let ba = sub(bb, a);
    let h = (dot(pa, ba) / dot(ba, ba)).clamp(0.0, 1.0);
    take(len(sub(pa, mul(ba, h))) - 0.08, [0.95, 0.8, 0.1]);
    best
}

fn normal(p: V) -> V {
    let e = 1e-4;
    let k = [
        [1.0, -1.0, -1.0],
        [-1.0, -1.0, 1.0],
        [-1.0, 1.0, -1.0],
        [1.0, 1.0, 1.0],
    ];
    let mut n = [0.0; 3];
    for d in k {
        n = add(n, mul(d, scene(add(p, mul(d, e))).0));
    }
    norm(n)
}

/// Colour of the first hit along the ray, or `None` for a miss.
fn trace(o: V, d: V) -> Option<V> {
    // Start at the bounding sphere of radius 1.
    let b = dot(o, d);
    let disc = b * b - (dot(o, o) - 1.0);
    if disc < 0.0 {
        return None;
    }
    let mut t = (-b - disc.sqrt()).max(0.0);
    let t_end = -b + disc.sqrt();
    for _ in 0..256 {
        let p = add(o, mul(d, t));
        let (dist, albedo) = scene(p);
        if dist < 1e-5 {
            let n = normal(p);
            let light = norm([0.4, 0.8, 0.5]);
            let fill = norm([-0.6, 0.2, -0.4]);
            let shade = 0.3 + 0.6 * dot(n, light).max(0.0) + 0.15 * dot(n, fill).max(0.0);
            return Some(albedo.map(|c| (c * shade).min(1.0)));
        }
        t += dist;
        if t > t_end {
            return None;
        }
    }
    None
}

struct Pose {
    position: V,
    right: V,
    up: V,
    back: V,
}

/// Camera at `elevation` (degrees, positive = above) and `azimuth`
/// (degrees, 0 = +z, 90 = +x), looking at the origin, world +y up.
fn pose(elevation: f64, azimuth: f64) -> Pose {
    let (e, a) = (elevation.to_radians(), azimuth.to_radians());
    let position = [
        DIST * e.cos() * a.sin(),
        DIST * e.sin(),
        DIST * e.cos() * a.cos(),
    ];
    let back = norm(position);
    let right = norm(cross([0.0, 1.0, 0.0], back));
    let up = cross(back, right);
    Pose {
        position,
        right,
        up,
        back,
    }
}

fn render(p: &Pose, f: f64) -> image::RgbaImage {
    let c = SIZE as f64 / 2.0;
    image::RgbaImage::from_fn(SIZE, SIZE, |x, y| {
        let mut sum = [0.0; 3];
        let mut hits = 0u32;
        for sy in 0..SS {
            for sx in 0..SS {
                let u = x as f64 + (sx as f64 + 0.5) / SS as f64;
                let v = y as f64 + (sy as f64 + 0.5) / SS as f64;
                let (xc, yc) = ((u - c) / f, -(v - c) / f);
                let d = norm(add(add(mul(p.right, xc), mul(p.up, yc)), mul(p.back, -1.0)));
                if let Some(col) = trace(p.position, d) {
                    sum = add(sum, col);
                    hits += 1;
                }
            }
        }
        if hits == 0 {
            return image::Rgba([0, 0, 0, 0]);
        }
        let col = mul(sum, 1.0 / hits as f64);
        let a = hits as f64 / (SS * SS) as f64;
        let q = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        image::Rgba([q(col[0]), q(col[1]), q(col[2]), q(a)])
    })
}

fn matrix(p: &Pose) -> serde_json::Value {
    let rows: Vec<Vec<f64>> = (0..3)
        .map(|r| vec![p.right[r], p.up[r], p.back[r], p.position[r]])
        .chain(std::iter::once(vec![0.0, 0.0, 0.0, 1.0]))
        .collect();
    serde_json::json!(rows)
}

fn write_split(dir: &Path, split: &str, cams: &[(f64, f64)], header: serde_json::Value, f: f64) {
    std::fs::create_dir_all(dir.join(split)).unwrap();
    let frames: Vec<serde_json::Value> = cams
        .iter()
        .enumerate()
        .map(|(i, &(e, a))| {
            let p = pose(e, a);
            let name = format!("{split}/r_{i:02}.png");
            render(&p, f).save(dir.join(&name)).unwrap();
            serde_json::json!({ "file_path": format!("./{name}"), "elevation_deg": e, "azimuth_deg": a, "transform_matrix": matrix(&p) })
        })
        .collect();
    let mut doc = header;
    doc["frames"] = serde_json::Value::Array(frames);
    let text = serde_json::to_string_pretty(&doc).unwrap();
    std::fs::write(dir.join(format!("transforms_{split}.json")), text + "\n").unwrap();
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "data/shapes".into()),
    );
    let f = 0.5 * SIZE as f64 / (0.5 * ANGLE_X).tan();
    let mut train = Vec::new();
    for (ring, e) in [35.0, 10.0, -15.0].iter().enumerate() {
        for k in 0..8 {
            train.push((*e, k as f64 * 45.0 + ring as f64 * 15.0));
        }
    }
    let test: Vec<(f64, f64)> = (0..8)
        .map(|k| (if k % 2 == 0 { 22.0 } else { -2.0 }, 22.5 + 45.0 * k as f64))
        .collect();
    write_split(
        &dir,
        "train",
        &train,
        serde_json::json!({ "camera_angle_x": ANGLE_X }),
        f,
    );
    let c = SIZE as f64 / 2.0;
    write_split(
        &dir,
        "test",
        &test,
        serde_json::json!({ "fl_x": f, "fl_y": f, "cx": c, "cy": c, "w": SIZE, "h": SIZE }),
        f,
    );
    eprintln!(
        "wrote {} train and {} test views to {}",
        train.len(),
        test.len(),
        dir.display()
    );
}
