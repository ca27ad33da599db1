// TSDF fusion on the GPU: one thread per voxel sample, the same rule as the
// CPU path (crate::tsdf::fuse_sample), expression for expression: carving
// at alpha < surface_alpha, d = (D - z) / tau, hidden when d < -1, mean of
// the observations, -1 when none, +1 on the grid's outer layer. Compiled
// without FMA contraction (crates/cuda-build), so the projections round as
// the CPU's f32 code does, except where the CPU compiler reorders sums.
#include <cuda_runtime.h>

#include "api.h"

__global__ void tsdf_fuse_kernel(SmFuseArgs a) {
  const long long nx = a.dims[0], ny = a.dims[1], nz = a.dims[2];
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= nx * ny * nz) return;
  const long long i = idx % nx, j = (idx / nx) % ny, k = idx / (nx * ny);
  if (i == 0 || j == 0 || k == 0 || i == nx - 1 || j == ny - 1 || k == nz - 1) {
    a.sdf[idx] = 1.0f;
    return;
  }
  const float p0 = a.origin[0] + a.voxel * (float)i;
  const float p1 = a.origin[1] + a.voxel * (float)j;
  const float p2 = a.origin[2] + a.voxel * (float)k;
  const long long pixels = (long long)a.width * a.height;
  float sum = 0.0f;
  unsigned count = 0;
  for (int v = 0; v < a.num_views; ++v) {
    const SmView c = a.views[v];
    const float z = c.rows[8] * p0 + c.rows[9] * p1 + c.rows[10] * p2 + c.rows[11];
    if (!(z > c.near_plane)) continue;
    const float x = c.rows[0] * p0 + c.rows[1] * p1 + c.rows[2] * p2 + c.rows[3];
    const float y = c.rows[4] * p0 + c.rows[5] * p1 + c.rows[6] * p2 + c.rows[7];
    const float u = c.fx * x / z + c.cx;
    const float w = c.fy * y / z + c.cy;
    if (!(u >= 0.0f && w >= 0.0f)) continue;
    const unsigned px = (unsigned)u, py = (unsigned)w;
    if (px >= (unsigned)a.width || py >= (unsigned)a.height) continue;
    const long long pixel = v * pixels + (long long)py * a.width + px;
    if (a.alpha[pixel] < a.surface_alpha) {
      a.sdf[idx] = 1.0f;
      return;
    }
    const float d = (a.depth[pixel] - z) / a.truncation;
    if (d >= -1.0f) {
      sum += fminf(d, 1.0f);
      count += 1;
    }
  }
  a.sdf[idx] = count == 0 ? -1.0f : sum / (float)count;
}

extern "C" int sm_tsdf_fuse(const SmFuseArgs* args, void* stream) {
  const long long n = (long long)args->dims[0] * args->dims[1] * args->dims[2];
  if (n == 0) return (int)cudaSuccess;
  const int threads = 256;
  const long long blocks = (n + threads - 1) / threads;
  tsdf_fuse_kernel<<<(unsigned)blocks, threads, 0, (cudaStream_t)stream>>>(*args);
  return (int)cudaGetLastError();
}
