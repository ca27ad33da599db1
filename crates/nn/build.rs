//! Builds the fused attention, GroupNorm, deformable im2col and elementwise
//! kernels (crates/nn/cuda/*.cu) when the `cuda` feature is on; see
//! `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels(
        "splatforge_nn_cuda",
        &[
            "attention.cu",
            "deform.cu",
            "elementwise.cu",
            "group_norm.cu",
        ],
        &["api.h", "convert.cuh"],
    );
}
