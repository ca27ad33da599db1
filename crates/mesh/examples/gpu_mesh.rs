//! TSDF fusion on the GPU against the CPU path, and the time of each stage
//! of splat → GLB with rendering and fusion on the GPU (feature `cuda`):
//!
//! ```sh
//! cargo run --release -p splatforge-mesh --features cuda --example gpu_mesh -- \
//!     [SPLAT] [--resolution N] [--faces N] [--views N]
//! ```
//!
//! SPLAT defaults to `../shared/fixtures/robocop-with-hammer.spz` (267,776
//! Gaussians); the defaults are `splatforge mesh`'s (256, 100,000 faces, 32
//! views).
//!
//! 1. **Parity**: the CPU rasterizer renders the views once; the CPU path
//!    ([`tsdf::fuse`]) and the kernel ([`cuda::fuse_cuda`]) fuse the same
//!    renders. Printed: the largest difference of the fields (they are in
//!    units of the truncation distance, so this is relative to it), the
//!    largest relative difference where the CPU value is at least 1e-3 in
//!    magnitude, and how many samples are on the other side of the surface
//!    level. Exit status 1 when the largest difference exceeds 1e-4.
//! 2. **Speed**: the whole pipeline with the CUDA rasterizer and the kernel
//!    ([`cuda::mesh_splat_cuda`], what `splatforge mesh` runs on a GPU), run
//!    once untimed (first-use costs), then timed stage by stage.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use splatforge_mesh::depth::{render_views, ViewRender};
use splatforge_mesh::glb::encode_glb;
use splatforge_mesh::{cuda, tsdf, FusionPlan, MeshOptions};
use splatforge_splat::read_splat_file;

type Res<T> = Result<T, Box<dyn Error>>;

/// Largest accepted difference between the GPU and the CPU field.
const MAX_DIFFERENCE: f32 = 1e-4;

fn parse_args() -> Res<(PathBuf, MeshOptions)> {
    let mut path = PathBuf::from("../shared/fixtures/robocop-with-hammer.spz");
    let mut options = MeshOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value =
            || -> Res<usize> { Ok(args.next().ok_or(format!("{a} needs a value"))?.parse()?) };
        match a.as_str() {
            "--resolution" => options.resolution = value()? as u32,
            "--faces" => options.max_faces = value()?,
            "--views" => options.views = value()?,
            _ if !a.starts_with("--") => path = PathBuf::from(a),
            _ => return Err(format!("unknown option {a}").into()),
        }
    }
    Ok((path, options))
}

/// `[views, height, width]` tensors of the renders' alpha and depth.
fn upload(renders: &[ViewRender], dev: &Device) -> Res<(Tensor, Tensor)> {
    let (h, w) = (renders[0].height as usize, renders[0].width as usize);
    let flat = |f: fn(&ViewRender) -> &Vec<f32>| -> Vec<f32> {
        renders.iter().flat_map(|r| f(r).iter().copied()).collect()
    };
    let shape = (renders.len(), h, w);
    Ok((
        Tensor::from_vec(flat(|r| &r.alpha), shape, dev)?,
        Tensor::from_vec(flat(|r| &r.depth), shape, dev)?,
    ))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Res<()> {
    let (path, options) = parse_args()?;
    let g = read_splat_file(&path)?;
    println!(
        "{}: {} Gaussians; resolution {}, {} faces, {} views",
        path.display(),
        g.len(),
        options.resolution,
        options.max_faces,
        options.views
    );
    let dev = Device::new_cuda(0)?;
    let plan = FusionPlan::new(&g, &options)?;
    println!(
        "grid {:?}, images {}²",
        plan.grid.dims, plan.cameras[0].width
    );

    // 1. Parity on the CPU rasterizer's renders.
    let t = Instant::now();
    let renders = render_views(&g, &plan.cameras)?;
    println!("CPU render      {:>9.1} ms", ms(t.elapsed()));
    let t = Instant::now();
    let cpu = tsdf::fuse(&plan.grid, &plan.cameras, &renders);
    println!("CPU fusion      {:>9.1} ms", ms(t.elapsed()));
    let (alpha, depth) = upload(&renders, &dev)?;
    let gpu = cuda::fuse_cuda(&plan.grid, &plan.cameras, &alpha, &depth)?;
    let mut max_difference = 0.0f32;
    let mut max_relative = 0.0f32;
    let mut other_side = 0usize;
    for (&c, &g) in cpu.sdf.iter().zip(&gpu.sdf) {
        let d = (c - g).abs();
        max_difference = max_difference.max(if d.is_nan() { f32::INFINITY } else { d });
        if c.abs() >= 1e-3 {
            max_relative = max_relative.max(d / c.abs());
        }
        let level = tsdf::SURFACE_LEVEL;
        other_side += usize::from((c < level) != (g < level));
    }
    println!(
        "fusion parity: max |GPU − CPU| {max_difference:.3e} (units of τ), max relative {max_relative:.3e}, {other_side} of {} samples on the other side of the level",
        cpu.sdf.len()
    );

    // 2. The pipeline with rendering and fusion on the GPU (what `splatforge mesh` runs).
    let mut report = String::new();
    for run in 0..2 {
        let (mesh, mut timings) = cuda::mesh_splat_cuda(&g, &options, &dev)?;
        let t = Instant::now();
        let glb = encode_glb(&mesh)?;
        timings.stages.push(("encode GLB", t.elapsed()));
        if run == 1 {
            for (name, d) in &timings.stages {
                report += &format!("{name:<24} {:>9.1} ms\n", ms(*d));
            }
            report += &format!(
                "{:<24} {:>9.1} ms ({} faces, {} bytes)\n",
                "total",
                ms(timings.total()),
                mesh.triangles.len(),
                glb.len()
            );
        }
    }
    print!("GPU pipeline, second run:\n{report}");
    if max_difference.is_nan() || max_difference > MAX_DIFFERENCE {
        eprintln!("FAIL: fusion differs by {max_difference:.3e} > {MAX_DIFFERENCE:.0e}");
        std::process::exit(1);
    }
    Ok(())
}
