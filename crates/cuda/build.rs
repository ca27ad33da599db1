//! Builds the glue's two runtime calls (crates/cuda/cuda/runtime.cu) when the
//! `cuda` feature is on; see `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels("splatforge_cuda_runtime", &["runtime.cu"], &[]);
}
