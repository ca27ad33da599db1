//! Posed images: the in-memory [`Views`] the pipeline hands to the fitter,
//! and a loader for nerfstudio / instant-ngp / Blender `transforms.json`.
//!
//! # transforms.json
//! - Intrinsics at the top level and/or per frame (a frame's own value
//!   wins): `fl_x`/`fl_y` (pixels), or `camera_angle_x` (radians, full
//!   horizontal field of view; `fx = w / (2·tan(angle/2))`) and optionally
//!   `camera_angle_y`; `fy` defaults to `fx`; `cx`/`cy` default to the image
//!   centre; `w`/`h` default to the image's size, and when given but
//!   different from the image, the intrinsics are scaled to the image.
//!   Lens distortion (`k1`, `k2`, `k3`, `k4`, `p1`, `p2` non-zero) is refused.
//! - Each frame has `file_path` (relative to the JSON file; `.png` is
//!   appended when the path has no extension and the file does not exist,
//!   as in the Blender synthetic scenes) and `transform_matrix`, a 4×4
//!   camera-to-world matrix in the OpenGL convention (x right, y up, camera
//!   looking down −z), converted with [`Camera::from_camera_to_world_opengl`].
//! - Images: PNG, 8 or 16 bit, grey or RGB, with or without alpha. With
//!   alpha, the view keeps the colour premultiplied by alpha and the alpha
//!   itself, and is composited over the training background on use; without
//!   alpha the image is used as it is (its background should match the
//!   fit's `white_background`).
//!
//! # Train / test split, first rule that applies
//! 1. nerfstudio's top-level `train_filenames` / `val_filenames` /
//!    `test_filenames` lists (`val` and `test` are held out, and so are
//!    frames missing from a given `train_filenames`), or a per-frame
//!    `"split": "train" | "val" | "test"` key (our convention);
//! 2. a file named `transforms_train.json` takes its test views from
//!    `transforms_test.json` beside it (Blender / instant-ngp), if present;
//! 3. [`LoadOptions::test_every`] = `n`: every `n`-th frame (0, n, 2n, …)
//!    is held out (the mip-NeRF 360 convention, n = 8);
//! 4. otherwise every frame trains and there is no test split.
//!
//! A directory is accepted in place of the file: its `transforms.json`, or
//! else its `transforms_train.json`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use splatforge_render::Camera;

use crate::error::{FitError, Result};

/// One posed image.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// For messages (e.g. the image's file name).
    pub name: String,
    /// Its camera; `camera.width × camera.height` is the image size.
    pub camera: Camera,
    /// `[y][x][rgb]` in `[0, 1]`; premultiplied by `alpha` when present.
    pub rgb: Vec<f32>,
    /// `[y][x]` coverage in `[0, 1]`, when the image has alpha.
    pub alpha: Option<Vec<f32>>,
}

impl View {
    /// A view from straight (not premultiplied) RGBA floats, `[y][x][rgba]`.
    pub fn from_rgba(name: impl Into<String>, camera: Camera, rgba: &[f32]) -> Result<View> {
        let n = camera.num_pixels();
        if rgba.len() != 4 * n {
            return Err(FitError::Input(format!(
                "RGBA image has {} values, expected {} for {}x{}",
                rgba.len(),
                4 * n,
                camera.width,
                camera.height
            )));
        }
        let mut rgb = Vec::with_capacity(3 * n);
        let mut alpha = Vec::with_capacity(n);
        for px in rgba.chunks_exact(4) {
            let a = px[3].clamp(0.0, 1.0);
            rgb.extend(px[..3].iter().map(|v| v.clamp(0.0, 1.0) * a));
            alpha.push(a);
        }
        Ok(View {
            name: name.into(),
            camera,
            rgb,
            alpha: Some(alpha),
        })
    }

    /// A view from opaque RGB floats, `[y][x][rgb]`.
    pub fn from_rgb(name: impl Into<String>, camera: Camera, rgb: Vec<f32>) -> Result<View> {
        if rgb.len() != 3 * camera.num_pixels() {
            return Err(FitError::Input(format!(
                "RGB image has {} values, expected {} for {}x{}",
                rgb.len(),
                3 * camera.num_pixels(),
                camera.width,
                camera.height
            )));
        }
        Ok(View {
            name: name.into(),
            camera,
            rgb: rgb.into_iter().map(|v| v.clamp(0.0, 1.0)).collect(),
            alpha: None,
        })
    }

    pub fn width(&self) -> u32 {
        self.camera.width
    }

    pub fn height(&self) -> u32 {
        self.camera.height
    }

    /// The image over `background` (views without alpha: the image itself).
    pub fn composite(&self, background: [f32; 3]) -> Vec<f32> {
        match &self.alpha {
            None => self.rgb.clone(),
            Some(alpha) => self
                .rgb
                .chunks_exact(3)
                .zip(alpha)
                .flat_map(|(c, &a)| {
                    let t = 1.0 - a;
                    [
                        c[0] + t * background[0],
                        c[1] + t * background[1],
                        c[2] + t * background[2],
                    ]
                })
                .collect(),
        }
    }

    /// This view scaled (area average) so that its longest side is at most
    /// `max_side`; intrinsics scale with it. Never upsamples.
    pub fn downscaled(&self, max_side: u32) -> View {
        let (w, h) = (self.width(), self.height());
        let longest = w.max(h);
        if max_side == 0 || longest <= max_side {
            return self.clone();
        }
        let s = max_side as f64 / longest as f64;
        let tw = ((w as f64 * s).round() as u32).max(1);
        let th = ((h as f64 * s).round() as u32).max(1);
        let sx = tw as f32 / w as f32;
        let sy = th as f32 / h as f32;
        let mut camera = self.camera;
        camera.width = tw;
        camera.height = th;
        camera.fx *= sx;
        camera.cx *= sx;
        camera.fy *= sy;
        camera.cy *= sy;
        View {
            name: self.name.clone(),
            camera,
            rgb: resample_area(
                &self.rgb,
                w as usize,
                h as usize,
                3,
                tw as usize,
                th as usize,
            ),
            alpha: self
                .alpha
                .as_ref()
                .map(|a| resample_area(a, w as usize, h as usize, 1, tw as usize, th as usize)),
        }
    }
}

/// Box-filter (area) resampling of an interleaved image to `tw × th`.
pub fn resample_area(src: &[f32], w: usize, h: usize, c: usize, tw: usize, th: usize) -> Vec<f32> {
    // Per target index: (first source index, weights), weights summing to 1.
    let taps = |n: usize, tn: usize| -> Vec<(usize, Vec<f32>)> {
        (0..tn)
            .map(|t| {
                let a = t as f64 * n as f64 / tn as f64;
                let b = (t + 1) as f64 * n as f64 / tn as f64;
                let first = a.floor() as usize;
                let last = ((b.ceil() as usize).min(n)).max(first + 1);
                let ws: Vec<f32> = (first..last)
                    .map(|i| ((b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0) / (b - a)) as f32)
                    .collect();
                (first, ws)
            })
            .collect()
    };
    let tx = taps(w, tw);
    let ty = taps(h, th);
    let mut mid = vec![0.0f32; tw * h * c];
    for y in 0..h {
        for (x, (first, ws)) in tx.iter().enumerate() {
            for (k, wt) in ws.iter().enumerate() {
                let s = (y * w + first + k) * c;
                let d = (y * tw + x) * c;
                for ch in 0..c {
                    mid[d + ch] += wt * src[s + ch];
                }
            }
        }
    }
    let mut out = vec![0.0f32; tw * th * c];
    for (y, (first, ws)) in ty.iter().enumerate() {
        for (k, wt) in ws.iter().enumerate() {
            let row = &mid[(first + k) * tw * c..(first + k + 1) * tw * c];
            let dst = &mut out[y * tw * c..(y + 1) * tw * c];
            for (d, s) in dst.iter_mut().zip(row) {
                *d += wt * s;
            }
        }
    }
    out
}

/// A set of posed images, the fitter's input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Views {
    pub views: Vec<View>,
}

impl Views {
    pub fn new(views: Vec<View>) -> Self {
        Views { views }
    }

    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    pub fn cameras(&self) -> Vec<Camera> {
        self.views.iter().map(|v| v.camera).collect()
    }

    /// 3DGS's `getNerfppNorm` radius: 1.1 × the largest distance of a camera
    /// centre from the centres' mean (at least a small positive number).
    pub fn camera_extent(&self) -> f32 {
        if self.views.is_empty() {
            return 1.0;
        }
        let centres: Vec<[f32; 3]> = self.views.iter().map(|v| v.camera.position()).collect();
        let n = centres.len() as f64;
        let mean: [f64; 3] =
            std::array::from_fn(|a| centres.iter().map(|c| c[a] as f64).sum::<f64>() / n);
        let max = centres
            .iter()
            .map(|c| {
                (0..3)
                    .map(|a| (c[a] as f64 - mean[a]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .fold(0.0, f64::max);
        ((max * 1.1) as f32).max(1e-3)
    }
}

/// A loaded dataset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dataset {
    pub train: Views,
    /// Empty when the dataset has no test split.
    pub test: Views,
    /// The transforms file that was read.
    pub source: PathBuf,
}

/// Options of [`load_transforms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// Hold out every n-th frame when the data has no split of its own.
    pub test_every: Option<usize>,
}

/// One frame of a transforms file, before its image is read.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSpec {
    pub image_path: PathBuf,
    /// Row-major OpenGL camera-to-world.
    pub c2w_opengl: [[f32; 4]; 4],
    pub intrinsics: Intrinsics,
    /// `Some(true)` when the file marks it held out, `Some(false)` when it
    /// marks it for training, `None` when it says nothing.
    pub held_out: Option<bool>,
}

/// Intrinsics as written in the file (each possibly missing).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Intrinsics {
    pub fl_x: Option<f64>,
    pub fl_y: Option<f64>,
    pub cx: Option<f64>,
    pub cy: Option<f64>,
    pub w: Option<f64>,
    pub h: Option<f64>,
    pub camera_angle_x: Option<f64>,
    pub camera_angle_y: Option<f64>,
}

impl Intrinsics {
    /// `(fx, fy, cx, cy)` in pixels for an image of `width × height`.
    pub fn resolve(&self, width: u32, height: u32) -> Result<(f32, f32, f32, f32)> {
        let (iw, ih) = (width as f64, height as f64);
        let w = self.w.unwrap_or(iw);
        let h = self.h.unwrap_or(ih);
        if !(w > 0.0 && h > 0.0) {
            return Err(FitError::Dataset(format!("bad image size w={w} h={h}")));
        }
        let (kx, ky) = (iw / w, ih / h);
        let fx = match (self.fl_x, self.camera_angle_x) {
            (Some(f), _) => f,
            (None, Some(a)) => 0.5 * w / (0.5 * a).tan(),
            (None, None) => match (self.fl_y, self.camera_angle_y) {
                (Some(f), _) => f,
                (None, Some(a)) => 0.5 * h / (0.5 * a).tan(),
                _ => {
                    return Err(FitError::Dataset(
                        "no focal length: need fl_x, fl_y, camera_angle_x or camera_angle_y".into(),
                    ))
                }
            },
        };
        let fy = match (self.fl_y, self.camera_angle_y) {
            (Some(f), _) => f,
            (None, Some(a)) => 0.5 * h / (0.5 * a).tan(),
            _ => fx,
        };
        let cx = self.cx.unwrap_or(0.5 * w);
        let cy = self.cy.unwrap_or(0.5 * h);
        let out = (
            (fx * kx) as f32,
            (fy * ky) as f32,
            (cx * kx) as f32,
            (cy * ky) as f32,
        );
        if !(out.0.is_finite()
            && out.1.is_finite()
            && out.0 > 0.0
            && out.1 > 0.0
            && out.2.is_finite()
            && out.3.is_finite())
        {
            return Err(FitError::Dataset(format!(
                "bad intrinsics fx={fx} fy={fy} cx={cx} cy={cy}"
            )));
        }
        Ok(out)
    }
}

fn num(v: &Value, key: &str, ctx: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| FitError::Dataset(format!("{ctx}: `{key}` must be a number"))),
    }
}

fn intrinsics_of(v: &Value, ctx: &str) -> Result<Intrinsics> {
    for k in ["k1", "k2", "k3", "k4", "p1", "p2"] {
        if let Some(x) = num(v, k, ctx)? {
            if x != 0.0 {
                return Err(FitError::Dataset(format!(
                    "{ctx}: lens distortion ({k} = {x}) is not supported; undistort the images first"
                )));
            }
        }
    }
    Ok(Intrinsics {
        fl_x: num(v, "fl_x", ctx)?,
        fl_y: num(v, "fl_y", ctx)?,
        cx: num(v, "cx", ctx)?,
        cy: num(v, "cy", ctx)?,
        w: num(v, "w", ctx)?,
        h: num(v, "h", ctx)?,
        camera_angle_x: num(v, "camera_angle_x", ctx)?,
        camera_angle_y: num(v, "camera_angle_y", ctx)?,
    })
}

fn merge(top: Intrinsics, frame: Intrinsics) -> Intrinsics {
    Intrinsics {
        fl_x: frame.fl_x.or(top.fl_x),
        fl_y: frame.fl_y.or(top.fl_y),
        cx: frame.cx.or(top.cx),
        cy: frame.cy.or(top.cy),
        w: frame.w.or(top.w),
        h: frame.h.or(top.h),
        camera_angle_x: frame.camera_angle_x.or(top.camera_angle_x),
        camera_angle_y: frame.camera_angle_y.or(top.camera_angle_y),
    }
}

fn resolve_image_path(base: &Path, file_path: &str) -> PathBuf {
    let p = base.join(file_path);
    if p.extension().is_none() && !p.exists() {
        let with_png = PathBuf::from(format!("{}.png", p.display()));
        if with_png.exists() {
            return with_png;
        }
    }
    p
}

/// Parses a transforms file's text. `base` is the directory that frame
/// paths are relative to; `ctx` names the file in errors.
pub fn parse_transforms(text: &str, base: &Path, ctx: &str) -> Result<Vec<FrameSpec>> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| FitError::Dataset(format!("{ctx}: {e}")))?;
    let top = intrinsics_of(&root, ctx)?;
    let frames = root
        .get("frames")
        .and_then(Value::as_array)
        .ok_or_else(|| FitError::Dataset(format!("{ctx}: no `frames` array")))?;
    let list = |key: &str| -> Option<Vec<String>> {
        root.get(key).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.trim_start_matches("./").to_string())
                .collect()
        })
    };
    let train_list = list("train_filenames");
    let mut held_list = list("test_filenames").unwrap_or_default();
    held_list.extend(list("val_filenames").unwrap_or_default());
    let has_lists = train_list.is_some() || !held_list.is_empty();

    let mut out = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let fctx = format!("{ctx}: frame {i}");
        let file_path = f
            .get("file_path")
            .and_then(Value::as_str)
            .ok_or_else(|| FitError::Dataset(format!("{fctx}: no `file_path`")))?;
        let m = f
            .get("transform_matrix")
            .and_then(Value::as_array)
            .ok_or_else(|| FitError::Dataset(format!("{fctx}: no `transform_matrix`")))?;
        let bad_matrix = || {
            FitError::Dataset(format!(
                "{fctx}: `transform_matrix` must be 4x4 (or 3x4) numbers"
            ))
        };
        if m.len() != 4 && m.len() != 3 {
            return Err(bad_matrix());
        }
        let mut c2w = [[0.0f32; 4]; 4];
        c2w[3][3] = 1.0;
        for (r, row) in m.iter().enumerate() {
            let row = row.as_array().ok_or_else(bad_matrix)?;
            if row.len() != 4 {
                return Err(bad_matrix());
            }
            for (c, v) in row.iter().enumerate() {
                c2w[r][c] = v.as_f64().ok_or_else(bad_matrix)? as f32;
            }
        }
        if !c2w.iter().flatten().all(|v| v.is_finite()) {
            return Err(FitError::Dataset(format!(
                "{fctx}: non-finite `transform_matrix`"
            )));
        }
        let rel = file_path.trim_start_matches("./");
        let held_out = if has_lists {
            if held_list.iter().any(|s| s == rel) {
                Some(true)
            } else if train_list
                .as_ref()
                .is_none_or(|t| t.iter().any(|s| s == rel))
            {
                Some(false)
            } else {
                Some(true)
            }
        } else {
            match f.get("split").and_then(Value::as_str) {
                Some("train") => Some(false),
                Some("test") | Some("val") => Some(true),
                Some(other) => {
                    return Err(FitError::Dataset(format!(
                        "{fctx}: unknown split {other:?} (train, val or test)"
                    )))
                }
                None => None,
            }
        };
        out.push(FrameSpec {
            image_path: resolve_image_path(base, file_path),
            c2w_opengl: c2w,
            intrinsics: merge(top, intrinsics_of(f, &fctx)?),
            held_out,
        });
    }
    Ok(out)
}

/// Reads an image file into a view for `spec`.
pub fn load_frame(spec: &FrameSpec) -> Result<View> {
    let path = &spec.image_path;
    let img =
        image::open(path).map_err(|e| FitError::Dataset(format!("{}: {e}", path.display())))?;
    let (w, h) = (img.width(), img.height());
    let (fx, fy, cx, cy) = spec
        .intrinsics
        .resolve(w, h)
        .map_err(|e| FitError::Dataset(format!("{}: {e}", path.display())))?;
    let camera = Camera::from_camera_to_world_opengl(spec.c2w_opengl, fx, fy, cx, cy, w, h);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if img.color().has_alpha() {
        let rgba = img.to_rgba32f();
        View::from_rgba(name, camera, rgba.as_raw())
    } else {
        let rgb = img.to_rgb32f();
        View::from_rgb(name, camera, rgb.into_raw())
    }
}

fn read_frames(path: &Path) -> Result<Vec<FrameSpec>> {
    let text = std::fs::read_to_string(path).map_err(|e| FitError::io(path.display(), e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_transforms(&text, base, &path.display().to_string())
}

fn load_all(specs: &[FrameSpec]) -> Result<Vec<View>> {
    specs.par_iter().map(load_frame).collect()
}

/// Loads a transforms file (or a directory holding one) and its images.
pub fn load_transforms(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let mut path = path.to_path_buf();
    if path.is_dir() {
        let a = path.join("transforms.json");
        let b = path.join("transforms_train.json");
        path = if a.exists() { a } else { b };
    } else if !path.exists() && path.file_name().is_some_and(|n| n == "transforms.json") {
        let b = path.with_file_name("transforms_train.json");
        if b.exists() {
            path = b;
        }
    }
    let frames = read_frames(&path)?;
    if frames.is_empty() {
        return Err(FitError::Dataset(format!("{}: no frames", path.display())));
    }
    let (train_specs, test_specs): (Vec<FrameSpec>, Vec<FrameSpec>) =
        if frames.iter().any(|f| f.held_out.is_some()) {
            frames.into_iter().partition(|f| f.held_out != Some(true))
        } else if path
            .file_name()
            .is_some_and(|n| n == "transforms_train.json")
            && path.with_file_name("transforms_test.json").exists()
        {
            (
                frames,
                read_frames(&path.with_file_name("transforms_test.json"))?,
            )
        } else if let Some(n) = options.test_every.filter(|&n| n > 1) {
            let (test, train): (Vec<_>, Vec<_>) = frames
                .into_iter()
                .enumerate()
                .partition(|(i, _)| i % n == 0);
            (
                train.into_iter().map(|x| x.1).collect(),
                test.into_iter().map(|x| x.1).collect(),
            )
        } else {
            (frames, Vec::new())
        };
    if train_specs.is_empty() {
        return Err(FitError::Dataset(format!(
            "{}: no training frames",
            path.display()
        )));
    }
    Ok(Dataset {
        train: Views::new(load_all(&train_specs)?),
        test: Views::new(load_all(&test_specs)?),
        source: path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C2W: &str = "[[1,0,0,0],[0,1,0,0],[0,0,1,2.5],[0,0,0,1]]";

    fn write_png(path: &Path, w: u32, h: u32, alpha: bool) {
        if alpha {
            let img = image::RgbaImage::from_fn(w, h, |x, y| {
                image::Rgba([
                    x as u8 * 10,
                    y as u8 * 10,
                    200,
                    if x < w / 2 { 255 } else { 0 },
                ])
            });
            img.save(path).unwrap();
        } else {
            let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([x as u8, 0, 255]));
            img.save(path).unwrap();
        }
    }

    #[test]
    fn camera_angle_x_and_opengl_pose() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("r_0.png"), 8, 6, true);
        let json = format!(
            r#"{{"camera_angle_x": 0.6911112070083618, "frames": [{{"file_path": "./r_0", "transform_matrix": {C2W}}}]}}"#
        );
        let p = dir.path().join("transforms.json");
        std::fs::write(&p, json).unwrap();
        let d = load_transforms(&p, &LoadOptions::default()).unwrap();
        assert_eq!(d.train.len(), 1);
        assert!(d.test.is_empty());
        let v = &d.train.views[0];
        let c = v.camera;
        assert_eq!((c.width, c.height), (8, 6));
        let fx = 4.0 / (0.5f64 * 0.6911112070083618).tan();
        assert!((c.fx as f64 - fx).abs() < 1e-4 && c.fy == c.fx);
        assert_eq!((c.cx, c.cy), (4.0, 3.0));
        // OpenGL camera at z = 2.5 looking down −z: the origin is in front,
        // projected to the image centre; world +y is image-up.
        assert!((c.world_to_camera_point([0.0; 3])[2] - 2.5).abs() < 1e-6);
        let p0 = c.project_point([0.0, 0.0, 0.0]).unwrap();
        assert!((p0[0] - 4.0).abs() < 1e-5 && (p0[1] - 3.0).abs() < 1e-5);
        let up = c.project_point([0.0, 0.1, 0.0]).unwrap();
        assert!(up[1] < 3.0);
        let right = c.project_point([0.1, 0.0, 0.0]).unwrap();
        assert!(right[0] > 4.0);
        // Alpha: premultiplied colour and coverage.
        let a = v.alpha.as_ref().unwrap();
        assert_eq!(a[0], 1.0);
        assert_eq!(a[7], 0.0);
        assert_eq!(v.rgb[7 * 3 + 2], 0.0);
        let white = v.composite([1.0; 3]);
        assert_eq!(white[7 * 3], 1.0);
        assert!((white[2] - 200.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn fl_x_intrinsics_size_scaling_and_blender_split() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("imgs")).unwrap();
        for name in ["a", "b", "c"] {
            write_png(&dir.path().join(format!("imgs/{name}.png")), 10, 8, false);
        }
        // Intrinsics written for 20×16; the images are 10×8 → halved.
        let train = format!(
            r#"{{"fl_x": 30, "fl_y": 32, "cx": 9.5, "cy": 8.5, "w": 20, "h": 16, "aabb_scale": 4,
                "frames": [{{"file_path": "imgs/a.png", "transform_matrix": {C2W}}},
                           {{"file_path": "imgs/b.png", "transform_matrix": {C2W}, "fl_x": 40}}]}}"#
        );
        let test = format!(
            r#"{{"fl_x": 30, "w": 20, "h": 16, "frames": [{{"file_path": "imgs/c.png", "transform_matrix": {C2W}}}]}}"#
        );
        std::fs::write(dir.path().join("transforms_train.json"), train).unwrap();
        std::fs::write(dir.path().join("transforms_test.json"), test).unwrap();
        // Directory → transforms_train.json → sibling test split.
        let d = load_transforms(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!((d.train.len(), d.test.len()), (2, 1));
        let c = d.train.views[0].camera;
        assert_eq!((c.fx, c.fy, c.cx, c.cy), (15.0, 16.0, 4.75, 4.25));
        assert_eq!(d.train.views[1].camera.fx, 20.0);
        let t = d.test.views[0].camera;
        assert_eq!((t.fx, t.fy, t.cx, t.cy), (15.0, 15.0, 5.0, 4.0));
        assert!(d.train.views[0].alpha.is_none());
        // `transforms.json` that does not exist falls back to transforms_train.json.
        let d2 =
            load_transforms(&dir.path().join("transforms.json"), &LoadOptions::default()).unwrap();
        assert_eq!(d2.train.len(), 2);
    }

    #[test]
    fn split_conventions() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"file_path": "f{i}.png", "transform_matrix": {C2W}}}"#))
            .collect();
        let base = dir.path();
        let plain = format!(r#"{{"fl_x": 10, "frames": [{}]}}"#, frames.join(","));
        let specs = parse_transforms(&plain, base, "t").unwrap();
        assert!(specs.iter().all(|s| s.held_out.is_none()));
        let lists = format!(
            r#"{{"fl_x": 10, "train_filenames": ["f1.png"], "test_filenames": ["./f2.png"], "frames": [{}]}}"#,
            frames.join(",")
        );
        let specs = parse_transforms(&lists, base, "t").unwrap();
        assert_eq!(specs[1].held_out, Some(false));
        assert_eq!(specs[2].held_out, Some(true));
        assert_eq!(specs[3].held_out, Some(true), "not listed for training");
        let split = r#"{"fl_x": 10, "frames": [{"file_path": "x.png", "split": "test", "transform_matrix": [[1,0,0,0],[0,1,0,0],[0,0,1,0]]}]}"#;
        assert_eq!(
            parse_transforms(split, base, "t").unwrap()[0].held_out,
            Some(true)
        );
        // test_every on a file without a split.
        for i in 0..10 {
            write_png(&base.join(format!("f{i}.png")), 4, 4, true);
        }
        std::fs::write(base.join("transforms.json"), &plain).unwrap();
        let d = load_transforms(
            &base.join("transforms.json"),
            &LoadOptions {
                test_every: Some(4),
            },
        )
        .unwrap();
        assert_eq!((d.train.len(), d.test.len()), (7, 3));
    }

    #[test]
    fn errors_name_the_problem() {
        let base = Path::new(".");
        let e = parse_transforms(r#"{"frames": [{"file_path": "a.png"}]}"#, base, "t.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("transform_matrix") && e.contains("t.json"),
            "{e}"
        );
        let e = parse_transforms(r#"{"k1": 0.1, "frames": []}"#, base, "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("distortion"), "{e}");
        let e = Intrinsics::default()
            .resolve(10, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("focal"), "{e}");
        let e = parse_transforms("not json", base, "t.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.json"), "{e}");
    }

    #[test]
    fn downscale_averages_and_scales_intrinsics() {
        let cam = Camera::orbit(0.0, 0.0, 2.5, 49.1, 8, 8);
        let rgba: Vec<f32> = (0..64)
            .flat_map(|i| [(i % 2) as f32, 0.5, 1.0, 1.0])
            .collect();
        let v = View::from_rgba("x", cam, &rgba).unwrap();
        let s = v.downscaled(4);
        assert_eq!((s.width(), s.height()), (4, 4));
        assert!((s.camera.fx - cam.fx / 2.0).abs() < 1e-5);
        assert_eq!(s.camera.cx, 2.0);
        assert!(s
            .rgb
            .chunks(3)
            .all(|p| (p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6));
        assert_eq!(v.downscaled(16), v);
        // Non-integer factor keeps the mean.
        let img: Vec<f32> = (0..35).map(|i| i as f32).collect();
        let r = resample_area(&img, 7, 5, 1, 3, 2);
        let mean_in = img.iter().sum::<f32>() / 35.0;
        let mean_out = r.iter().sum::<f32>() / 6.0;
        assert!((mean_in - mean_out).abs() < 1e-4);
    }
}
