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
