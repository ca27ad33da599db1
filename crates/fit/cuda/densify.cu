// Densification on the GPU (feature `cuda` of splatforge-fit): statistics
// accumulation, opacity reset, and clone / split / prune as one
// classification + prefix sum + scatter, with the semantics of
// crate::densify::densify_and_prune exactly:
//   - the new rows are ordered as the CPU appends and then retains them:
//     kept originals | kept clones | kept children of pass 0 | of pass 1,
//     each in original row order;
//   - clones and children start with zero Adam moments, kept rows keep
//     theirs (the caller zeroes the new m / v buffers);
//   - the split offsets use normals drawn on the host by the same generator
//     in the same order as the CPU (pass 0 for every split row, then pass 1),
//     so the children are the CPU's;
//   - float expressions mirror densify.rs (exp / sigmoid through a
//     correctly rounded double exp, quat_to_matrix in double).
#include <cuda_runtime.h>
#include <cub/cub.cuh>

#include "api.h"

__device__ __forceinline__ float sff_expf(float x) { return (float)exp((double)x); }

__device__ __forceinline__ float sff_max3(const float* v) { return fmaxf(fmaxf(v[0], v[1]), v[2]); }

__global__ void sff_accum_kernel(SffAccumArgs a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t count = a.visible[i];
    if (count > 0) {
      a.grad_accum[i] += a.grad_norm[i] * a.scale;
      a.denom[i] += (float)count;
      a.max_radii[i] = fmaxf(a.max_radii[i], a.max_radius[i]);
    }
  }
}

extern "C" int sff_accumulate_stats(const SffAccumArgs* a, void* stream) {
  if (a->n == 0) return 0;
  int64_t blocks = (a->n + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  sff_accum_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(*a);
  return (int)cudaGetLastError();
}

__global__ void sff_reset_opacity_kernel(SffResetOpacityArgs a) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < a.n;
       i += (int64_t)gridDim.x * blockDim.x) {
    a.opacity[i] = fminf(a.opacity[i], a.cap);
    a.m[i] = 0.0f;
    a.v[i] = 0.0f;
  }
}

extern "C" int sff_reset_opacity(const SffResetOpacityArgs* a, void* stream) {
  if (a->n == 0) return 0;
  int64_t blocks = (a->n + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  sff_reset_opacity_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(*a);
  return (int)cudaGetLastError();
}

__device__ __forceinline__ bool sff_prune(const SffClassifyArgs& a, float opacity_logit,
                                          float max_scale, float radius) {
  const float sig = 1.0f / (1.0f + sff_expf(-opacity_logit));
  bool prune = sig < a.min_opacity;
  if (a.use_screen_size) prune = prune || radius > a.max_screen_size || max_scale > a.max_world;
  return prune;
}

__global__ void sff_classify_kernel(SffClassifyArgs a) {
  const int64_t n = a.n;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float d = a.denom[i];
    const float g = d > 0.0f ? a.grad_accum[i] / d : 0.0f;
    const float* ls = a.params + 7 * n + 3 * i;
    const float ms = sff_expf(sff_max3(ls));
    const bool hot = g >= a.grad_threshold;
    const bool clone = hot && ms <= a.size_limit;
    const bool split = hot && ms > a.size_limit;
    const float op = a.params[10 * n + i];
    const bool keep_orig = !split && !sff_prune(a, op, ms, a.max_radii[i]);
    const bool keep_clone = clone && !sff_prune(a, op, ms, 0.0f);
    float lc[3];
    for (int k = 0; k < 3; ++k) lc[k] = ls[k] - a.shrink;
    const bool keep_child = split && !sff_prune(a, op, sff_expf(sff_max3(lc)), 0.0f);
    int4 f = make_int4(keep_orig, keep_clone, keep_child, split);
    reinterpret_cast<int4*>(a.flags)[i] = f;
    if (clone) atomicAdd(a.totals + 4, 1);
  }
}

struct SffInt4Sum {
  __device__ __forceinline__ int4 operator()(const int4& x, const int4& y) const {
    return make_int4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  }
};

__global__ void sff_totals_kernel(SffClassifyArgs a) {
  const int4 f = reinterpret_cast<const int4*>(a.flags)[a.n - 1];
  const int4 o = reinterpret_cast<const int4*>(a.offsets)[a.n - 1];
  a.totals[0] = o.x + f.x;
  a.totals[1] = o.y + f.y;
  a.totals[2] = o.z + f.z;
  a.totals[3] = o.w + f.w;
}

extern "C" int sff_densify_classify(const SffClassifyArgs* a, void* stream) {
  cudaStream_t st = (cudaStream_t)stream;
  cudaError_t e = cudaMemsetAsync(a->totals, 0, 8 * sizeof(int32_t), st);
  if (e != cudaSuccess) return (int)e;
  if (a->n > 0) {
    int64_t blocks = (a->n + 255) / 256;
    if (blocks > 65535) blocks = 65535;
    sff_classify_kernel<<<(unsigned)blocks, 256, 0, st>>>(*a);
    if ((e = cudaGetLastError()) != cudaSuccess) return (int)e;
    size_t bytes = 0;
    const int4* in = reinterpret_cast<const int4*>(a->flags);
    int4* out = reinterpret_cast<int4*>(a->offsets);
    e = cub::DeviceScan::ExclusiveScan(nullptr, bytes, in, out, SffInt4Sum(), make_int4(0, 0, 0, 0),
                                       (int)a->n, st);
    if (e != cudaSuccess) return (int)e;
    void* temp = nullptr;
    if ((e = cudaMallocAsync(&temp, bytes, st)) != cudaSuccess) return (int)e;
    e = cub::DeviceScan::ExclusiveScan(temp, bytes, in, out, SffInt4Sum(), make_int4(0, 0, 0, 0),
                                       (int)a->n, st);
    cudaFreeAsync(temp, st);
    if (e != cudaSuccess) return (int)e;
    sff_totals_kernel<<<1, 1, 0, st>>>(*a);
    if ((e = cudaGetLastError()) != cudaSuccess) return (int)e;
  }
  // The densification's one host synchronisation: the new row count.
  e = cudaMemcpyAsync(a->totals_host, a->totals, 8 * sizeof(int32_t), cudaMemcpyDeviceToHost, st);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaStreamSynchronize(st);
}

// Copies row `src` (old layout, n rows) to row `dst` (new layout, nn rows).
__device__ __forceinline__ void sff_copy_row(const float* __restrict__ from, float* __restrict__ to,
                                             int64_t n, int64_t nn, int64_t src, int64_t dst, int w_sh) {
  for (int k = 0; k < 3; ++k) to[3 * dst + k] = from[3 * src + k];
  for (int k = 0; k < 4; ++k) to[3 * nn + 4 * dst + k] = from[3 * n + 4 * src + k];
  for (int k = 0; k < 3; ++k) to[7 * nn + 3 * dst + k] = from[7 * n + 3 * src + k];
  to[10 * nn + dst] = from[10 * n + src];
  const float* s = from + 11 * n + (int64_t)w_sh * src;
  float* t = to + 11 * nn + (int64_t)w_sh * dst;
  for (int k = 0; k < w_sh; ++k) t[k] = s[k];
}

__global__ void sff_scatter_kernel(SffScatterArgs a) {
  const int64_t n = a.n, nn = a.n_new;
  const int w_sh = 3 * a.sh_coeffs;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int4 f = reinterpret_cast<const int4*>(a.flags)[i];
    const int4 o = reinterpret_cast<const int4*>(a.offsets)[i];
    if (f.x) {
      sff_copy_row(a.params, a.params_new, n, nn, i, o.x, w_sh);
      sff_copy_row(a.m, a.m_new, n, nn, i, o.x, w_sh);
      sff_copy_row(a.v, a.v_new, n, nn, i, o.x, w_sh);
    }
    if (f.y) sff_copy_row(a.params, a.params_new, n, nn, i, (int64_t)a.kept_orig + o.y, w_sh);
    if (f.w && f.z) {
      // Child of split rank o.w: mean + R(q)·(s ⊙ ε), log-scales − shrink.
      const float* ls = a.params + 7 * n + 3 * i;
      const float* q = a.params + 3 * n + 4 * i;
      const float* m = a.params + 3 * i;
      float s[3];
      for (int k = 0; k < 3; ++k) s[k] = sff_expf(ls[k]);
      const double qn0 = sqrt((((double)q[0] * (double)q[0] + (double)q[1] * (double)q[1]) +
                               (double)q[2] * (double)q[2]) + (double)q[3] * (double)q[3]);
      const double qn = qn0 > 1e-30 ? qn0 : 1e-30;
      const double r = q[0] / qn, x = q[1] / qn, y = q[2] / qn, z = q[3] / qn;
      float R[3][3];
      R[0][0] = (float)(1.0 - 2.0 * (y * y + z * z));
      R[0][1] = (float)(2.0 * (x * y - r * z));
      R[0][2] = (float)(2.0 * (x * z + r * y));
      R[1][0] = (float)(2.0 * (x * y + r * z));
      R[1][1] = (float)(1.0 - 2.0 * (x * x + z * z));
      R[1][2] = (float)(2.0 * (y * z - r * x));
      R[2][0] = (float)(2.0 * (x * z - r * y));
      R[2][1] = (float)(2.0 * (y * z + r * x));
      R[2][2] = (float)(1.0 - 2.0 * (x * x + y * y));
      for (int p = 0; p < 2; ++p) {
        const int64_t dst = (int64_t)a.kept_orig + a.kept_clone + (int64_t)p * a.kept_child + o.z;
        sff_copy_row(a.params, a.params_new, n, nn, i, dst, w_sh);
        const float* e = a.normals + ((int64_t)p * a.splits + o.w) * 3;
        float local[3];
        for (int k = 0; k < 3; ++k) local[k] = s[k] * e[k];
        for (int k = 0; k < 3; ++k) {
          const float off = ((-0.0f + R[k][0] * local[0]) + R[k][1] * local[1]) + R[k][2] * local[2];
          a.params_new[3 * dst + k] = m[k] + off;
          a.params_new[7 * nn + 3 * dst + k] = ls[k] - a.shrink;
        }
      }
    }
  }
}

extern "C" int sff_densify_scatter(const SffScatterArgs* a, void* stream) {
  if (a->n == 0) return 0;
  int64_t blocks = (a->n + 255) / 256;
  if (blocks > 65535) blocks = 65535;
  sff_scatter_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(*a);
  return (int)cudaGetLastError();
}
