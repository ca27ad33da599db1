//! `#[repr(C)]` mirrors of `cuda/api.h` and the launchers' declarations.
#![allow(dead_code)]

use std::ffi::{c_int, c_void};

pub const SF_VARIANT_PPT2: c_int = 1;
pub const SF_VARIANT_FAST_EXP: c_int = 2;
pub const SF_VARIANT_FULL_SORT: c_int = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SfCamera {
    pub rot: [f32; 9],
    pub trans: [f32; 3],
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
    pub width: f32,
    pub height: f32,
    pub near_plane: f32,
    pub far_plane: f32,
    pub position: [f32; 3],
    pub lim_x_neg: f32,
    pub lim_x_pos: f32,
    pub lim_y_neg: f32,
    pub lim_y_pos: f32,
    pub pad: f32,
}

impl SfCamera {
    /// Number of f32 in the struct, which holds f32 only.
    pub const FLOATS: usize = 28;

    /// The fields in declaration (= memory) order, as the kernels read them.
    pub fn to_floats(self) -> [f32; Self::FLOATS] {
        let scalars = [
            self.fx,
            self.fy,
            self.cx,
            self.cy,
            self.width,
            self.height,
            self.near_plane,
            self.far_plane,
        ];
        let limits = [
            self.lim_x_neg,
            self.lim_x_pos,
            self.lim_y_neg,
            self.lim_y_pos,
            self.pad,
        ];
        let mut out = [0.0; Self::FLOATS];
        let fields = self
            .rot
            .iter()
            .chain(&self.trans)
            .chain(&scalars)
            .chain(&self.position)
            .chain(&limits);
        for (o, v) in out.iter_mut().zip(fields) {
            *o = *v;
        }
        out
    }
}

const _: () = assert!(std::mem::size_of::<SfCamera>() == SfCamera::FLOATS * 4);

#[repr(C)]
pub struct SfProjectArgs {
    pub means: u64,
    pub quats: u64,
    pub log_scales: u64,
    pub opacity_logits: u64,
    pub sh: u64,
    pub cams: u64,
    pub num_cams: c_int,
    pub num_gauss: c_int,
    pub sh_coeffs: c_int,
    pub sh_degree: c_int,
    pub antialiased: c_int,
    pub eps2d: f32,
    pub radius_clip: f32,
    pub width: c_int,
    pub height: c_int,
    pub tiles_x: c_int,
    pub tiles_y: c_int,
    pub splats: u64,
    pub tile_counts: u64,
    pub depth_keys: u64,
    pub depth_ids: u64,
}

#[repr(C)]
pub struct SfScanArgs {
    pub counts: u64,
    pub offsets: u64,
    pub totals: u64,
    pub temp: u64,
    pub temp_bytes: usize,
    pub num_cams: c_int,
    pub num_gauss: c_int,
    pub presort: c_int,
    pub cam_bits: c_int,
    pub dkeys: [u64; 2],
    pub dvals: [u64; 2],
    pub out_selector: *mut c_int,
}

#[repr(C)]
pub struct SfIsectArgs {
    pub splats: u64,
    pub offsets: u64,
    pub order: u64,
    pub num_cams: c_int,
    pub num_gauss: c_int,
    pub tiles_x: c_int,
    pub tiles_y: c_int,
    pub num_isect: u64,
    pub key_bits: c_int,
    pub keys: [u64; 2],
    pub vals: [u64; 2],
    pub temp: u64,
    pub temp_bytes: usize,
    pub tile_start: u64,
    pub out_selector: *mut c_int,
}

#[repr(C)]
pub struct SfRasterFwdArgs {
    pub splats: u64,
    pub sorted_ids: u64,
    pub tile_start: u64,
    pub num_cams: c_int,
    pub width: c_int,
    pub height: c_int,
    pub tiles_x: c_int,
    pub tiles_y: c_int,
    pub bg: [f32; 3],
    pub normalize_depth: c_int,
    pub rgb: u64,
    pub alpha: u64,
    pub depth: u64,
    pub t_final: u64,
    pub last: u64,
    pub raw_depth: u64,
    pub variant: c_int,
}

#[repr(C)]
pub struct SfRasterBwdArgs {
    pub splats: u64,
    pub sorted_ids: u64,
    pub tile_start: u64,
    pub num_cams: c_int,
    pub width: c_int,
    pub height: c_int,
    pub tiles_x: c_int,
    pub tiles_y: c_int,
    pub bg: [f32; 3],
    pub normalize_depth: c_int,
    pub t_final: u64,
    pub last: u64,
    pub raw_depth: u64,
    pub g_rgb: u64,
    pub g_alpha: u64,
    pub g_depth: u64,
    pub screen_grads: u64,
    pub screen_grads_len: u64,
    pub variant: c_int,
}

#[repr(C)]
pub struct SfProjectBwdArgs {
    pub means: u64,
    pub quats: u64,
    pub log_scales: u64,
    pub opacity_logits: u64,
    pub sh: u64,
    pub cams: u64,
    pub num_cams: c_int,
    pub num_gauss: c_int,
    pub sh_coeffs: c_int,
    pub sh_degree: c_int,
    pub antialiased: c_int,
    pub eps2d: f32,
    pub splats: u64,
    pub screen_grads: u64,
    pub v_means: u64,
    pub v_quats: u64,
    pub v_log_scales: u64,
    pub v_opacity_logits: u64,
    pub v_sh: u64,
    pub grad_norm: u64,
    pub absgrad_norm: u64,
    pub visible_count: u64,
    pub max_radius: u64,
}

extern "C" {
    pub fn sf_project_fwd(a: *const SfProjectArgs, stream: *mut c_void) -> c_int;
    pub fn sf_scan_temp_bytes(n: i64, presort: c_int, cam_bits: c_int) -> usize;
    pub fn sf_scan_counts(a: *const SfScanArgs, stream: *mut c_void) -> c_int;
    pub fn sf_read_totals(
        totals_dev: u64,
        totals_host: *mut u64,
        num_cams: c_int,
        stream: *mut c_void,
    ) -> c_int;
    pub fn sf_sort_temp_bytes(n: u64, key_bits: c_int, presort: c_int) -> usize;
    pub fn sf_intersect(a: *const SfIsectArgs, stream: *mut c_void) -> c_int;
    pub fn sf_rasterize_fwd(a: *const SfRasterFwdArgs, stream: *mut c_void) -> c_int;
    pub fn sf_rasterize_bwd(a: *const SfRasterBwdArgs, stream: *mut c_void) -> c_int;
    pub fn sf_project_bwd(a: *const SfProjectBwdArgs, stream: *mut c_void) -> c_int;
}
