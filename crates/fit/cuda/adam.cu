// Fused Adam over all six parameter groups in one launch (feature `cuda` of
// splatforge-fit). Mirrors crate::adam::adam_update operation for operation
// (PyTorch's arithmetic, f32, no FMA contraction): with the per-group step
// size and bias correction computed on the host in f64 and rounded to f32,
// the update is bitwise the CPU's for the same gradients.
#include <cuda_runtime.h>

#include "api.h"

__global__ void sff_adam_kernel(SffAdamArgs a) {
  const int64_t n = a.n;
  const int64_t w_sh = 3 * (int64_t)a.sh_coeffs;
  const int64_t total = n * (11 + w_sh);
  const float b1 = a.beta1, b2 = a.beta2, eps = a.eps;
  const float one_m_b1 = 1.0f - b1;
  const float one_m_b2 = 1.0f - b2;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < total;
       j += (int64_t)gridDim.x * blockDim.x) {
    float g;
    int grp;
    if (j < 3 * n) {
      g = a.grad_means[j];
      grp = SFF_XYZ;
    } else if (j < 7 * n) {
      g = a.grad_quats[j - 3 * n];
      grp = SFF_ROTATION;
    } else if (j < 10 * n) {
      g = a.grad_scales[j - 7 * n];
      grp = SFF_SCALING;
    } else if (j < 11 * n) {
      g = a.grad_opacity[j - 10 * n];
      grp = SFF_OPACITY;
    } else {
      int64_t local = j - 11 * n;
      g = a.grad_sh[local];
      grp = (local % w_sh) < 3 ? SFF_FDC : SFF_FREST;
    }
    const float step_size = a.group[grp].step_size;
    const float bc2 = a.group[grp].bc2_sqrt;
    float m = a.m[j], v = a.v[j];
    m = b1 * m + one_m_b1 * g;
    v = b2 * v + one_m_b2 * g * g;
    const float denom = sqrtf(v) / bc2 + eps;
    a.m[j] = m;
    a.v[j] = v;
    a.params[j] -= step_size * m / denom;
  }
}

extern "C" int sff_adam(const SffAdamArgs* a, void* stream) {
  const int64_t total = a->n * (11 + 3 * (int64_t)a->sh_coeffs);
  if (total == 0) return 0;
  const int threads = 256;
  int64_t blocks = (total + threads - 1) / threads;
  if (blocks > 65535 * 4) blocks = 65535 * 4;
  sff_adam_kernel<<<(unsigned)blocks, threads, 0, (cudaStream_t)stream>>>(*a);
  return (int)cudaGetLastError();
}

