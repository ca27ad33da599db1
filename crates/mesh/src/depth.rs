//! Colour, alpha and expected depth of the splat from every fusion view,
//! through our rasterizer's CPU path.
//!
//! The rasterizer's depth with [`RenderOptions::normalize_depth`] is the
//! expected depth `Σ wᵢ·zᵢ / alpha` (camera-space z, scene units): the
//! alpha-weighted mean depth of the Gaussians a pixel sees, which lies on
//! the splat's visible surface where alpha is high. Colours are rendered
//! with the DC term only (as the 404 validators render), over black, so
//! `rgb / alpha` is the surface colour without the background.

use splatforge_render::{render, Camera, GaussianBuffers, RenderOptions, RenderedImage};
use splatforge_splat::Gaussians;

use crate::MeshError;

/// Cameras rendered per rasterizer call: the rasterizer keeps every
/// camera's projected Gaussians until the call returns (≈ 100 B per
/// Gaussian per camera), so views go a few at a time.
const CAMERAS_PER_CALL: usize = 4;

/// A pixel at least this opaque is surface; below it, the ray saw (mostly)
/// nothing, i.e. free space.
pub const SURFACE_ALPHA: f32 = 0.5;

/// One view's render: row-major images of the camera's size.
#[derive(Debug, Clone)]
pub struct ViewRender {
    pub width: u32,
    pub height: u32,
    /// `[y][x][c]`, premultiplied by alpha (rendered over black).
    pub rgb: Vec<f32>,
    /// `[y][x]`, `1 − transmittance`.
    pub alpha: Vec<f32>,
    /// `[y][x]`, expected camera-space depth (scene units), 0 where nothing was drawn.
    pub depth: Vec<f32>,
}

impl ViewRender {
    /// The pixel index of image point `(u, v)` (pixel units, centres at
    /// +0.5), or `None` outside the image.
    pub fn pixel_at(&self, u: f32, v: f32) -> Option<usize> {
        if !(u >= 0.0 && v >= 0.0) {
            return None;
        }
        let (x, y) = (u as u32, v as u32);
        (x < self.width && y < self.height).then(|| (y * self.width + x) as usize)
    }
}

impl From<RenderedImage> for ViewRender {
    fn from(img: RenderedImage) -> Self {
        ViewRender {
            width: img.width,
            height: img.height,
            rgb: img.rgb,
            alpha: img.alpha,
            depth: img.depth,
        }
    }
}

/// Renders `g` from every camera (see the module docs).
pub fn render_views(g: &Gaussians, cameras: &[Camera]) -> Result<Vec<ViewRender>, MeshError> {
    let buffers = GaussianBuffers::from(g);
    let options = RenderOptions {
        background: [0.0; 3],
        normalize_depth: true,
        sh_degree: Some(0),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(cameras.len());
    for chunk in cameras.chunks(CAMERAS_PER_CALL) {
        out.extend(
            render(&buffers.params(), chunk, &options)?
                .into_iter()
                .map(ViewRender::from),
        );
    }
    Ok(out)
}
