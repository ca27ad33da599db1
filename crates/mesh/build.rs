//! Builds the TSDF fusion kernel (crates/mesh/cuda/tsdf.cu) when the `cuda`
//! feature is on; see `splatforge-cuda-build`.

fn main() {
    splatforge_cuda_build::build_kernels("splatforge_mesh_cuda", &["tsdf.cu"], &["api.h"]);
}
