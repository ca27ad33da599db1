//! Helpers shared by the integration tests of this crate.
// Each test file uses only some of these.
#![allow(dead_code)]

use std::path::Path;

use splatforge_diffusion::{DType, HubConfig, LoadOptions, Tensor};

/// Load options that never reach the network: an empty, offline hub cache.
pub fn offline(dir: &Path) -> LoadOptions {
    LoadOptions {
        hub: HubConfig {
            cache_dir: dir.join("no-hub"),
            offline: true,
        },
        ..Default::default()
    }
}

/// Largest absolute difference between two f32 tensors of one shape.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_value(&(a - b).unwrap())
}

/// Largest absolute value of an f32 tensor.
pub fn max_abs_value(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The values of a tensor of any float dtype, flattened, as f32.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Whether every value of a tensor of any float dtype is finite.
pub fn all_finite(t: &Tensor) -> bool {
    f32s(t).iter().all(|v| v.is_finite())
}

/// Checks that `img` has shape `dims`, values in [0, 1] and, as a sign that
/// it is not a constant image, a range of more than `min_range`.
pub fn check_image(img: &Tensor, dims: &[usize], min_range: f32) {
    assert_eq!(img.dims(), dims);
    let v = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)));
    let (lo, hi) = v
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(hi - lo > min_range, "constant image {lo}..{hi}");
}

/// Copies the folder `from` with everything in it to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Runs a denoising loop (`generate` hands it the progress callback) with a
/// callback that asks to stop, and checks that the loop stopped after its
/// first step with [`DiffusionError::Cancelled`].
pub fn assert_cancels_after_one_step<T: std::fmt::Debug>(
    generate: impl FnOnce(
        &mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>,
    ) -> splatforge_diffusion::Result<T>,
) {
    let mut calls = 0;
    let e = generate(&mut |_, _| {
        calls += 1;
        std::ops::ControlFlow::Break(())
    })
    .unwrap_err();
    assert!(
        matches!(e, splatforge_diffusion::DiffusionError::Cancelled),
        "{e}"
    );
    assert_eq!(calls, 1);
}
