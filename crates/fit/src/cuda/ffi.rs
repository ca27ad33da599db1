//! `#[repr(C)]` mirrors of `cuda/api.h` and the launchers' declarations.
#![allow(dead_code)]

use std::ffi::{c_int, c_void};

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SffAdamGroup {
    pub step_size: f32,
    pub bc2_sqrt: f32,
}

#[repr(C)]
pub struct SffAdamArgs {
    pub params: u64,
    pub m: u64,
    pub v: u64,
    pub grad_means: u64,
    pub grad_quats: u64,
    pub grad_scales: u64,
    pub grad_opacity: u64,
    pub grad_sh: u64,
    pub n: i64,
    pub sh_coeffs: c_int,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub group: [SffAdamGroup; 6],
}

#[repr(C)]
pub struct SffLossArgs {
    pub render_rgb: u64,
    pub render_alpha: u64,
    pub target_rgb: u64,
    pub target_alpha: u64,
    pub width: c_int,
    pub height: c_int,
    pub lambda_ssim: f32,
    pub alpha_grad: f32,
    pub want_alpha_grad: c_int,
    pub grad_scale: f32,
    pub l1_inv: f32,
    pub ssim_inv: f32,
    pub c1: f32,
    pub c2: f32,
    pub taps: [f32; 11],
    pub grad_rgb: u64,
    pub grad_alpha: u64,
    pub sums: u64,
    pub scratch: u64,
}

#[repr(C)]
pub struct SffAccumArgs {
    pub grad_norm: u64,
    pub visible: u64,
    pub max_radius: u64,
    pub grad_accum: u64,
    pub denom: u64,
    pub max_radii: u64,
    pub n: i64,
    pub scale: f32,
}

#[repr(C)]
pub struct SffResetOpacityArgs {
    pub opacity: u64,
    pub m: u64,
    pub v: u64,
    pub n: i64,
    pub cap: f32,
}

#[repr(C)]
pub struct SffClassifyArgs {
    pub params: u64,
    pub grad_accum: u64,
    pub denom: u64,
    pub max_radii: u64,
    pub n: i64,
    pub sh_coeffs: c_int,
    pub grad_threshold: f32,
    pub size_limit: f32,
    pub min_opacity: f32,
    pub use_screen_size: c_int,
    pub max_screen_size: f32,
    pub max_world: f32,
    pub shrink: f32,
    pub flags: u64,
    pub offsets: u64,
    pub totals: u64,
    pub totals_host: *mut i32,
}

#[repr(C)]
pub struct SffScatterArgs {
    pub params: u64,
    pub m: u64,
    pub v: u64,
    pub flags: u64,
    pub offsets: u64,
    pub normals: u64,
    pub n: i64,
    pub n_new: i64,
    pub sh_coeffs: c_int,
    pub kept_orig: c_int,
    pub kept_clone: c_int,
    pub kept_child: c_int,
    pub splits: c_int,
    pub shrink: f32,
    pub params_new: u64,
    pub m_new: u64,
    pub v_new: u64,
}

extern "C" {
    pub fn sff_adam(a: *const SffAdamArgs, stream: *mut c_void) -> c_int;
    pub fn sff_view_loss(a: *const SffLossArgs, stream: *mut c_void) -> c_int;
    pub fn sff_accumulate_stats(a: *const SffAccumArgs, stream: *mut c_void) -> c_int;
    pub fn sff_reset_opacity(a: *const SffResetOpacityArgs, stream: *mut c_void) -> c_int;
    pub fn sff_densify_classify(a: *const SffClassifyArgs, stream: *mut c_void) -> c_int;
    pub fn sff_densify_scatter(a: *const SffScatterArgs, stream: *mut c_void) -> c_int;
}
