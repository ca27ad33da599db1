//! Helpers shared by the integration tests of this crate.
// Each test file uses only some of these.
#![allow(dead_code)]

use std::path::Path;

use splatforge_diffusion::{HubConfig, LoadOptions, Tensor};

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
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs a denoising loop (`generate` hands it the progress callback) with a
/// callback that asks to stop, and checks that the loop stopped after its
/// first step with [`DiffusionError::Cancelled`].
pub fn assert_cancels_after_one_step<T: std::fmt::Debug>(
    generate: impl FnOnce(&mut dyn FnMut(usize, usize) -> std::ops::ControlFlow<()>) -> splatforge_diffusion::Result<T>,
) {
    let mut calls = 0;
    let e = generate(&mut |_, _| {
        calls += 1;
        std::ops::ControlFlow::Break(())
    })
    .unwrap_err();
    assert!(matches!(e, splatforge_diffusion::DiffusionError::Cancelled), "{e}");
    assert_eq!(calls, 1);
}
