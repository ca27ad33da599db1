//! One optimisation step on the GPU: targets, the fused L1 + SSIM loss
//! (`cuda/loss.cu`), the rasterizer's backward pass, the fused Adam
//! (`cuda/adam.cu`) and the deferred loss statistics; the guided (SDS) step.

use super::*;

impl CudaBackend {
    pub(super) fn target(&mut self, v: &BatchView<'_>, bg: [f32; 3]) -> Result<(u64, Option<u64>)> {
        let key = (v.id, bg.map(f32::to_bits));
        let (h, w) = (v.camera.height as usize, v.camera.width as usize);
        if !self.targets.contains_key(&key) {
            let dev = Device::Cuda(self.dev.clone());
            if v.target_rgb.len() != 3 * h * w || v.target_alpha.is_some_and(|a| a.len() != h * w) {
                return Err(FitError::Input(format!(
                    "view {}: image size does not match its camera",
                    v.id
                )));
            }
            let rgb = Tensor::from_slice(v.target_rgb, 3 * h * w, &dev)?;
            let alpha = v
                .target_alpha
                .map(|a| Tensor::from_slice(a, h * w, &dev))
                .transpose()?;
            self.targets.insert(key, (rgb, alpha));
        }
        let (rgb, alpha) = &self.targets[&key];
        Ok((
            tensor_address::<f32>(rgb, &self.stream)?,
            alpha
                .as_ref()
                .map(|a| tensor_address::<f32>(a, &self.stream))
                .transpose()?,
        ))
    }

    /// Copies the loss ring back and turns the pending steps into statistics.
    pub(super) fn read_stats(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sums = self
            .stream
            .clone_dtoh(&self.ring)
            .map_err(|e| dev_err("stats readback", e))?;
        self.syncs.stats_readbacks += 1;
        let w = self.settings.weights;
        let lam = w.lambda_ssim as f64;
        for p in self.pending.drain(..) {
            let mut out = StepStats::default();
            let nv = p.views as f64;
            for vi in 0..p.views {
                let s =
                    &sums[(p.slot * MAX_VIEWS_PER_SLOT + vi) * SUMS_PER_VIEW..][..SUMS_PER_VIEW];
                let count = (3 * p.pixels) as f64;
                let l1 = s[0] / count;
                let mse = s[1] / count;
                let ssim = s[2] / count;
                let mut loss = (1.0 - lam) * l1 + lam * (1.0 - ssim);
                if p.has_alpha[vi] {
                    loss += w.lambda_alpha as f64 * (s[3] / p.pixels as f64);
                }
                out.loss += loss / nv;
                out.l1 += l1 / nv;
                out.ssim += ssim / nv;
                out.psnr += psnr(mse) / nv;
            }
            self.history.push(out);
            self.last_stats = out;
        }
        Ok(())
    }

    /// Enqueues the loss kernels of `views`, whose renders are images
    /// `first..first + views.len()` of `images`, each view's gradient
    /// multiplied by `grad_scale`, and records their sums as one pending
    /// step. Returns the gradients with respect to those renders: RGB
    /// `[V, H, W, 3]` and, when some view has an alpha term, alpha
    /// `[V, H, W]` (zero for the others).
    pub(super) fn enqueue_view_losses(
        &mut self,
        images: &RenderedTensors,
        first: usize,
        views: &[BatchView<'_>],
        background: [f32; 3],
        grad_scale: f32,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let (_, h, w, _) = images.rgb.dims4()?;
        let c = views.len();
        let px = h * w;
        let weights = self.settings.weights;
        let want_alpha =
            weights.lambda_alpha > 0.0 && views.iter().any(|v| v.target_alpha.is_some());
        // Every view's kernel writes all of its RGB gradient.
        let mut grad_rgb = alloc::<f32>(&stream, c * 3 * px)?;
        let mut grad_alpha = if want_alpha {
            Some(
                stream
                    .alloc_zeros::<f32>(c * px)
                    .map_err(|e| dev_err("alloc", e))?,
            )
        } else {
            None
        };
        let scratch = self.loss_scratch.ensure(&stream, 4 * 11 * 3 * px)?;
        let rgb_ptr = tensor_address::<f32>(&images.rgb, &stream)? + (first * 3 * px * 4) as u64;
        let alpha_ptr = tensor_address::<f32>(&images.alpha, &stream)? + (first * px * 4) as u64;
        let grad_rgb_ptr = slice_address_mut(&mut grad_rgb, &stream);
        let grad_alpha_ptr = grad_alpha.as_mut().map(|g| slice_address_mut(g, &stream));
        if self.pending.len() >= self.ring_slots {
            self.read_stats()?;
        }
        let slot = self.steps as usize % self.ring_slots;
        let ring_ptr = slice_address_mut(&mut self.ring, &stream);
        let taps: Vec<f32> = gaussian_kernel::<f32>(SSIM_WINDOW, SSIM_SIGMA);
        let mut pend = PendingStep {
            slot,
            views: c,
            pixels: px,
            has_alpha: [false; MAX_VIEWS_PER_SLOT],
        };
        for (ci, v) in views.iter().enumerate() {
            let (trgb, talpha) = self.target(v, background)?;
            pend.has_alpha[ci] = talpha.is_some();
            let a = ffi::SffLossArgs {
                render_rgb: rgb_ptr + (ci * 3 * px * 4) as u64,
                render_alpha: alpha_ptr + (ci * px * 4) as u64,
                target_rgb: trgb,
                target_alpha: talpha.unwrap_or(0),
                width: w as c_int,
                height: h as c_int,
                lambda_ssim: weights.lambda_ssim,
                // As view_loss: lambda_alpha * grad_scale / n.
                alpha_grad: weights.lambda_alpha * grad_scale / px as f32,
                want_alpha_grad: (talpha.is_some() && grad_alpha_ptr.is_some()) as c_int,
                grad_scale,
                l1_inv: 1.0 / (3 * px) as f32,
                ssim_inv: (1.0 / (px * 3) as f64) as f32,
                c1: (0.01f64 * 0.01) as f32,
                c2: (0.03f64 * 0.03) as f32,
                taps: taps.clone().try_into().expect("11 taps"),
                grad_rgb: grad_rgb_ptr + (ci * 3 * px * 4) as u64,
                grad_alpha: grad_alpha_ptr.map_or(0, |g| g + (ci * px * 4) as u64),
                sums: ring_ptr + ((slot * MAX_VIEWS_PER_SLOT + ci) * SUMS_PER_VIEW * 8) as u64,
                scratch,
            };
            // SAFETY: the image, gradient and ring pointers address view
            // `ci` inside buffers sized for every view of this step.
            check("loss", unsafe { ffi::sff_view_loss(&a, cs) })?;
        }
        self.pending.push(pend);
        Ok((
            wrap_slice(grad_rgb, &self.dev).reshape((c, h, w, 3))?,
            grad_alpha
                .map(|g| wrap_slice(g, &self.dev).reshape((c, h, w)))
                .transpose()?,
        ))
    }

    /// Enqueues the fused Adam step over the six groups at `lrs`.
    pub(super) fn enqueue_adam(&mut self, grads: &ParamGrads, lrs: &LearningRates) -> Result<()> {
        let stream = self.stream.clone();
        let cs = stream.cu_stream() as *mut c_void;
        let cfg = self.settings.adam;
        let mut group = [ffi::SffAdamGroup::default(); 6];
        for (i, grp) in Group::ALL.iter().enumerate() {
            self.adam_steps[i] += 1;
            let (step_size, bc2_sqrt) = adam_step_constants(grp.lr(lrs), self.adam_steps[i], &cfg);
            group[i] = ffi::SffAdamGroup {
                step_size,
                bc2_sqrt,
            };
        }
        let params_ptr = tensor_address::<f32>(&self.params, &stream)?;
        let a = ffi::SffAdamArgs {
            params: params_ptr,
            m: slice_address_mut(&mut self.m, &stream),
            v: slice_address_mut(&mut self.v, &stream),
            grad_means: tensor_address::<f32>(&grads.means, &stream)?,
            grad_quats: tensor_address::<f32>(&grads.quats, &stream)?,
            grad_scales: tensor_address::<f32>(&grads.log_scales, &stream)?,
            grad_opacity: tensor_address::<f32>(&grads.opacity_logits, &stream)?,
            grad_sh: tensor_address::<f32>(&grads.sh, &stream)?,
            n: self.n as i64,
            sh_coeffs: self.k() as c_int,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            group,
        };
        // SAFETY: parameters, gradients and moments are this optimiser's
        // live buffers of the same length.
        check("adam", unsafe { ffi::sff_adam(&a, cs) })
    }

    /// Counts a finished step; reads the statistics back every
    /// `stats_interval` steps.
    pub(super) fn finish_step(&mut self) -> Result<()> {
        self.steps += 1;
        #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87
        if self.steps % self.stats_interval == 0 {
            self.read_stats()?;
        }
        Ok(())
    }

    pub(super) fn try_step(
        &mut self,
        views: &[BatchView<'_>],
        p: &StepParams,
    ) -> Result<StepStats> {
        self.check_deferred()?;
        if views.is_empty() {
            return Err(FitError::Input("a step needs at least one view".into()));
        }
        if views.len() > MAX_VIEWS_PER_SLOT {
            return Err(FitError::Input(format!(
                "the CUDA backend takes at most {MAX_VIEWS_PER_SLOT} views per step, got {}",
                views.len()
            )));
        }
        let stream = self.bound_stream()?;
        let cs = stream.cu_stream() as *mut c_void;
        let t0 = Instant::now();
        let n = self.n;
        let cameras: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
        let (w, h) = (cameras[0].width as usize, cameras[0].height as usize);
        if cameras
            .iter()
            .any(|c| (c.width as usize, c.height as usize) != (w, h))
        {
            return Err(FitError::Input(
                "the CUDA backend renders the views of one step in one call: they must share one size".into(),
            ));
        }
        let opts = self.render_options(p.background, p.sh_degree);
        let gt = self.gaussian_tensors()?;
        let (images, state) = self.raster.forward(&gt, &cameras, &opts)?;
        self.syncs.forward += 1;
        let t1 = Instant::now();

        // Loss and its image gradient, per view.
        let c = views.len();
        let (grad_rgb, grad_alpha) =
            self.enqueue_view_losses(&images, 0, views, p.background, 1.0 / c as f32)?;
        let image_grads = ImageGradTensors {
            rgb: Some(grad_rgb),
            alpha: grad_alpha,
            depth: None,
        };
        let t2 = Instant::now();

        let grads: GradientTensors =
            self.raster
                .backward(&gt, &cameras, &opts, &state, &image_grads)?;
        drop(state);
        let t3 = Instant::now();

        if p.accumulate_stats {
            let a = ffi::SffAccumArgs {
                grad_norm: tensor_address::<f32>(&grads.stats.mean2d_grad_norm, &stream)?,
                visible: tensor_address::<u32>(&grads.stats.visible_count, &stream)?,
                max_radius: tensor_address::<f32>(&grads.stats.max_radius_px, &stream)?,
                grad_accum: slice_address_mut(&mut self.grad_accum, &stream),
                denom: slice_address_mut(&mut self.denom, &stream),
                max_radii: slice_address_mut(&mut self.max_radii, &stream),
                n: n as i64,
                scale: ndc_scale(w as u32, h as u32) * c as f32,
            };
            // SAFETY: the statistics buffers hold `n` entries and live as
            // long as the optimiser; the screen gradients are the backward's.
            check("statistics", unsafe { ffi::sff_accumulate_stats(&a, cs) })?;
        }

        self.enqueue_adam(&ParamGrads::of(grads), &p.lrs)?;
        self.finish_step()?;
        let t4 = Instant::now();
        self.timings.forward += t1 - t0;
        self.timings.loss += t2 - t1;
        self.timings.backward += t3 - t2;
        self.timings.optimizer += t4 - t3;
        Ok(self.last_stats)
    }

    /// See [`FitBackend::guided_step`]. The guide cameras and the views are
    /// rendered in one rasterizer call when they share one size, else in
    /// one call each (one more host synchronisation) with the two gradients
    /// summed.
    pub(super) fn try_guided_step(
        &mut self,
        guide_cameras: &[Camera],
        views: &[BatchView<'_>],
        p: &GuidedParams,
        guide: &mut Guide<'_>,
    ) -> Result<Option<StepStats>> {
        self.check_deferred()?;
        let (w, h) = guide_size(guide_cameras)?;
        if views.len() > MAX_VIEWS_PER_SLOT {
            return Err(FitError::Input(format!(
                "the CUDA backend takes at most {MAX_VIEWS_PER_SLOT} views per step, got {}",
                views.len()
            )));
        }
        let view_size = views
            .first()
            .map(|v| (v.camera.width as usize, v.camera.height as usize));
        if views
            .iter()
            .any(|v| Some((v.camera.width as usize, v.camera.height as usize)) != view_size)
        {
            return Err(FitError::Input(
                "the CUDA backend renders the views of one step in one call: they must share one size".into(),
            ));
        }
        self.bound_stream()?;
        let t0 = Instant::now();
        let opts = self.render_options(p.background, p.sh_degree);
        let gt = self.gaussian_tensors()?;
        let ng = guide_cameras.len();
        let shared = view_size.is_none_or(|s| s == (w, h));
        let mut cameras = guide_cameras.to_vec();
        if shared {
            cameras.extend(views.iter().map(|v| *v.camera));
        }
        let (images, state) = self.raster.forward(&gt, &cameras, &opts)?;
        self.syncs.forward += 1;
        let separate = if shared {
            None
        } else {
            let vc: Vec<Camera> = views.iter().map(|v| *v.camera).collect();
            let (vi, vs) = self.raster.forward(&gt, &vc, &opts)?;
            self.syncs.forward += 1;
            Some((vc, vi, vs))
        };
        // [C, H, W, 3] → the guide's [n, 3, H, W]: a copy, so the guide's
        // graph holds no view of the frame buffer the backward reads.
        let renders = images
            .rgb
            .narrow(0, 0, ng)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let t1 = Instant::now();

        let grad = guide(&renders).map_err(FitError::Guide)?;
        drop(renders);
        let t_guide = Instant::now();
        check_guide_gradient(&grad, ng, w, h)?;
        // Non-finite entries become 0 (NaN fails `|x| < ∞` as well), then the
        // rasterizer's [C, H, W, 3] layout.
        let grad = grad.to_device(&self.device())?.to_dtype(DType::F32)?;
        let finite = grad.abs()?.lt(f64::INFINITY)?;
        let grad = finite
            .where_cond(&grad, &grad.zeros_like()?)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        // The views' losses only once the guide has succeeded: a failed guide
        // leaves no pending statistics behind.
        let view_grads = match &separate {
            _ if views.is_empty() => None,
            None => Some(self.enqueue_view_losses(
                &images,
                ng,
                views,
                p.background,
                p.view_grad_scale,
            )?),
            Some((_, vi, _)) => {
                Some(self.enqueue_view_losses(vi, 0, views, p.background, p.view_grad_scale)?)
            }
        };
        let t3 = Instant::now();

        let grads = match (separate, view_grads) {
            (Some((vc, _, vs)), Some((vrgb, valpha))) => {
                let only_rgb = ImageGradTensors {
                    rgb: Some(grad),
                    alpha: None,
                    depth: None,
                };
                let a = self
                    .raster
                    .backward(&gt, &cameras, &opts, &state, &only_rgb)?;
                drop(state);
                let view_image_grads = ImageGradTensors {
                    rgb: Some(vrgb),
                    alpha: valpha,
                    depth: None,
                };
                let b = self
                    .raster
                    .backward(&gt, &vc, &opts, &vs, &view_image_grads)?;
                ParamGrads::of(a).add(&ParamGrads::of(b))?
            }
            (_, view_grads) => {
                // One call: the guide's rows first, then the views'; the
                // guide cameras have no alpha gradient.
                let (rgb, alpha) = match view_grads {
                    Some((vrgb, valpha)) => {
                        let alpha = match valpha {
                            Some(a) => Some(Tensor::cat(
                                &[&Tensor::zeros((ng, h, w), DType::F32, &self.device())?, &a],
                                0,
                            )?),
                            None => None,
                        };
                        (Tensor::cat(&[&grad, &vrgb], 0)?, alpha)
                    }
                    None => (grad, None),
                };
                let image_grads = ImageGradTensors {
                    rgb: Some(rgb),
                    alpha,
                    depth: None,
                };
                let g = self
                    .raster
                    .backward(&gt, &cameras, &opts, &state, &image_grads)?;
                drop(state);
                ParamGrads::of(g)
            }
        };
        let t4 = Instant::now();

        self.enqueue_adam(&grads, &p.lrs)?;
        drop(grads);
        self.finish_step()?;
        let t5 = Instant::now();
        self.timings.forward += t1 - t0;
        // The guide's time counts towards no stage.
        self.timings.loss += t3 - t_guide;
        self.timings.backward += t4 - t3;
        self.timings.optimizer += t5 - t4;
        Ok((!views.is_empty()).then_some(self.last_stats))
    }
}

/// One view's loss and image gradient on the GPU, from host images (for
/// parity checks against [`crate::loss::view_loss`]): `(loss terms as
/// (l1, ssim, mse, alpha_l1), grad_rgb, grad_alpha)`.
#[doc(hidden)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn view_loss_on_gpu(
    device: &Device,
    render_rgb: &[f32],
    render_alpha: &[f32],
    gt_rgb: &[f32],
    gt_alpha: Option<&[f32]>,
    width: usize,
    height: usize,
    weights: &crate::loss::LossWeights,
    grad_scale: f32,
) -> Result<((f64, f64, f64, f64), Vec<f32>, Option<Vec<f32>>)> {
    let dev = match device {
        Device::Cuda(d) => d.clone(),
        _ => return Err(FitError::Device("not a CUDA device".into())),
    };
    let stream = dev.cuda_stream();
    let cs = stream.cu_stream() as *mut c_void;
    let px = width * height;
    let up = |v: &[f32]| stream.clone_htod(v).map_err(|e| dev_err("upload", e));
    let rr = up(render_rgb)?;
    let ra = up(render_alpha)?;
    let tr = up(gt_rgb)?;
    let ta = gt_alpha.map(up).transpose()?;
    let want_alpha = gt_alpha.is_some() && weights.lambda_alpha > 0.0;
    let mut g_rgb = stream
        .alloc_zeros::<f32>(3 * px)
        .map_err(|e| dev_err("alloc", e))?;
    let mut g_alpha = stream
        .alloc_zeros::<f32>(px)
        .map_err(|e| dev_err("alloc", e))?;
    let mut sums = stream
        .alloc_zeros::<f64>(4)
        .map_err(|e| dev_err("alloc", e))?;
    let mut scratch = Scratch::default();
    let a = ffi::SffLossArgs {
        render_rgb: slice_address(&rr, &stream),
        render_alpha: slice_address(&ra, &stream),
        target_rgb: slice_address(&tr, &stream),
        target_alpha: ta.as_ref().map_or(0, |t| slice_address(t, &stream)),
        width: width as c_int,
        height: height as c_int,
        lambda_ssim: weights.lambda_ssim,
        alpha_grad: weights.lambda_alpha * grad_scale / px as f32,
        want_alpha_grad: want_alpha as c_int,
        grad_scale,
        l1_inv: 1.0 / (3 * px) as f32,
        ssim_inv: (1.0 / (px * 3) as f64) as f32,
        c1: (0.01f64 * 0.01) as f32,
        c2: (0.03f64 * 0.03) as f32,
        taps: gaussian_kernel::<f32>(SSIM_WINDOW, SSIM_SIGMA)
            .try_into()
            .expect("11 taps"),
        grad_rgb: slice_address_mut(&mut g_rgb, &stream),
        grad_alpha: if want_alpha {
            slice_address_mut(&mut g_alpha, &stream)
        } else {
            0
        },
        sums: slice_address_mut(&mut sums, &stream),
        scratch: scratch.ensure(&stream, 4 * 11 * 3 * px)?,
    };
    // SAFETY: `sums` and `scratch` were sized for one view of `px` pixels
    // just above; the images are live tensors of that size.
    check("loss", unsafe { ffi::sff_view_loss(&a, cs) })?;
    let s = stream
        .clone_dtoh(&sums)
        .map_err(|e| dev_err("download", e))?;
    let g = stream
        .clone_dtoh(&g_rgb)
        .map_err(|e| dev_err("download", e))?;
    let ga = if want_alpha {
        Some(
            stream
                .clone_dtoh(&g_alpha)
                .map_err(|e| dev_err("download", e))?,
        )
    } else {
        None
    };
    let count = (3 * px) as f64;
    Ok((
        (s[0] / count, s[2] / count, s[1] / count, s[3] / px as f64),
        g,
        ga,
    ))
}
