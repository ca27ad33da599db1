//! The seam between the training loop and the per-iteration maths.
//!
//! [`crate::trainer`] owns the schedule (learning rates, SH degree, render
//! size, view order, backgrounds, when to densify) and talks to a
//! [`FitBackend`], which owns the Gaussians and the optimiser state and does
//! one step: render, loss and its image gradient, backward, statistics,
//! Adam. [`CpuBackend`] composes the CPU reference functions of this crate
//! and of `splatforge-render`; a GPU backend keeps everything on the device
//! and implements the same trait (its `step` need not synchronise: it may
//! return an earlier step's statistics, see [`FitBackend::latest_stats`];
//! `crate::cuda::CudaBackend` under the `cuda` feature).
//!
//! Besides the fit's own step, a backend takes *guided* steps
//! ([`FitBackend::guided_step`]): the gradient of part of the loss comes
//! from the caller (SDS refinement: a diffusion model's gradient with
//! respect to rendered images), exchanged as candle tensors on the
//! backend's device, so that a GPU backend never copies images or
//! gradients through the host.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use splatforge_render::{
    pack_sh, rasterize_backward, rasterize_forward, Camera, GaussianParams, ImageGradients,
    RenderMode, RenderOptions, RenderedImage,
};
use splatforge_splat::Gaussians;

use crate::adam::{Adam, AdamConfig, GaussianGrads};
use crate::densify::{
    densify_and_prune, reset_opacity, DensifyParams, DensifyReport, DensifyState,
};
use crate::error::{FitError, Result};
use crate::loss::{psnr, view_loss, LossWeights, ViewLoss, ViewLossGrad};
use crate::rng::Rng;
use crate::schedule::LearningRates;

/// One training view of a step, at the size to render.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// Stable identifier of this (view, render size) pair, so that a backend
    /// can cache uploads.
    pub id: usize,
    pub camera: &'a Camera,
    /// Target RGB over this step's background, `[y][x][rgb]`.
    pub target_rgb: &'a [f32],
    /// Target alpha, when the view has alpha.
    pub target_alpha: Option<&'a [f32]>,
}

/// What one step needs besides the views.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepParams {
    pub background: [f32; 3],
    pub lrs: LearningRates,
    /// Active SH degree for rendering.
    pub sh_degree: u8,
    /// Accumulate densification statistics from this step.
    pub accumulate_stats: bool,
}

/// What a guided step needs besides the cameras, the views and the guide.
#[derive(Debug, Clone, Copy)]
pub struct GuidedParams {
    pub background: [f32; 3],
    pub lrs: LearningRates,
    /// Active SH degree for rendering.
    pub sh_degree: u8,
    /// Factor on each view's loss gradient (the fit's step uses
    /// `1 / number of views`; SDS uses `lambda_views / number of views`).
    pub view_grad_scale: f32,
}

/// The error a [`Guide`] returns; [`FitBackend::guided_step`] hands it back
/// as [`FitError::Guide`].
pub type GuideError = Box<dyn std::error::Error + Send + Sync>;

/// The external part of a guided step's loss. It receives the guide
/// cameras' RGB renders as one f32 tensor `[n, 3, H, W]` (channel-first, the
/// composited colours as rendered: in [0, 1] up to the rasterizer's
/// unclamped colours) on the backend's device, and returns
/// `∂loss/∂renders` with the same shape (any float dtype; a tensor on
/// another device is moved to the backend's).
pub type Guide<'a> = dyn FnMut(&Tensor) -> std::result::Result<Tensor, GuideError> + 'a;

/// Loss terms of a step, averaged over its views.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    pub loss: f64,
    pub l1: f64,
    pub ssim: f64,
    /// Mean over the views of each view's PSNR of the clamped render.
    pub psnr: f64,
}

/// Time spent in each stage, summed over the fit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StageTimings {
    pub forward: Duration,
    pub loss: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
    pub densify: Duration,
}

/// A fitting backend (see the module docs).
pub trait FitBackend {
    fn num_gaussians(&self) -> usize;
    /// One optimisation step over `views` (all rendered in one call).
    fn step(&mut self, views: &[BatchView<'_>], params: &StepParams) -> Result<StepStats>;
    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport;
    fn reset_opacity(&mut self);
    /// The current Gaussians (a download, for a GPU backend).
    fn gaussians(&self) -> Gaussians;
    fn timings(&self) -> StageTimings;
    /// The latest step's statistics when [`step`](Self::step) returned
    /// stale ones (a GPU backend reading them back at a throttled rate);
    /// the trainer calls it once, after the last step. `None`: `step`'s were
    /// current.
    fn latest_stats(&mut self) -> Option<StepStats> {
        None
    }
    /// One step of a loss whose gradient with respect to some renders comes
    /// from `guide` (SDS), plus the fit's loss on `views`:
    /// 1. renders `guide_cameras` (all of one size) and `views` in one call
    ///    (a backend that can only render one size per call may use two);
    /// 2. calls `guide` with the guide cameras' RGB renders (see [`Guide`])
    ///    and takes its gradient, non-finite entries replaced by 0;
    /// 3. adds each view's loss gradient ([`crate::loss::view_loss`], the
    ///    backend's weights) times `params.view_grad_scale`;
    /// 4. backpropagates through the rasterizer and takes one Adam step at
    ///    `params.lrs`.
    ///
    /// No densification statistics are accumulated. Returns the views' loss
    /// terms averaged over `views` (`None` without views); a GPU backend may
    /// return an earlier step's, as [`step`](Self::step) does.
    fn guided_step(
        &mut self,
        guide_cameras: &[Camera],
        views: &[BatchView<'_>],
        params: &GuidedParams,
        guide: &mut Guide<'_>,
    ) -> Result<Option<StepStats>>;
    /// Zeroes the optimiser state (moments and step counts), so that the
    /// next step starts Adam afresh (a new optimisation phase, e.g. SDS
    /// after the fit).
    fn reset_optimizer(&mut self);
}

/// The size `(width, height)` shared by the guide cameras of a guided step.
pub(crate) fn guide_size(cameras: &[Camera]) -> Result<(usize, usize)> {
    let first = cameras
        .first()
        .ok_or_else(|| FitError::Input("a guided step needs at least one guide camera".into()))?;
    let (w, h) = (first.width, first.height);
    if let Some(c) = cameras.iter().find(|c| (c.width, c.height) != (w, h)) {
        return Err(FitError::Input(format!(
            "the guide cameras must share one size: {w}x{h} and {}x{}",
            c.width, c.height
        )));
    }
    Ok((w as usize, h as usize))
}

/// Checks that the guide's gradient has the shape of the renders it got.
pub(crate) fn check_guide_gradient(grad: &Tensor, n: usize, w: usize, h: usize) -> Result<()> {
    if grad.dims() != [n, 3, h, w] {
        return Err(FitError::Input(format!(
            "the guide returned a gradient of shape {:?}, expected [{n}, 3, {h}, {w}]",
            grad.dims()
        )));
    }
    Ok(())
}

/// Guide-camera renders (`[y][x][rgb]` each, all `w × h`) → `[n, 3, h, w]`
/// on the CPU.
fn renders_to_tensor(images: &[RenderedImage<f32>], w: usize, h: usize) -> Result<Tensor> {
    let px = w * h;
    let mut chw = vec![0f32; images.len() * 3 * px];
    for (i, img) in images.iter().enumerate() {
        for p in 0..px {
            for c in 0..3 {
                chw[(i * 3 + c) * px + p] = img.rgb[p * 3 + c];
            }
        }
    }
    Ok(Tensor::from_vec(
        chw,
        (images.len(), 3, h, w),
        &Device::Cpu,
    )?)
}

/// A guide's gradient `[n, 3, h, w]` → per-camera `[y][x][rgb]` gradients
/// on the host, non-finite entries replaced by 0.
fn gradient_to_host(grad: &Tensor, n: usize, w: usize, h: usize) -> Result<Vec<Vec<f32>>> {
    let px = w * h;
    let flat = grad
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((0..n)
        .map(|i| {
            let mut hwc = vec![0f32; 3 * px];
            for p in 0..px {
                for c in 0..3 {
                    let v = flat[(i * 3 + c) * px + p];
                    hwc[p * 3 + c] = if v.is_finite() { v } else { 0.0 };
                }
            }
            hwc
        })
        .collect())
}

/// Checks that every view's target matches its camera's size.
fn check_targets(views: &[BatchView<'_>]) -> Result<()> {
    for v in views {
        let n = v.camera.num_pixels();
        if v.target_rgb.len() != 3 * n || v.target_alpha.is_some_and(|a| a.len() != n) {
            return Err(FitError::Input(format!(
                "view {}: image size does not match its camera",
                v.id
            )));
        }
    }
    Ok(())
}

/// The image gradients of [`view_losses`]' results, for the rasterizer's backward pass.
fn loss_image_grads(
    losses: &[(ViewLoss, ViewLossGrad)],
) -> impl Iterator<Item = ImageGradients<'_, f32>> {
    losses.iter().map(|(_, g)| ImageGradients {
        rgb: Some(&g.rgb),
        alpha: g.alpha.as_deref(),
        depth: None,
    })
}

/// The views' losses and their image gradients (times `scale`), in parallel.
fn view_losses(
    images: &[RenderedImage<f32>],
    views: &[BatchView<'_>],
    weights: &LossWeights,
    scale: f32,
) -> Vec<(ViewLoss, ViewLossGrad)> {
    images
        .par_iter()
        .zip(views)
        .map(|(img, v)| {
            view_loss(
                &img.rgb,
                &img.alpha,
                v.target_rgb,
                v.target_alpha,
                img.width as usize,
                img.height as usize,
                weights,
                scale,
            )
        })
        .collect()
}

/// Loss terms averaged over the views.
fn mean_stats(losses: &[(ViewLoss, ViewLossGrad)]) -> StepStats {
    let n = losses.len() as f64;
    let mut out = StepStats::default();
    for (l, _) in losses {
        out.loss += l.loss / n;
        out.l1 += l.l1 / n;
        out.ssim += l.ssim / n;
        out.psnr += psnr(l.mse) / n;
    }
    out
}

/// Settings a backend needs from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendSettings {
    pub weights: LossWeights,
    pub mode: RenderMode,
    pub adam: AdamConfig,
    pub seed: u64,
}

/// The CPU reference backend.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    g: Gaussians,
    adam: Adam,
    stats: DensifyState,
    rng: Rng,
    settings: BackendSettings,
    timings: StageTimings,
}

impl CpuBackend {
    pub fn new(g: Gaussians, settings: BackendSettings) -> Result<Self> {
        g.check_consistent()
            .map_err(|e| FitError::Input(format!("initial Gaussians: {e}")))?;
        Ok(CpuBackend {
            adam: Adam::for_gaussians(&g, settings.adam),
            stats: DensifyState::new(g.len()),
            rng: Rng::fork(settings.seed, 4),
            g,
            settings,
            timings: StageTimings::default(),
        })
    }

    /// The Gaussians being optimised.
    pub fn gaussians_ref(&self) -> &Gaussians {
        &self.g
    }

    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    /// Render options of a step: `background`, SH up to `sh_degree` (capped
    /// at the Gaussians' degree), the configured render mode.
    fn render_options(&self, background: [f32; 3], sh_degree: u8) -> RenderOptions {
        RenderOptions {
            background,
            mode: self.settings.mode,
            sh_degree: Some(sh_degree.min(self.g.sh_degree)),
            ..Default::default()
        }
    }
}

impl FitBackend for CpuBackend {
    fn num_gaussians(&self) -> usize {
        self.g.len()
    }

    fn step(&mut self, views: &[BatchView<'_>], p: &StepParams) -> Result<StepStats> {
        if views.is_empty() {
            return Err(FitError::Input("a step needs at least one view".into()));
        }
        check_targets(views)?;
        let t0 = Instant::now();
        let sh = pack_sh(&self.g);
        let params = GaussianParams::from_gaussians(&self.g, &sh);
        let cameras: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
        let opts = self.render_options(p.background, p.sh_degree);
        let (images, state) = rasterize_forward(&params, &cameras, &opts)?;
        let t1 = Instant::now();

        let losses = view_losses(
            &images,
            views,
            &self.settings.weights,
            1.0 / views.len() as f32,
        );
        let image_grads: Vec<ImageGradients<'_, f32>> = loss_image_grads(&losses).collect();
        let t2 = Instant::now();

        let grads = rasterize_backward(&params, &cameras, &opts, &state, &image_grads)?;
        drop(state);
        let t3 = Instant::now();

        if p.accumulate_stats {
            let (w, h) = if views
                .iter()
                .all(|v| v.camera.width == cameras[0].width && v.camera.height == cameras[0].height)
            {
                (cameras[0].width, cameras[0].height)
            } else {
                // Mixed sizes: use the mean side (an approximation).
                let n = cameras.len() as f64;
                let w = cameras.iter().map(|c| c.width as f64).sum::<f64>() / n;
                let h = cameras.iter().map(|c| c.height as f64).sum::<f64>() / n;
                (w.round() as u32, h.round() as u32)
            };
            self.stats.accumulate(&grads.stats, w, h, views.len());
        }
        let gg = GaussianGrads::from_render(&grads, self.g.sh_degree);
        drop(grads);
        self.adam.step(&mut self.g, &gg, &p.lrs);
        let t4 = Instant::now();

        self.timings.forward += t1 - t0;
        self.timings.loss += t2 - t1;
        self.timings.backward += t3 - t2;
        self.timings.optimizer += t4 - t3;

        Ok(mean_stats(&losses))
    }

    fn guided_step(
        &mut self,
        guide_cameras: &[Camera],
        views: &[BatchView<'_>],
        p: &GuidedParams,
        guide: &mut Guide<'_>,
    ) -> Result<Option<StepStats>> {
        let (w, h) = guide_size(guide_cameras)?;
        check_targets(views)?;
        let t0 = Instant::now();
        let sh = pack_sh(&self.g);
        let params = GaussianParams::from_gaussians(&self.g, &sh);
        let cameras: Vec<Camera> = guide_cameras
            .iter()
            .copied()
            .chain(views.iter().map(|v| *v.camera))
            .collect();
        let opts = self.render_options(p.background, p.sh_degree);
        // The CPU rasterizer takes mixed sizes: one call for everything.
        let (images, state) = rasterize_forward(&params, &cameras, &opts)?;
        let ng = guide_cameras.len();
        let renders = renders_to_tensor(&images[..ng], w, h)?;
        let t1 = Instant::now();

        // The guide's time counts towards no stage.
        let grad = guide(&renders).map_err(FitError::Guide)?;
        let t_guide = Instant::now();
        check_guide_gradient(&grad, ng, w, h)?;
        let guide_grads = gradient_to_host(&grad, ng, w, h)?;
        drop(grad);
        let losses = view_losses(
            &images[ng..],
            views,
            &self.settings.weights,
            p.view_grad_scale,
        );
        let image_grads: Vec<ImageGradients<'_, f32>> = guide_grads
            .iter()
            .map(|g| ImageGradients {
                rgb: Some(g),
                alpha: None,
                depth: None,
            })
            .chain(loss_image_grads(&losses))
            .collect();
        let t2 = Instant::now();

        let grads = rasterize_backward(&params, &cameras, &opts, &state, &image_grads)?;
        drop(state);
        let t3 = Instant::now();
        let gg = GaussianGrads::from_render(&grads, self.g.sh_degree);
        drop(grads);
        self.adam.step(&mut self.g, &gg, &p.lrs);
        let t4 = Instant::now();

        self.timings.forward += t1 - t0;
        self.timings.loss += t2 - t_guide;
        self.timings.backward += t3 - t2;
        self.timings.optimizer += t4 - t3;
        Ok((!losses.is_empty()).then(|| mean_stats(&losses)))
    }

    fn reset_optimizer(&mut self) {
        self.adam = Adam::for_gaussians(&self.g, self.settings.adam);
    }

    fn densify_and_prune(&mut self, params: &DensifyParams) -> DensifyReport {
        let t0 = Instant::now();
        let r = densify_and_prune(
            &mut self.g,
            &mut self.adam,
            &mut self.stats,
            params,
            &mut self.rng,
        );
        self.timings.densify += t0.elapsed();
        r
    }

    fn reset_opacity(&mut self) {
        reset_opacity(&mut self.g, &mut self.adam);
    }

    fn gaussians(&self) -> Gaussians {
        self.g.clone()
    }

    fn timings(&self) -> StageTimings {
        self.timings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::random_ball;
    use crate::schedule::LearningRates;

    /// Random Gaussians of SH degree 1 with varied colours and opacities.
    fn scene() -> Gaussians {
        let mut rng = Rng::new(11);
        let mut g = random_ball(300, 0.6, 1, &mut rng);
        for c in g.sh_dc.iter_mut().flatten() {
            *c = (rng.unit() * 2.0 - 1.0) as f32;
        }
        for c in &mut g.sh_rest {
            *c = (rng.unit() * 0.2 - 0.1) as f32;
        }
        for o in &mut g.opacity_logits {
            *o = (rng.unit() * 4.0 - 2.0) as f32;
        }
        g
    }

    fn settings() -> BackendSettings {
        BackendSettings {
            weights: LossWeights {
                lambda_ssim: 0.2,
                lambda_alpha: 0.5,
            },
            mode: RenderMode::Classic,
            adam: AdamConfig::default(),
            seed: 1,
        }
    }

    fn lrs() -> LearningRates {
        LearningRates {
            xyz: 1e-3,
            f_dc: 1e-2,
            f_rest: 5e-4,
            opacity: 5e-2,
            scaling: 5e-3,
            rotation: 1e-3,
        }
    }

    /// A guide's gradient from its renders: smooth in the renders, with a
    /// NaN and infinities that the step must zero; f64 to exercise the
    /// dtype conversion.
    fn fake_guide(renders: &Tensor) -> std::result::Result<Tensor, GuideError> {
        let mut v: Vec<f64> = renders
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&x| (x as f64 - 0.4) * 0.3)
            .collect();
        v[5] = f64::NAN;
        v[17] = f64::INFINITY;
        v[40] = f64::NEG_INFINITY;
        Ok(Tensor::from_vec(v, renders.dims(), renders.device())?)
    }

    struct Targets {
        cameras: Vec<Camera>,
        rgb: Vec<Vec<f32>>,
        alpha: Vec<Option<Vec<f32>>>,
    }

    /// Two views at another size than the guide cameras, one with alpha.
    fn targets() -> Targets {
        let mut rng = Rng::new(5);
        let cameras = vec![
            Camera::orbit(-10.0, 30.0, 2.5, 50.0, 20, 18),
            Camera::orbit(5.0, 200.0, 2.5, 50.0, 20, 18),
        ];
        let px = 20 * 18;
        let rgb = (0..2)
            .map(|_| (0..3 * px).map(|_| rng.unit() as f32).collect())
            .collect();
        let alpha = vec![Some((0..px).map(|_| rng.unit() as f32).collect()), None];
        Targets {
            cameras,
            rgb,
            alpha,
        }
    }

    fn batch(t: &Targets) -> Vec<BatchView<'_>> {
        (0..t.cameras.len())
            .map(|i| BatchView {
                id: i,
                camera: &t.cameras[i],
                target_rgb: &t.rgb[i],
                target_alpha: t.alpha[i].as_deref(),
            })
            .collect()
    }

    fn guide_cameras() -> Vec<Camera> {
        (0..3)
            .map(|i| Camera::orbit(-15.0, 120.0 * i as f32, 2.5, 49.1, 16, 16))
            .collect()
    }

    /// One step as SDS refinement did it before guided steps existed: render
    /// everything in one call (SH: all stored degrees), the guide cameras'
    /// renders to `[n, 3, H, W]`, the guide's gradient back to the host with
    /// non-finite entries zeroed, the views' losses, backward, Adam.
    fn manual_step(
        g: &mut Gaussians,
        adam: &mut Adam,
        guide_cams: &[Camera],
        t: &Targets,
        bg: [f32; 3],
        view_scale: f32,
    ) {
        let sh = pack_sh(g);
        let params = GaussianParams::from_gaussians(g, &sh);
        let cameras: Vec<Camera> = guide_cams.iter().chain(&t.cameras).copied().collect();
        let opts = RenderOptions {
            background: bg,
            ..Default::default()
        };
        let (images, state) = rasterize_forward(&params, &cameras, &opts).unwrap();
        let n = guide_cams.len();
        let size = 16;
        let mut chw = vec![0f32; n * 3 * size * size];
        for (i, img) in images[..n].iter().enumerate() {
            for p in 0..size * size {
                for c in 0..3 {
                    chw[(i * 3 + c) * size * size + p] = img.rgb[p * 3 + c];
                }
            }
        }
        let x = Tensor::from_vec(chw, (n, 3, size, size), &Device::Cpu).unwrap();
        let dx = fake_guide(&x)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut rgb_grads: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let mut hwc = vec![0f32; size * size * 3];
                for p in 0..size * size {
                    for c in 0..3 {
                        let v = dx[(i * 3 + c) * size * size + p];
                        hwc[p * 3 + c] = if v.is_finite() { v } else { 0.0 };
                    }
                }
                hwc
            })
            .collect();
        let mut alpha_grads: Vec<Option<Vec<f32>>> = vec![None; n];
        let weights = settings().weights;
        for (i, img) in images[n..].iter().enumerate() {
            let (_, gr) = view_loss(
                &img.rgb,
                &img.alpha,
                &t.rgb[i],
                t.alpha[i].as_deref(),
                img.width as usize,
                img.height as usize,
                &weights,
                view_scale,
            );
            rgb_grads.push(gr.rgb);
            alpha_grads.push(gr.alpha);
        }
        let image_grads: Vec<ImageGradients<'_, f32>> = rgb_grads
            .iter()
            .zip(&alpha_grads)
            .map(|(r, a)| ImageGradients {
                rgb: Some(r),
                alpha: a.as_deref(),
                depth: None,
            })
            .collect();
        let grads = rasterize_backward(&params, &cameras, &opts, &state, &image_grads).unwrap();
        let gg = GaussianGrads::from_render(&grads, g.sh_degree);
        adam.step(g, &gg, &lrs());
    }

    #[test]
    fn guided_steps_match_rendering_backward_and_adam_by_hand() {
        let t = targets();
        let cams = guide_cameras();
        let mut b = CpuBackend::new(scene(), settings()).unwrap();
        // A fit step first, so that there are moments for the reset to drop.
        let p = StepParams {
            background: [1.0; 3],
            lrs: lrs(),
            sh_degree: 1,
            accumulate_stats: false,
        };
        b.step(&batch(&t), &p).unwrap();
        assert!(b.adam().group(crate::adam::Group::Xyz).step > 0);
        b.reset_optimizer();

        let mut g = b.gaussians_ref().clone();
        let mut adam = Adam::for_gaussians(&g, AdamConfig::default());
        let view_scale = 0.7 / 2.0;
        for bg in [[0.0; 3], [1.0; 3]] {
            let params = GuidedParams {
                background: bg,
                lrs: lrs(),
                sh_degree: 1,
                view_grad_scale: view_scale,
            };
            let stats = b
                .guided_step(&cams, &batch(&t), &params, &mut fake_guide)
                .unwrap()
                .unwrap();
            assert!(stats.loss > 0.0 && stats.psnr.is_finite(), "{stats:?}");
            manual_step(&mut g, &mut adam, &cams, &t, bg, view_scale);
            assert_eq!(b.gaussians_ref(), &g, "background {bg:?}");
            assert_eq!(b.adam(), &adam);
        }
        assert_ne!(b.gaussians_ref(), &scene());

        // Without views: the guide alone, no statistics.
        let params = GuidedParams {
            background: [1.0; 3],
            lrs: lrs(),
            sh_degree: 1,
            view_grad_scale: 0.0,
        };
        let before = b.gaussians_ref().clone();
        assert_eq!(
            b.guided_step(&cams, &[], &params, &mut fake_guide).unwrap(),
            None
        );
        assert_ne!(b.gaussians_ref(), &before);
    }

    #[test]
    fn guided_step_refuses_bad_input_and_passes_guide_errors_through() {
        let t = targets();
        let cams = guide_cameras();
        let g0 = scene();
        let mut b = CpuBackend::new(g0.clone(), settings()).unwrap();
        let params = GuidedParams {
            background: [1.0; 3],
            lrs: lrs(),
            sh_degree: 1,
            view_grad_scale: 0.5,
        };
        let e = b
            .guided_step(&[], &batch(&t), &params, &mut fake_guide)
            .unwrap_err();
        assert!(e.to_string().contains("at least one guide camera"), "{e}");
        let mut mixed = cams.clone();
        mixed[1] = t.cameras[0];
        let e = b
            .guided_step(&mixed, &[], &params, &mut fake_guide)
            .unwrap_err();
        assert!(e.to_string().contains("one size"), "{e}");
        let short = &t.rgb[0][..10];
        let bad = [BatchView {
            target_rgb: short,
            ..batch(&t)[0]
        }];
        let e = b
            .guided_step(&cams, &bad, &params, &mut fake_guide)
            .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let e = b
            .guided_step(
                &cams,
                &[],
                &params,
                &mut |r: &Tensor| Ok(r.narrow(1, 0, 2)?),
            )
            .unwrap_err();
        assert!(e.to_string().contains("[3, 3, 16, 16]"), "{e}");

        #[derive(Debug, thiserror::Error)]
        #[error("the guide's own failure")]
        struct Own;
        let e = b
            .guided_step(&cams, &batch(&t), &params, &mut |_| Err(Own.into()))
            .unwrap_err();
        match e {
            FitError::Guide(inner) => assert!(inner.downcast::<Own>().is_ok()),
            e => panic!("expected the guide's error, got {e}"),
        }
        // Nothing was stepped.
        assert_eq!(b.gaussians_ref(), &g0);
        assert_eq!(b.adam().group(crate::adam::Group::Xyz).step, 0);
    }
}
