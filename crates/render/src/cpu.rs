//! The CPU reference: [`rasterize_forward`] and [`rasterize_backward`]
//! over rayon (cameras, Gaussians and tiles in parallel), generic over the
//! scalar (`f32` for production, `f64` for gradient checks).

use rayon::prelude::*;

use crate::camera::Camera;
use crate::error::RenderError;
use crate::project::{
    project_gaussian, project_gaussian_backward, CameraParams, ParamGrad, ProjectSettings,
    Projected,
};
use crate::rasterize::{
    rasterize_backward_image, rasterize_forward_image, PixelGrads, RasterState,
};
use crate::real::Real;
use crate::tiles::{bin_gaussians, TileBins, TileGrid};
use crate::types::{
    check_cameras, DensifyStats, GaussianParams, Gradients, ImageGradients, RenderOptions,
    RenderedImage,
};

#[derive(Debug, Clone)]
struct CameraState<F> {
    projected: Vec<Projected<F>>,
    bins: TileBins,
    raster: RasterState<F>,
}

/// What [`rasterize_backward`] needs from [`rasterize_forward`]: per camera,
/// the projected Gaussians, the tile lists, and per-pixel final
/// transmittance / last contributor / raw depth.
#[derive(Debug, Clone)]
pub struct ForwardState<F = f32> {
    cameras: Vec<CameraState<F>>,
    num_gaussians: usize,
    sh_degree: u8,
    options: RenderOptions,
}

impl<F: Real> ForwardState<F> {
    /// The projected Gaussians of camera `cam` (`radius == 0` = culled).
    pub fn projected(&self, cam: usize) -> &[Projected<F>] {
        &self.cameras[cam].projected
    }

    /// Number of (tile, Gaussian) pairs of camera `cam`.
    pub fn num_intersections(&self, cam: usize) -> usize {
        self.cameras[cam].bins.num_intersections()
    }

    /// Number of Gaussians that survived culling in camera `cam`.
    pub fn num_visible(&self, cam: usize) -> usize {
        self.cameras[cam]
            .projected
            .iter()
            .filter(|p| p.is_visible())
            .count()
    }
}

fn settings<F: Real>(params: &GaussianParams<'_, F>, opts: &RenderOptions) -> ProjectSettings<F> {
    ProjectSettings {
        eps2d: F::from_f32(opts.eps2d),
        mode: opts.mode,
        sh_degree: opts
            .sh_degree
            .map_or(params.sh_degree, |d| d.min(params.sh_degree)),
        radius_clip: F::from_f32(opts.radius_clip),
    }
}

fn check_call<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<(), RenderError> {
    params.validate()?;
    opts.validate()?;
    check_cameras(cameras)
}

/// Renders every camera. Returns the images and the state for
/// [`rasterize_backward`]. Cameras run in parallel, and tiles within each.
pub fn rasterize_forward<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<(Vec<RenderedImage<F>>, ForwardState<F>), RenderError> {
    check_call(params, cameras, opts)?;
    let s = settings(params, opts);
    let background = opts.background.map(F::from_f32);
    let results: Vec<(RenderedImage<F>, CameraState<F>)> = cameras
        .par_iter()
        .enumerate()
        .map(|(ci, cam)| {
            let cp = CameraParams::<F>::new(cam);
            let projected: Vec<Projected<F>> = (0..params.len())
                .into_par_iter()
                .map(|i| project_gaussian(&params.gaussian(i), &cp, &s))
                .collect();
            let grid = TileGrid::new(cam.width, cam.height);
            let bins = bin_gaussians(&projected, &grid, opts.max_intersections, ci)?;
            let (img, raster) =
                rasterize_forward_image(&projected, &bins, &grid, background, opts.normalize_depth);
            let image = RenderedImage {
                width: cam.width,
                height: cam.height,
                rgb: img.rgb,
                alpha: img.alpha,
                depth: img.depth,
            };
            Ok((
                image,
                CameraState {
                    projected,
                    bins,
                    raster,
                },
            ))
        })
        .collect::<Result<_, RenderError>>()?;
    let (images, states) = results.into_iter().unzip();
    Ok((
        images,
        ForwardState {
            cameras: states,
            num_gaussians: params.len(),
            sh_degree: params.sh_degree,
            options: *opts,
        },
    ))
}

/// Forward only, dropping the backward state.
pub fn render<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
) -> Result<Vec<RenderedImage<F>>, RenderError> {
    rasterize_forward(params, cameras, opts).map(|(images, _)| images)
}

/// Gradients of a loss with respect to the parameters, given the loss's
/// per-pixel gradients for each camera's outputs. `params`, `cameras` and
/// `opts` must be those of the forward call that produced `state`.
/// Deterministic: the same inputs give bitwise the same gradients.
pub fn rasterize_backward<F: Real>(
    params: &GaussianParams<'_, F>,
    cameras: &[Camera],
    opts: &RenderOptions,
    state: &ForwardState<F>,
    grads: &[ImageGradients<'_, F>],
) -> Result<Gradients<F>, RenderError> {
    check_call(params, cameras, opts)?;
    let shape = |m: String| Err(RenderError::GradientShape(m));
    if state.cameras.len() != cameras.len() || grads.len() != cameras.len() {
        return shape(format!(
            "{} cameras, {} forward states, {} image gradients",
            cameras.len(),
            state.cameras.len(),
            grads.len()
        ));
    }
    if state.num_gaussians != params.len() || state.sh_degree != params.sh_degree {
        return shape(format!(
            "forward saw {} Gaussians of SH degree {}, backward got {} of degree {}",
            state.num_gaussians,
            state.sh_degree,
            params.len(),
            params.sh_degree
        ));
    }
    if state.options != *opts {
        return shape("render options differ from the forward call".into());
    }
    for (ci, (g, cam)) in grads.iter().zip(cameras).enumerate() {
        let npix = cam.num_pixels();
        for (name, len, want) in [
            ("rgb", g.rgb.map(|v| v.len()), 3 * npix),
            ("alpha", g.alpha.map(|v| v.len()), npix),
            ("depth", g.depth.map(|v| v.len()), npix),
        ] {
            if let Some(len) = len {
                if len != want {
                    return shape(format!(
                        "camera {ci}: {name} gradient has {len} values, expected {want}"
                    ));
                }
            }
        }
    }

    let s = settings(params, opts);
    let background = opts.background.map(F::from_f32);
    let cam_params: Vec<CameraParams<F>> = cameras.iter().map(CameraParams::new).collect();
    let screen: Vec<Vec<crate::project::ScreenGrad<F>>> = cameras
        .par_iter()
        .zip(&state.cameras)
        .zip(grads)
        .map(|((cam, cs), g)| {
            let grid = TileGrid::new(cam.width, cam.height);
            let pg = PixelGrads {
                rgb: g.rgb,
                alpha: g.alpha,
                depth: g.depth,
            };
            rasterize_backward_image(
                &cs.projected,
                &cs.bins,
                &grid,
                background,
                opts.normalize_depth,
                &cs.raster,
                &pg,
            )
        })
        .collect();

    struct PerGaussian<F> {
        grad: ParamGrad<F>,
        norm: F,
        abs_norm: F,
        count: u32,
        max_radius: F,
    }
    let n = params.len();
    let stride = params.sh_stride();
    let mut sh_grad = vec![F::ZERO; n * stride];
    let per: Vec<PerGaussian<F>> = sh_grad
        .par_chunks_mut(stride)
        .enumerate()
        .map(|(i, v_sh)| {
            let g = params.gaussian(i);
            let mut out = PerGaussian {
                grad: ParamGrad::default(),
                norm: F::ZERO,
                abs_norm: F::ZERO,
                count: 0,
                max_radius: F::ZERO,
            };
            for (ci, cp) in cam_params.iter().enumerate() {
                let proj = &state.cameras[ci].projected[i];
                if !proj.is_visible() {
                    continue;
                }
                let sg = &screen[ci][i];
                project_gaussian_backward(&g, cp, &s, proj, sg, &mut out.grad, v_sh);
                out.count += 1;
                out.norm += (sg.mean2d[0] * sg.mean2d[0] + sg.mean2d[1] * sg.mean2d[1]).sqrt();
                out.abs_norm += (sg.mean2d_abs[0] * sg.mean2d_abs[0]
                    + sg.mean2d_abs[1] * sg.mean2d_abs[1])
                    .sqrt();
                out.max_radius = out.max_radius.max(proj.radius);
            }
            out
        })
        .collect();

    Ok(Gradients {
        means: per.iter().map(|p| p.grad.mean).collect(),
        quats: per.iter().map(|p| p.grad.quat).collect(),
        log_scales: per.iter().map(|p| p.grad.log_scale).collect(),
        opacity_logits: per.iter().map(|p| p.grad.opacity_logit).collect(),
        sh: sh_grad,
        stats: DensifyStats {
            mean2d_grad_norm: per.iter().map(|p| p.norm).collect(),
            mean2d_absgrad_norm: per.iter().map(|p| p.abs_norm).collect(),
            visible_count: per.iter().map(|p| p.count).collect(),
            max_radius_px: per.iter().map(|p| p.max_radius).collect(),
        },
    })
}
