//! Builds the fused attention, GroupNorm and elementwise kernels (crates/diffusion/cuda/*.cu)
//! when the `cuda` feature is on; see `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels(
        "splatforge_diffusion_cuda",
        &["attention.cu", "elementwise.cu", "group_norm.cu"],
        &["api.h"],
    );
}
