//! Held-out evaluation: PSNR and SSIM of renders against views.

use splatforge_render::{pack_sh, render, GaussianParams, RenderMode, RenderOptions};
use splatforge_splat::Gaussians;

use crate::dataset::Views;
use crate::error::Result;
use crate::loss::{psnr, ssim};

/// One view's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewMetrics {
    pub name: String,
    pub psnr: f64,
    pub ssim: f64,
    pub mse: f64,
}

/// Scores over a set of views: PSNR and SSIM are means of the per-view
/// values (as 3DGS's `metrics.py` reports them).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    pub psnr: f64,
    pub ssim: f64,
    pub views: Vec<ViewMetrics>,
}

/// Renders `g` from every view (at the view's size, over `background`,
/// clamped to `[0, 1]`) and scores it against the view composited over the
/// same background.
pub fn evaluate(
    g: &Gaussians,
    views: &Views,
    background: [f32; 3],
    mode: RenderMode,
) -> Result<Metrics> {
    let sh = pack_sh(g);
    let params = GaussianParams::from_gaussians(g, &sh);
    let opts = RenderOptions {
        background,
        mode,
        ..Default::default()
    };
    let mut out = Metrics::default();
    // A few cameras per call: parallel, with bounded memory.
    for chunk in views.views.chunks(4) {
        let cameras: Vec<_> = chunk.iter().map(|v| v.camera).collect();
        let images = render(&params, &cameras, &opts)?;
        for (img, v) in images.iter().zip(chunk) {
            let x: Vec<f32> = img.rgb.iter().map(|c| c.clamp(0.0, 1.0)).collect();
            let y = v.composite(background);
            let mse = x
                .iter()
                .zip(&y)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            let s = ssim(&x, &y, img.width as usize, img.height as usize, 3, None) as f64;
            out.views.push(ViewMetrics {
                name: v.name.clone(),
                psnr: psnr(mse),
                ssim: s,
                mse,
            });
        }
    }
    let n = out.views.len().max(1) as f64;
    out.psnr = out.views.iter().map(|v| v.psnr).sum::<f64>() / n;
    out.ssim = out.views.iter().map(|v| v.ssim).sum::<f64>() / n;
    Ok(out)
}
