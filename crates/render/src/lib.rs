//! CPU reference differentiable rasterizer for 3D Gaussian splats, forward
//! and backward, following gsplat's pipeline stage by stage:
//!
//! | stage | module | what |
//! |---|---|---|
//! | 0 | [`camera`] | pinhole cameras, orbit rigs (validator, MVDream) |
//! | 1 | [`project`] (+ [`sh`]) | EWA projection, culling, SH colour |
//! | 2 | [`tiles`] | 16×16 tile binning, per-tile depth sort |
//! | 3 | [`rasterize`] | front-to-back alpha compositing |
//!
//! The entry points are [`rasterize_forward`] and [`rasterize_backward`]
//! ([`cpu`]; the data types are in [`types`], the CUDA kernels behind the
//! `cuda` feature in `cuda`). Everything is generic over the scalar
//! ([`Real`]: `f32` for production, `f64` for gradient checks).
//!
//! # Conventions
//! - Inputs are **pre-activation**, exactly as [`splatforge_splat::Gaussians`]:
//!   world-space means; wxyz quaternions (normalised inside, gradients are for
//!   the raw values); natural-log scales; opacity logits; SH coefficients laid
//!   out `[gaussian][coefficient][channel]`, DC first (see [`pack_sh`]).
//! - Cameras: OpenCV axes, world Y-up, pixel centres at `+0.5` (see [`camera`]).
//! - Images are row-major: `rgb[(y·W + x)·3 + c]`, `alpha[y·W + x]`,
//!   `depth[y·W + x]`. `rgb = Σ wᵢ·rgbᵢ + T·background` is not clamped
//!   (it stays in [0, 1] when colours and background do). `alpha = 1 − T`.
//!   `depth` is the accumulated camera-space depth `Σ wᵢ·zᵢ` in scene units,
//!   or with [`RenderOptions::normalize_depth`] the expected depth
//!   `Σ wᵢ·zᵢ / max(alpha, 1e-10)` (0 where nothing was drawn).
//! - Gradients returned have the shapes of the inputs; each is the gradient
//!   of the scalar loss whose per-pixel gradients were passed in.
//!
//! # Bad input
//! Wrong shapes, unusable cameras, resolutions beyond [`MAX_IMAGE_SIDE`] per
//! side or [`MAX_PIXELS_PER_CALL`] per call, and too many tile intersections
//! are [`RenderError`]s. Bad *values* in individual Gaussians (NaN or infinite
//! means, zero/NaN quaternions, NaN opacity, NaN/`+inf` log-scales, NaN SH)
//! only cull those Gaussians, which then get zero gradient; a Gaussian whose
//! centre is nearer than the camera's `near` plane (e.g. the camera is inside
//! it) is culled for that camera. Images are always finite.

// Index loops mirror the maths in the numeric kernels; negated comparisons
// are deliberate so that NaN takes the rejecting branch.
#![allow(clippy::needless_range_loop, clippy::neg_cmp_op_on_partial_ord)]

pub mod camera;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod project;
pub mod rasterize;
pub mod real;
pub mod sh;
pub mod tiles;
pub mod types;

pub use camera::{Camera, MAX_IMAGE_SIDE};
pub use cpu::{rasterize_backward, rasterize_forward, render, ForwardState};
pub use error::RenderError;
pub use real::Real;
pub use types::{
    pack_sh, split_sh, DensifyStats, GaussianBuffers, GaussianParams, Gradients, ImageGradients,
    RenderMode, RenderOptions, RenderedImage, DEFAULT_MAX_INTERSECTIONS, MAX_PIXELS_PER_CALL,
};

#[cfg(test)]
pub(crate) mod test_util {
    use splatforge_splat::rng::SplitMix64;

    /// The deterministic generator of test case `seed`, the seed spread over
    /// the state (times SplitMix64's increment, xor a constant).
    pub fn seeded_rng(seed: u64) -> SplitMix64 {
        SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
}

#[cfg(test)]
mod tests;
