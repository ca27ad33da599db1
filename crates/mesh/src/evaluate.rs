//! How well a mesh reproduces its splat, seen as the 404 validators see:
//! both rendered from their 16 views (azimuth `linspace(0, 360, 16)`,
//! elevation −15°, radius 2.5, fov 49.1°, 518², white background, DC colour
//! only), after the same similarity puts the splat's bounds in the
//! validators' 1.5 box (centred, longest side 1.5; opacities unchanged, so
//! that both are the object as meshed).
//!
//! - **Silhouette IoU**: splat pixels with alpha ≥ 0.5 against pixels the
//!   mesh covers, intersection over union summed over the views.
//! - **Colour PSNR**: over all pixels of all views (what a validator's image
//!   comparison sees), and over the union of both silhouettes only (the
//!   object alone, a stricter figure).

use rayon::prelude::*;
use splatforge_render::{render, Camera, GaussianBuffers, RenderOptions};
use splatforge_splat::normalize::{fit_to_box, VALIDATOR_BOX};
use splatforge_splat::Gaussians;

use crate::depth::SURFACE_ALPHA;
use crate::raster::render_mesh;
use crate::{Mesh, MeshError};

/// The comparison's figures and the images of one view.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub silhouette_iou: f64,
    /// dB, over every pixel of every view.
    pub psnr_full: f64,
    /// dB, over the pixels either silhouette covers.
    pub psnr_object: f64,
    /// The first view side by side, splat | mesh: `2·width × height` RGB8.
    pub side_by_side: Vec<u8>,
    pub side_by_side_width: u32,
    pub side_by_side_height: u32,
}

fn psnr(squared_error: f64, values: usize) -> f64 {
    if values == 0 {
        return f64::INFINITY;
    }
    let mse = squared_error / values as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// Renders `g` and `mesh` (in `g`'s frame, as [`crate::mesh_splat`] makes
/// it) from the validator's views and compares them (module docs).
pub fn compare(g: &Gaussians, mesh: &Mesh) -> Result<Comparison, MeshError> {
    compare_in_views(g, mesh, &Camera::validator_views())
}

/// [`compare`] from the given cameras (all of one size).
pub fn compare_in_views(
    g: &Gaussians,
    mesh: &Mesh,
    cameras: &[Camera],
) -> Result<Comparison, MeshError> {
    let (lo, hi) = g
        .bounds()
        .ok_or_else(|| MeshError::invalid("the splat is empty (0 Gaussians)"))?;
    let first = cameras
        .first()
        .ok_or_else(|| MeshError::invalid("no views to compare in"))?;
    // The similarity `fit_to_box` applies to the splat, for the mesh.
    let centre: [f32; 3] = std::array::from_fn(|a| 0.5 * (lo[a] + hi[a]));
    let extent = (0..3).map(|a| hi[a] - lo[a]).fold(0.0f32, f32::max);
    let k = if extent > 0.0 {
        VALIDATOR_BOX / extent
    } else {
        1.0
    };
    let mut splat = g.clone();
    fit_to_box(&mut splat, VALIDATOR_BOX)?;
    let mut placed = mesh.clone();
    placed.transform(centre, k);

    let white = [1.0f32; 3];
    let options = RenderOptions {
        background: white,
        sh_degree: Some(0),
        ..Default::default()
    };
    let buffers = GaussianBuffers::from(&splat);
    let splat_images = render(&buffers.params(), cameras, &options)?;
    let mesh_images: Vec<_> = cameras
        .par_iter()
        .map(|c| render_mesh(&placed, c, white))
        .collect();

    let (mut intersection, mut union) = (0usize, 0usize);
    let (mut error_all, mut error_object) = (0.0f64, 0.0f64);
    let (mut values_all, mut values_object) = (0usize, 0usize);
    for (s, m) in splat_images.iter().zip(&mesh_images) {
        for (pixel, &covered) in m.coverage.iter().enumerate() {
            let in_splat = s.alpha[pixel] >= SURFACE_ALPHA;
            intersection += usize::from(in_splat && covered);
            let in_either = in_splat || covered;
            union += usize::from(in_either);
            let mut e = 0.0f64;
            for c in 0..3 {
                let d = f64::from(
                    s.rgb[pixel * 3 + c].clamp(0.0, 1.0) - m.rgb[pixel * 3 + c].clamp(0.0, 1.0),
                );
                e += d * d;
            }
            error_all += e;
            values_all += 3;
            if in_either {
                error_object += e;
                values_object += 3;
            }
        }
    }
    let (w, h) = (first.width as usize, first.height as usize);
    let mut side_by_side = vec![0u8; 2 * w * h * 3];
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let src = (y * w + x) * 3 + c;
                side_by_side[(y * 2 * w + x) * 3 + c] = to_u8(splat_images[0].rgb[src]);
                side_by_side[(y * 2 * w + w + x) * 3 + c] = to_u8(mesh_images[0].rgb[src]);
            }
        }
    }
    Ok(Comparison {
        silhouette_iou: if union == 0 {
            1.0
        } else {
            intersection as f64 / union as f64
        },
        psnr_full: psnr(error_all, values_all),
        psnr_object: psnr(error_object, values_object),
        side_by_side,
        side_by_side_width: 2 * first.width,
        side_by_side_height: first.height,
    })
}
