//! Builds the rasterizer's CUDA kernels (crates/render/cuda/*.cu) when the
//! `cuda` feature is on; see `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels(
        "splatforge_cuda",
        &[
            "projection_fwd.cu",
            "projection_bwd.cu",
            "intersect.cu",
            "rasterize_fwd.cu",
            "rasterize_bwd.cu",
        ],
        &["api.h", "common.cuh", "projection.cuh", "sh.cuh"],
    );
}
