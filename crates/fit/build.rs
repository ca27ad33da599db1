//! Builds the fitting backend's CUDA kernels (crates/fit/cuda/*.cu: fused
//! Adam, the L1 + SSIM loss, densification) when the `cuda` feature is on;
//! see `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels(
        "splatforge_fit_cuda",
        &["adam.cu", "loss.cu", "densify.cu"],
        &["api.h"],
    );
}
