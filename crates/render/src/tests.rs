//! End-to-end tests of the public API: finite-difference gradient checks of
//! the whole pipeline for every parameter family and output, behaviour on
//! bad input, and the (ignored) hamburger timing.

use super::*;
use crate::test_util::seeded_rng;
use splatforge_splat::{Gaussians, SH_C0};

/// 20 Gaussians of SH degree 3 in a unit box around the origin, sized to
/// cover a few pixels of a 32×32 view from 2.5 units away.
fn fd_scene(seed: u64) -> GaussianBuffers<f64> {
    let mut rng = seeded_rng(seed);
    let n = 20;
    let mut b = GaussianBuffers {
        sh_degree: 3,
        ..Default::default()
    };
    for _ in 0..n {
        b.means.push([
            rng.uniform(-0.5, 0.5),
            rng.uniform(-0.5, 0.5),
            rng.uniform(-0.5, 0.5),
        ]);
        b.quats
            .push([rng.normal(), rng.normal(), rng.normal(), rng.normal()]);
        b.log_scales
            .push([0; 3].map(|_| rng.uniform(0.05f64.ln(), 0.25f64.ln())));
        b.opacity_logits.push(rng.uniform(-1.5, 2.5));
        for k in 0..16 {
            for _ in 0..3 {
                b.sh.push(if k == 0 {
                    rng.uniform(-1.0, 1.0)
                } else {
                    rng.uniform(-0.3, 0.3)
                });
            }
        }
    }
    b
}

fn fd_cameras() -> Vec<Camera> {
    vec![
        Camera::orbit(-15.0, 20.0, 2.5, 50.0, 32, 32),
        Camera::orbit(10.0, 130.0, 2.2, 45.0, 32, 32),
    ]
}

/// Loss weights per camera: `L = Σ w_rgb·rgb + Σ w_alpha·alpha + Σ w_depth·depth`.
struct Weights {
    rgb: Vec<Vec<f64>>,
    alpha: Vec<Vec<f64>>,
    depth: Vec<Vec<f64>>,
}

impl Weights {
    /// The RGB weights in f32, for the f32 backward.
    fn rgb_f32(&self) -> Vec<Vec<f32>> {
        self.rgb
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect()
    }
}

/// Per-camera image gradients with only an RGB part.
fn rgb_gradients(rgb: &[Vec<f32>]) -> Vec<ImageGradients<'_, f32>> {
    rgb.iter()
        .map(|v| ImageGradients {
            rgb: Some(v),
            ..Default::default()
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Outputs {
    All,
    Rgb,
    Alpha,
    Depth,
}

fn weights(cams: &[Camera], which: Outputs, seed: u64) -> Weights {
    let mut rng = seeded_rng(seed);
    let mut gen = |len: usize, on: bool| -> Vec<f64> {
        (0..len)
            .map(|_| if on { rng.normal() } else { 0.0 })
            .collect()
    };
    let mut w = Weights {
        rgb: vec![],
        alpha: vec![],
        depth: vec![],
    };
    for c in cams {
        let n = c.num_pixels();
        w.rgb
            .push(gen(3 * n, matches!(which, Outputs::All | Outputs::Rgb)));
        w.alpha
            .push(gen(n, matches!(which, Outputs::All | Outputs::Alpha)));
        w.depth
            .push(gen(n, matches!(which, Outputs::All | Outputs::Depth)));
    }
    w
}

fn loss(buf: &GaussianBuffers<f64>, cams: &[Camera], opts: &RenderOptions, w: &Weights) -> f64 {
    let images = render(&buf.params(), cams, opts).unwrap();
    let mut l = 0.0;
    for (ci, img) in images.iter().enumerate() {
        l += img
            .rgb
            .iter()
            .zip(&w.rgb[ci])
            .map(|(a, b)| a * b)
            .sum::<f64>();
        l += img
            .alpha
            .iter()
            .zip(&w.alpha[ci])
            .map(|(a, b)| a * b)
            .sum::<f64>();
        l += img
            .depth
            .iter()
            .zip(&w.depth[ci])
            .map(|(a, b)| a * b)
            .sum::<f64>();
    }
    l
}

fn analytic<F: Real>(
    buf: &GaussianBuffers<F>,
    cams: &[Camera],
    opts: &RenderOptions,
    w: &Weights,
) -> Gradients<F> {
    let p = buf.params();
    let (_, state) = rasterize_forward(&p, cams, opts).unwrap();
    let cv = |v: &Vec<f64>| v.iter().map(|&x| F::from_f64(x)).collect::<Vec<F>>();
    let (wr, wa, wd): (Vec<_>, Vec<_>, Vec<_>) = (
        w.rgb.iter().map(cv).collect(),
        w.alpha.iter().map(cv).collect(),
        w.depth.iter().map(cv).collect(),
    );
    let grads: Vec<ImageGradients<F>> = (0..cams.len())
        .map(|c| ImageGradients {
            rgb: Some(&wr[c]),
            alpha: Some(&wa[c]),
            depth: Some(&wd[c]),
        })
        .collect();
    rasterize_backward(&p, cams, opts, &state, &grads).unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Means,
    Quats,
    LogScales,
    OpacityLogits,
    ShDc,
    ShRest,
}

const FAMILIES: [Family; 6] = [
    Family::Means,
    Family::Quats,
    Family::LogScales,
    Family::OpacityLogits,
    Family::ShDc,
    Family::ShRest,
];

/// Indices (gaussian, component) and accessors of one family.
fn family_len(f: Family) -> usize {
    match f {
        Family::Means | Family::LogScales | Family::ShDc => 3,
        Family::Quats => 4,
        Family::OpacityLogits => 1,
        Family::ShRest => 45,
    }
}

fn param_mut(b: &mut GaussianBuffers<f64>, f: Family, i: usize, k: usize) -> &mut f64 {
    match f {
        Family::Means => &mut b.means[i][k],
        Family::Quats => &mut b.quats[i][k],
        Family::LogScales => &mut b.log_scales[i][k],
        Family::OpacityLogits => &mut b.opacity_logits[i],
        Family::ShDc => &mut b.sh[i * 48 + k],
        Family::ShRest => &mut b.sh[i * 48 + 3 + k],
    }
}

fn grad_of<F: Real>(g: &Gradients<F>, f: Family, i: usize, k: usize) -> f64 {
    match f {
        Family::Means => g.means[i][k],
        Family::Quats => g.quats[i][k],
        Family::LogScales => g.log_scales[i][k],
        Family::OpacityLogits => g.opacity_logits[i],
        Family::ShDc => g.sh[i * 48 + k],
        Family::ShRest => g.sh[i * 48 + 3 + k],
    }
    .to_f64()
}

/// Central differences in f64 with step `h` for every parameter of the
/// family; returns `(max |analytic − fd|, max |fd|)`.
fn fd_family(
    buf: &GaussianBuffers<f64>,
    cams: &[Camera],
    opts: &RenderOptions,
    w: &Weights,
    f: Family,
) -> (f64, f64) {
    let g = analytic(buf, cams, opts, w);
    let h = 1e-6;
    let (mut err, mut scale) = (0.0f64, 0.0f64);
    for i in 0..buf.means.len() {
        for k in 0..family_len(f) {
            let mut b = buf.clone();
            *param_mut(&mut b, f, i, k) += h;
            let lp = loss(&b, cams, opts, w);
            *param_mut(&mut b, f, i, k) -= 2.0 * h;
            let lm = loss(&b, cams, opts, w);
            let fd = (lp - lm) / (2.0 * h);
            err = err.max((fd - grad_of(&g, f, i, k)).abs());
            scale = scale.max(fd.abs());
        }
    }
    (err, scale)
}

/// The bound every FD check must meet: max error ≤ FD_TOL · max |gradient|.
/// Observed errors are ~1e-9 relative; a wrong term shows up at ≥ 1e-2.
const FD_TOL: f64 = 1e-6;

fn check_all_families(opts: &RenderOptions, outputs: Outputs, seed: u64) {
    let buf = fd_scene(seed);
    let cams = fd_cameras();
    let w = weights(&cams, outputs, seed + 100);
    // The scene must actually be visible in both views.
    let (_, st) = rasterize_forward(&buf.params(), &cams, opts).unwrap();
    assert!(
        st.num_visible(0) >= 15 && st.num_visible(1) >= 15,
        "{} {}",
        st.num_visible(0),
        st.num_visible(1)
    );
    for f in FAMILIES {
        let (err, scale) = fd_family(&buf, &cams, opts, &w, f);
        let colour_only = matches!(f, Family::ShDc | Family::ShRest);
        if colour_only && matches!(outputs, Outputs::Alpha | Outputs::Depth) {
            // Colour does not affect alpha or depth: both sides must be zero.
            assert!(
                scale == 0.0 && err == 0.0,
                "{outputs:?} {f:?}: fd {scale}, err {err}"
            );
            continue;
        }
        println!(
            "{:?} {:?} {outputs:?} {f:?}: max err {err:.3e}, max |grad| {scale:.3e}, rel {:.3e}",
            opts.mode,
            opts.normalize_depth,
            err / scale
        );
        assert!(
            scale > 1e-6,
            "{f:?}: gradient vanishes ({scale}); the check would be vacuous"
        );
        assert!(
            err <= FD_TOL * scale,
            "{:?} {outputs:?} {f:?}: max err {err:e} > {FD_TOL} × {scale:e}",
            opts.mode
        );
    }
}

fn fd_opts(mode: RenderMode, normalize_depth: bool) -> RenderOptions {
    RenderOptions {
        background: [0.3, 0.6, 0.1],
        mode,
        normalize_depth,
        ..Default::default()
    }
}

#[test]
fn fd_all_families_all_outputs_classic() {
    check_all_families(&fd_opts(RenderMode::Classic, true), Outputs::All, 1);
}

#[test]
fn fd_all_families_all_outputs_antialiased() {
    check_all_families(&fd_opts(RenderMode::Antialiased, false), Outputs::All, 2);
}

#[test]
fn fd_all_families_rgb_only() {
    check_all_families(&fd_opts(RenderMode::Classic, false), Outputs::Rgb, 3);
}

#[test]
fn fd_all_families_alpha_only() {
    check_all_families(&fd_opts(RenderMode::Antialiased, false), Outputs::Alpha, 4);
}

#[test]
fn fd_all_families_depth_only() {
    check_all_families(&fd_opts(RenderMode::Classic, false), Outputs::Depth, 5);
    check_all_families(&fd_opts(RenderMode::Classic, true), Outputs::Depth, 6);
}

/// The production f32 path gives the same gradients as the f64 path that
/// the FD checks validate, up to f32 rounding.
#[test]
fn f32_gradients_match_f64() {
    let buf64 = fd_scene(9);
    let buf32: GaussianBuffers<f32> = buf64.cast();
    let buf64 = buf32.cast::<f64>(); // identical values in both
    let cams = fd_cameras();
    for mode in [RenderMode::Classic, RenderMode::Antialiased] {
        let opts = fd_opts(mode, true);
        let w = weights(&cams, Outputs::All, 10);
        let g64 = analytic(&buf64, &cams, &opts, &w);
        let g32 = analytic(&buf32, &cams, &opts, &w);
        for f in FAMILIES {
            let (mut err, mut scale) = (0.0f64, 0.0f64);
            for i in 0..20 {
                for k in 0..family_len(f) {
                    let (a, b) = (grad_of(&g32, f, i, k), grad_of(&g64, f, i, k));
                    err = err.max((a - b).abs());
                    scale = scale.max(b.abs());
                }
            }
            println!("f32 vs f64 {mode:?} {f:?}: rel {:.3e}", err / scale);
            assert!(
                err <= 1e-3 * scale,
                "{mode:?} {f:?}: f32 err {err} vs scale {scale}"
            );
        }
        let (i32_, _) = rasterize_forward(&buf32.params(), &cams, &opts).unwrap();
        let (i64_, _) = rasterize_forward(&buf64.params(), &cams, &opts).unwrap();
        for (a, b) in i32_.iter().zip(&i64_) {
            for (x, y) in a.rgb.iter().zip(&b.rgb) {
                assert!((*x as f64 - y).abs() < 1e-4);
            }
        }
    }
}

fn single_gaussian(colour: [f32; 3], opacity_logit: f32) -> GaussianBuffers<f32> {
    GaussianBuffers {
        means: vec![[0.0; 3]],
        quats: vec![[1.0, 0.0, 0.0, 0.0]],
        log_scales: vec![[0.1f32.ln(); 3]],
        opacity_logits: vec![opacity_logit],
        sh: colour.map(|c| (c - 0.5) / SH_C0).to_vec(),
        sh_degree: 0,
    }
}

#[test]
fn single_gaussian_renders_its_colour_at_the_centre() {
    // Odd size: the principal point (16.5, 16.5) is the centre of pixel 16.
    let cam = Camera::orbit(-15.0, 40.0, 2.5, 49.1, 33, 33);
    let colour = [0.8, 0.3, 0.1];
    let buf = single_gaussian(colour, 12.0); // opacity ≈ 1 → α clamps at 0.99
    for normalize_depth in [false, true] {
        let opts = RenderOptions {
            normalize_depth,
            ..Default::default()
        };
        let img = &render(&buf.params(), &[cam], &opts).unwrap()[0];
        let px = img.pixel(16, 16);
        for c in 0..3 {
            assert!((px[c] - 0.99 * colour[c]).abs() < 1e-5, "{px:?}");
        }
        let p = 16 * 33 + 16;
        assert!((img.alpha[p] - 0.99).abs() < 1e-6);
        let want_depth = if normalize_depth { 2.5 } else { 0.99 * 2.5 };
        assert!((img.depth[p] - want_depth).abs() < 1e-4, "{}", img.depth[p]);
        // Symmetric falloff around the centre pixel.
        let l = img.pixel(14, 16);
        let r = img.pixel(18, 16);
        assert!(l[0] < px[0] && (l[0] - r[0]).abs() < 1e-4);
    }
}

#[test]
fn background_shows_where_nothing_is() {
    let cam = Camera::orbit(-15.0, 0.0, 2.5, 49.1, 64, 48);
    let bg = [0.25, 0.5, 1.0];
    let opts = RenderOptions {
        background: bg,
        ..Default::default()
    };
    let buf = single_gaussian([0.0, 1.0, 0.0], 3.0);
    let img = &render(&buf.params(), &[cam], &opts).unwrap()[0];
    assert_eq!(img.pixel(0, 0), bg);
    assert_eq!(img.pixel(63, 47), bg);
    assert_eq!(img.alpha[0], 0.0);
    assert_ne!(img.pixel(32, 24), bg);
    // No Gaussians at all: background everywhere, empty gradients.
    let empty = GaussianBuffers::<f32> {
        sh_degree: 2,
        ..Default::default()
    };
    let (imgs, state) = rasterize_forward(&empty.params(), &[cam, cam], &opts).unwrap();
    for img in &imgs {
        assert!(img.rgb.chunks(3).all(|p| p == bg));
        assert!(img.alpha.iter().chain(&img.depth).all(|&v| v == 0.0));
    }
    let ones = vec![1.0f32; 3 * cam.num_pixels()];
    let g = ImageGradients {
        rgb: Some(&ones),
        ..Default::default()
    };
    let grads = rasterize_backward(&empty.params(), &[cam, cam], &opts, &state, &[g, g]).unwrap();
    assert!(grads.means.is_empty() && grads.sh.is_empty());
}

/// NaN / zero / infinite values and cameras inside Gaussians give finite
/// images equal to rendering only the valid Gaussians, and finite gradients
/// (zero for the culled ones).
#[test]
fn bad_values_are_culled_and_images_stay_finite() {
    let mut rng = seeded_rng(77);
    let good = fd_scene(8).cast::<f32>();
    let cam = Camera::orbit(-15.0, 20.0, 2.5, 50.0, 48, 40);
    let cam_pos = cam.position();
    let mut buf = good.clone();
    let stride = 48;
    let mut push = |buf: &mut GaussianBuffers<f32>,
                    mean: [f32; 3],
                    quat: [f32; 4],
                    ls: [f32; 3],
                    logit: f32,
                    sh: f32| {
        buf.means.push(mean);
        buf.quats.push(quat);
        buf.log_scales.push(ls);
        buf.opacity_logits.push(logit);
        buf.sh
            .extend((0..stride).map(|_| sh * rng.uniform(0.5, 1.0) as f32));
    };
    let q = [1.0, 0.2, 0.0, 0.0];
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    push(&mut buf, [nan, 0.0, 0.0], q, [-2.0; 3], 1.0, 0.1);
    push(&mut buf, [0.0, inf, 0.0], q, [-2.0; 3], 1.0, 0.1);
    push(&mut buf, [0.1, 0.0, 0.0], [0.0; 4], [-2.0; 3], 1.0, 0.1);
    push(
        &mut buf,
        [0.1, 0.0, 0.0],
        [nan, 1.0, 0.0, 0.0],
        [-2.0; 3],
        1.0,
        0.1,
    );
    push(&mut buf, [0.1, 0.0, 0.0], q, [-2.0; 3], nan, 0.1);
    push(&mut buf, [0.1, 0.0, 0.0], q, [nan, -2.0, -2.0], 1.0, 0.1);
    push(&mut buf, [0.1, 0.0, 0.0], q, [inf, -2.0, -2.0], 1.0, 0.1);
    push(&mut buf, [0.1, 0.0, 0.0], q, [80.0, -2.0, -2.0], 1.0, 0.1); // exp overflows
    push(&mut buf, [0.1, 0.0, 0.0], q, [-2.0; 3], 1.0, nan);
    push(&mut buf, cam_pos, q, [1.0; 3], 3.0, 0.1); // camera inside a big Gaussian
    let behind = [cam_pos[0] * 1.1, cam_pos[1] * 1.1, cam_pos[2] * 1.1];
    push(&mut buf, behind, q, [0.0; 3], 3.0, 0.1);
    let culled = buf.means.len() - good.means.len();
    for mode in [RenderMode::Classic, RenderMode::Antialiased] {
        let opts = RenderOptions {
            mode,
            normalize_depth: true,
            background: [1.0; 3],
            ..Default::default()
        };
        let (imgs, state) = rasterize_forward(&buf.params(), &[cam], &opts).unwrap();
        let reference = render(&good.params(), &[cam], &opts).unwrap();
        assert_eq!(
            imgs, reference,
            "culled Gaussians must not change the image"
        );
        let img = &imgs[0];
        assert!(img
            .rgb
            .iter()
            .chain(&img.alpha)
            .chain(&img.depth)
            .all(|v| v.is_finite()));
        let w: Vec<f32> = (0..3 * cam.num_pixels())
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let wa: Vec<f32> = (0..cam.num_pixels())
            .map(|i| (i % 5) as f32 - 2.0)
            .collect();
        let g = ImageGradients {
            rgb: Some(&w),
            alpha: Some(&wa),
            depth: Some(&wa),
        };
        let grads = rasterize_backward(&buf.params(), &[cam], &opts, &state, &[g]).unwrap();
        let flat: Vec<f32> = grads
            .means
            .iter()
            .flatten()
            .chain(grads.quats.iter().flatten())
            .chain(grads.log_scales.iter().flatten())
            .chain(&grads.opacity_logits)
            .chain(&grads.sh)
            .copied()
            .collect();
        assert!(flat.iter().all(|v| v.is_finite()));
        for i in good.means.len()..buf.means.len() {
            assert_eq!(grads.means[i], [0.0; 3]);
            assert_eq!(grads.opacity_logits[i], 0.0);
            assert_eq!(grads.stats.visible_count[i], 0);
        }
        assert_eq!(culled, 11);
    }
    // A zero-width Gaussian (log-scale −inf) is a valid eps2d-sized dot.
    let mut dot = single_gaussian([1.0, 1.0, 1.0], 5.0);
    dot.log_scales[0] = [f32::NEG_INFINITY; 3];
    let img = &render(
        &dot.params(),
        &[Camera::orbit(0.0, 0.0, 2.0, 50.0, 33, 33)],
        &RenderOptions::default(),
    )
    .unwrap()[0];
    assert!(img.rgb.iter().all(|v| v.is_finite()) && img.pixel(16, 16)[0] > 0.5);
}

#[test]
fn shape_and_camera_errors() {
    let buf = single_gaussian([0.5; 3], 0.0);
    let cam = Camera::orbit(0.0, 0.0, 2.0, 50.0, 16, 16);
    let opts = RenderOptions::default();
    let mut bad = buf.clone();
    bad.opacity_logits.push(0.0);
    assert!(matches!(
        render(&bad.params(), &[cam], &opts),
        Err(RenderError::InvalidParams(_))
    ));
    let mut bad = buf.clone();
    bad.sh.pop();
    assert!(matches!(
        render(&bad.params(), &[cam], &opts),
        Err(RenderError::InvalidParams(_))
    ));
    let mut bad = buf.clone();
    bad.sh_degree = 4;
    assert!(matches!(
        render(&bad.params(), &[cam], &opts),
        Err(RenderError::InvalidParams(_))
    ));
    let mut big = cam;
    big.width = 20000;
    assert!(matches!(
        render(&buf.params(), &[big], &opts),
        Err(RenderError::ResolutionTooLarge(_))
    ));
    let max = Camera::orbit(0.0, 0.0, 2.0, 50.0, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE);
    assert!(matches!(
        render(&buf.params(), &[max, cam], &opts),
        Err(RenderError::ResolutionTooLarge(_))
    ));
    let mut nanc = cam;
    nanc.world_to_camera[0][0] = f32::NAN;
    assert!(matches!(
        render(&buf.params(), &[cam, nanc], &opts),
        Err(RenderError::InvalidCamera { index: 1, .. })
    ));
    let bad_opts = RenderOptions {
        background: [f32::NAN, 0.0, 0.0],
        ..opts
    };
    assert!(matches!(
        render(&buf.params(), &[cam], &bad_opts),
        Err(RenderError::InvalidOptions(_))
    ));
    let bad_opts = RenderOptions {
        eps2d: -1.0,
        ..opts
    };
    assert!(matches!(
        render(&buf.params(), &[cam], &bad_opts),
        Err(RenderError::InvalidOptions(_))
    ));
    let few = RenderOptions {
        max_intersections: 0,
        ..opts
    };
    assert!(matches!(
        render(&buf.params(), &[cam], &few),
        Err(RenderError::TooManyIntersections { .. })
    ));
    // No cameras is fine.
    assert!(render(&buf.params(), &[], &opts).unwrap().is_empty());

    // Backward mismatches.
    let (_, state) = rasterize_forward(&buf.params(), &[cam], &opts).unwrap();
    let g = vec![0.0f32; 3 * 256];
    let ok = ImageGradients {
        rgb: Some(&g),
        ..Default::default()
    };
    assert!(rasterize_backward(&buf.params(), &[cam], &opts, &state, &[ok]).is_ok());
    let err =
        |r: Result<Gradients<f32>, RenderError>| matches!(r, Err(RenderError::GradientShape(_)));
    assert!(err(rasterize_backward(
        &buf.params(),
        &[cam],
        &opts,
        &state,
        &[]
    )));
    assert!(err(rasterize_backward(
        &buf.params(),
        &[cam, cam],
        &opts,
        &state,
        &[ok, ok]
    )));
    let short = ImageGradients {
        alpha: Some(&g[..10]),
        ..Default::default()
    };
    assert!(err(rasterize_backward(
        &buf.params(),
        &[cam],
        &opts,
        &state,
        &[short]
    )));
    let other = RenderOptions {
        normalize_depth: true,
        ..opts
    };
    assert!(err(rasterize_backward(
        &buf.params(),
        &[cam],
        &other,
        &state,
        &[ok]
    )));
    let two = GaussianBuffers {
        means: vec![[0.0; 3]; 2],
        quats: vec![[1.0, 0.0, 0.0, 0.0]; 2],
        log_scales: vec![[0.0; 3]; 2],
        opacity_logits: vec![0.0; 2],
        sh: vec![0.0; 6],
        sh_degree: 0,
    };
    assert!(err(rasterize_backward(
        &two.params(),
        &[cam],
        &opts,
        &state,
        &[ok]
    )));
}

#[test]
fn several_cameras_equal_separate_calls_and_backward_is_deterministic() {
    let buf = fd_scene(12).cast::<f32>();
    let cams = Camera::mvdream_views(-10.0, 15.0, 2.5, 45.0, 40);
    let opts = RenderOptions {
        background: [1.0; 3],
        ..Default::default()
    };
    let (all, state) = rasterize_forward(&buf.params(), &cams, &opts).unwrap();
    for (c, img) in cams.iter().zip(&all) {
        assert_eq!(
            &render(&buf.params(), std::slice::from_ref(c), &opts).unwrap()[0],
            img
        );
    }
    let w32 = weights(&cams, Outputs::All, 5).rgb_f32();
    let grads = rgb_gradients(&w32);
    let a = rasterize_backward(&buf.params(), &cams, &opts, &state, &grads).unwrap();
    let b = rasterize_backward(&buf.params(), &cams, &opts, &state, &grads).unwrap();
    assert_eq!(a, b);
    // Gradients over 4 cameras = sum of per-camera gradients.
    let mut sum = vec![0.0f64; buf.means.len() * 3];
    for (ci, c) in cams.iter().enumerate() {
        let (_, st) = rasterize_forward(&buf.params(), std::slice::from_ref(c), &opts).unwrap();
        let g1 = rasterize_backward(
            &buf.params(),
            std::slice::from_ref(c),
            &opts,
            &st,
            &grads[ci..ci + 1],
        )
        .unwrap();
        for (s, v) in sum.iter_mut().zip(g1.means.iter().flatten()) {
            *s += *v as f64;
        }
    }
    for (s, v) in sum.iter().zip(a.means.iter().flatten()) {
        assert!((s - *v as f64).abs() <= 1e-5 * (1.0 + s.abs()));
    }
}

#[test]
fn densify_stats_are_consistent() {
    let buf = fd_scene(13).cast::<f32>();
    let cams = fd_cameras();
    let opts = RenderOptions::default();
    let (_, state) = rasterize_forward(&buf.params(), &cams, &opts).unwrap();
    let w32 = weights(&cams, Outputs::Rgb, 6).rgb_f32();
    let grads = rgb_gradients(&w32);
    let g = rasterize_backward(&buf.params(), &cams, &opts, &state, &grads).unwrap();
    let s = &g.stats;
    for i in 0..buf.means.len() {
        let visible = (0..2)
            .filter(|&c| state.projected(c)[i].is_visible())
            .count() as u32;
        assert_eq!(s.visible_count[i], visible);
        let rmax = (0..2)
            .map(|c| state.projected(c)[i].radius)
            .fold(0.0f32, f32::max);
        assert_eq!(s.max_radius_px[i], rmax);
        // Triangle inequality: the absgrad norm bounds the plain one.
        assert!(s.mean2d_absgrad_norm[i] >= s.mean2d_grad_norm[i] * (1.0 - 1e-5));
        if visible == 0 {
            assert_eq!(s.mean2d_grad_norm[i], 0.0);
        }
    }
    assert!(s.mean2d_grad_norm.iter().any(|&v| v > 0.0));
}

#[test]
fn active_sh_degree_limits_evaluation() {
    let buf = fd_scene(14).cast::<f32>();
    let cams = fd_cameras();
    let opts = RenderOptions {
        sh_degree: Some(1),
        ..Default::default()
    };
    let mut trimmed = buf.clone();
    for i in 0..20 {
        for k in 12..48 {
            trimmed.sh[i * 48 + k] = 0.0;
        }
    }
    let a = render(&buf.params(), &cams, &opts).unwrap();
    let b = render(&trimmed.params(), &cams, &RenderOptions::default()).unwrap();
    for (x, y) in a.iter().zip(&b) {
        for (p, q) in x.rgb.iter().zip(&y.rgb) {
            assert!((p - q).abs() < 1e-6);
        }
    }
    let (_, st) = rasterize_forward(&buf.params(), &cams, &opts).unwrap();
    let w32 = weights(&cams, Outputs::Rgb, 6).rgb_f32();
    let grads = rgb_gradients(&w32);
    let g = rasterize_backward(&buf.params(), &cams, &opts, &st, &grads).unwrap();
    for i in 0..20 {
        assert!(g.sh[i * 48 + 12..(i + 1) * 48].iter().all(|&v| v == 0.0));
    }
    assert!(g.sh.iter().any(|&v| v != 0.0));
}

#[test]
fn gaussians_round_trip_through_buffers() {
    let mut g = Gaussians::with_capacity(2, 1);
    for i in 0..2 {
        g.means.push([i as f32, 0.0, 0.0]);
        g.log_scales.push([-1.0; 3]);
        g.rotations.push([1.0, 0.0, 0.0, 0.0]);
        g.opacity_logits.push(0.5);
        g.sh_dc.push([i as f32, 10.0, 20.0]);
        g.sh_rest.extend((0..9).map(|k| (100 * i + k) as f32));
    }
    let sh = pack_sh(&g);
    assert_eq!(
        &sh[..12],
        &[0.0, 10.0, 20.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    );
    let p = GaussianParams::from_gaussians(&g, &sh);
    p.validate().unwrap();
    let buf = GaussianBuffers::from(&g);
    assert_eq!(buf.to_gaussians(), g);
}

// ---------------------------------------------------------------------------
// Hamburger timing.

/// Minimal reader for the fixture's exact layout: binary little-endian,
/// 14 float properties `x y z f_dc_0..2 opacity scale_0..2 rot_0..3`.
fn read_hamburger(bytes: &[u8]) -> GaussianBuffers<f32> {
    let marker = b"end_header\n";
    let end = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("header")
        + marker.len();
    let header = std::str::from_utf8(&bytes[..end]).unwrap();
    assert!(header.contains("binary_little_endian"));
    let count: usize = header
        .lines()
        .find_map(|l| l.strip_prefix("element vertex "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let props: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("property float "))
        .collect();
    let want = [
        "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
        "rot_0", "rot_1", "rot_2", "rot_3",
    ];
    assert_eq!(props, want);
    let body = &bytes[end..];
    assert!(body.len() >= count * 56);
    let mut b = GaussianBuffers {
        sh_degree: 0,
        ..Default::default()
    };
    for i in 0..count {
        let f = |k: usize| {
            let o = i * 56 + k * 4;
            f32::from_le_bytes(body[o..o + 4].try_into().unwrap())
        };
        b.means.push([f(0), f(1), f(2)]);
        b.sh.extend([f(3), f(4), f(5)]);
        b.opacity_logits.push(f(6));
        b.log_scales.push([f(7), f(8), f(9)]);
        b.quats.push([f(10), f(11), f(12), f(13)]);
    }
    b
}

/// Recentre on the bounding-box centre and scale the largest side to the
/// validator's 1.5 box (what the normalize module will do).
fn normalize_to_validator_box(b: &mut GaussianBuffers<f32>) {
    let mut lo = [f32::INFINITY; 3];
    let mut hi = [f32::NEG_INFINITY; 3];
    for m in &b.means {
        for k in 0..3 {
            lo[k] = lo[k].min(m[k]);
            hi[k] = hi[k].max(m[k]);
        }
    }
    let extent = (0..3).map(|k| hi[k] - lo[k]).fold(0.0f32, f32::max);
    let s = camera::VALIDATOR_BBOX_SIZE / extent;
    for m in &mut b.means {
        for k in 0..3 {
            m[k] = (m[k] - 0.5 * (lo[k] + hi[k])) * s;
        }
    }
    for l in &mut b.log_scales {
        for v in l.iter_mut() {
            *v += s.ln();
        }
    }
}

#[test]
#[ignore = "timing; run with --release -- --ignored --nocapture"]
fn hamburger_render_time() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/hamburger.ply"
    );
    let Ok(bytes) = std::fs::read(path) else {
        println!("skipped: {path} not found");
        return;
    };
    let mut buf = read_hamburger(&bytes);
    assert_eq!(buf.means.len(), 52_709);
    normalize_to_validator_box(&mut buf);
    let views = Camera::validator_views();
    let opts = RenderOptions {
        background: [1.0; 3],
        ..Default::default()
    };
    let params = buf.params();
    // Warm up the thread pool and caches.
    let _ = render(&params, &views[..1], &opts).unwrap();
    let runs = 5;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let img = render(&params, &views[..1], &opts).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(img[0].rgb.iter().all(|v| v.is_finite()));
    }
    let (imgs, state) = rasterize_forward(&params, &views[..1], &opts).unwrap();
    let covered =
        imgs[0].alpha.iter().filter(|&&a| a > 0.5).count() as f64 / imgs[0].alpha.len() as f64;
    println!(
        "hamburger 518x518, 1 view: best of {runs} = {:.1} ms ({} visible, {} intersections, {:.0}% of pixels covered)",
        best * 1e3,
        state.num_visible(0),
        state.num_intersections(0),
        covered * 100.0
    );
    let t = std::time::Instant::now();
    let all = render(&params, &views, &opts).unwrap();
    println!(
        "hamburger 16 validator views: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let ones: Vec<f32> = vec![1.0; 3 * views[0].num_pixels()];
    let g = ImageGradients {
        rgb: Some(&ones),
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let _ = rasterize_backward(&params, &views[..1], &opts, &state, &[g]).unwrap();
    println!(
        "hamburger backward, 1 view: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(covered > 0.05, "the hamburger should be in view");
    // Write two views for eyeballing.
    if let Ok(dir) = std::env::var("SPLATFORGE_RENDER_DUMP") {
        for (i, img) in all.iter().enumerate().filter(|(i, _)| i % 4 == 0) {
            let mut ppm = format!("P6 {} {} 255\n", img.width, img.height).into_bytes();
            ppm.extend(img.rgb8());
            std::fs::write(format!("{dir}/hamburger_{i:02}.ppm"), ppm).unwrap();
        }
    }
    assert!(best < 1.0, "render took {best} s");
}
