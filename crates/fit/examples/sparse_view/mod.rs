//! The views of issue 4's sparse-view case, shared by `sparse_view_bench`
//! (CPU) and `gpu_fit bench` / `eval` (CUDA) so that both fit and score the
//! same images: 4 training views at 256² (elevation 0°, azimuths
//! 0/90/180/270, radius 2.5, fovy 49.1°) and the validator's 16 views at
//! 518² held out, rendered from the ground truth with our rasterizer (SH
//! degree 0) on white.

use splatforge_fit::{View, Views};
use splatforge_render::{pack_sh, render, Camera, GaussianParams, RenderOptions};
use splatforge_splat::Gaussians;

/// The training and held-out views of `gt`, which the caller has normalised
/// to [`splatforge_splat::normalize::VALIDATOR_BOX`].
pub fn sparse_views(gt: &Gaussians) -> Result<(Views, Views), Box<dyn std::error::Error>> {
    let white = [1.0f32; 3];
    let train_cams: Vec<Camera> = [0.0, 90.0, 180.0, 270.0]
        .iter()
        .map(|&az| Camera::orbit(0.0, az, 2.5, 49.1, 256, 256))
        .collect();
    let train = render_views(gt, &train_cams, white)?;
    let held_out = render_views(gt, &Camera::validator_views(), white)?;
    Ok((train, held_out))
}

fn render_views(
    g: &Gaussians,
    cameras: &[Camera],
    bg: [f32; 3],
) -> Result<Views, Box<dyn std::error::Error>> {
    let sh = pack_sh(g);
    let params = GaussianParams::from_gaussians(g, &sh);
    let opts = RenderOptions {
        background: bg,
        sh_degree: Some(0),
        ..Default::default()
    };
    let images = render(&params, cameras, &opts)?;
    let mut views = Vec::new();
    for (i, (img, cam)) in images.into_iter().zip(cameras).enumerate() {
        let rgb = img.rgb.iter().map(|v| v.clamp(0.0, 1.0)).collect();
        views.push(View::from_rgb(format!("view {i}"), *cam, rgb)?);
    }
    Ok(Views::new(views))
}
