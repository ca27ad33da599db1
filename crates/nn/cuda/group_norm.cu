// GroupNorm (+ optional SiLU) in three launches (see api.h for the contract):
//   1. partial sums: each block reduces a chunk of one group's elements (a
//      group is contiguous in NCHW), so that large groups (a VAE tile at
//      1024² has 4 M elements per group) still fill the GPU;
//   2. finalise: mean and 1/sqrt(var + eps) per group, combined in f64;
//   3. apply: normalise, scale, shift, SiLU, 16-byte vectors when the
//      spatial size allows it.
// Values are shifted by the group's first element before summing squares, so
// that a large mean does not cancel the variance (the sums are f32 per chunk).
//
// The backward (dx only) recomputes the statistics the same way, then with
// x̂ = (x − μ)·r, z = x̂·γ + β, dz = dy·act'(z) and g = dz·γ:
//   dx = r·(g − mean(g) − x̂·mean(g·x̂))   (means over the group)
// in the same three-launch shape (partial sums of g and g·x̂, finalise, apply).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "api.h"
#include "convert.cuh"

namespace {

constexpr int kThreads = 256;
constexpr long long kChunk = 16384;  // elements per partial-sum block

using sf::from_f32;
using sf::to_f32;

long long num_splits(long long group_size) { return (group_size + kChunk - 1) / kChunk; }

// Sums two per-thread values over the block; thread 0 writes them to out[0..2].
__device__ __forceinline__ void store_block_sums(float a, float b, float* out) {
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  __shared__ float red[2][kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    red[0][warp] = a;
    red[1][warp] = b;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sa = 0.f, sb = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) {
      sa += red[0][w];
      sb += red[1][w];
    }
    out[0] = sa;
    out[1] = sb;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    partial_sums(const T* __restrict__ x, long long group_size, float* __restrict__ partial) {
  const long long ng = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const T* g = x + ng * group_size;
  const float shift = to_f32(g[0]);
  const long long start = split * kChunk;
  const long long end = min(start + kChunk, group_size);
  float s = 0.f, ss = 0.f;
  for (long long i = start + threadIdx.x; i < end; i += kThreads) {
    const float d = to_f32(g[i]) - shift;
    s += d;
    ss += d * d;
  }
  store_block_sums(s, ss, partial + (ng * splits + split) * 2);
}

template <typename T>
__global__ void finalise(const T* __restrict__ x, long long group_size, long long splits, int num_groups,
                         float eps, const float* __restrict__ partial, float* __restrict__ stats) {
  const int ng = blockIdx.x * blockDim.x + threadIdx.x;
  if (ng >= num_groups) return;
  double s = 0.0, ss = 0.0;
  for (long long i = 0; i < splits; ++i) {
    s += partial[(ng * splits + i) * 2];
    ss += partial[(ng * splits + i) * 2 + 1];
  }
  const double n = double(group_size);
  const double mean_shifted = s / n;
  const double var = fmax(ss / n - mean_shifted * mean_shifted, 0.0);
  stats[2 * ng] = float(double(to_f32(x[ng * group_size])) + mean_shifted);
  stats[2 * ng + 1] = float(1.0 / sqrt(var + double(eps)));
}

template <typename T, int Vec, bool Silu>
__global__ void __launch_bounds__(kThreads)
    apply(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ beta,
          const float* __restrict__ stats, T* __restrict__ y, long long total, long long spatial, int channels,
          long long group_size) {
  const long long vecs = total / Vec;
  for (long long v = blockIdx.x * (long long)kThreads + threadIdx.x; v < vecs; v += (long long)gridDim.x * kThreads) {
    const long long i0 = v * Vec;  // the Vec elements share a channel (spatial % Vec == 0)
    const int c = int((i0 / spatial) % channels);
    const long long ng = i0 / group_size;
    const float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
    const float ga = to_f32(gamma[c]) * rstd;
    const float be = to_f32(beta[c]) - mean * ga;
    T in[Vec], out[Vec];
    if constexpr (Vec > 1) {
      *reinterpret_cast<uint4*>(in) = *reinterpret_cast<const uint4*>(x + i0);
    } else {
      in[0] = x[i0];
    }
#pragma unroll
    for (int j = 0; j < Vec; ++j) {
      float t = to_f32(in[j]) * ga + be;
      if (Silu) t = t / (1.f + __expf(-t));
      out[j] = from_f32<T>(t);
    }
    if constexpr (Vec > 1) {
      *reinterpret_cast<uint4*>(y + i0) = *reinterpret_cast<const uint4*>(out);
    } else {
      y[i0] = out[0];
    }
  }
}

// dz·γ and x̂ of one element (see the header comment).
template <bool Silu>
__device__ __forceinline__ void grad_terms(float xv, float dyv, float ga, float be, float mean, float rstd,
                                           float* g, float* xhat) {
  *xhat = (xv - mean) * rstd;
  float dz = dyv;
  if (Silu) {
    const float z = *xhat * ga + be;
    const float sig = 1.f / (1.f + __expf(-z));
    dz *= sig * (1.f + z * (1.f - sig));
  }
  *g = dz * ga;
}

template <typename T, bool Silu>
__global__ void __launch_bounds__(kThreads)
    backward_sums(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ gamma,
                  const T* __restrict__ beta, const float* __restrict__ stats, long long group_size, long long spatial,
                  int channels, float* __restrict__ partial) {
  const long long ng = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const long long base = ng * group_size;
  const float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
  const long long start = split * kChunk;
  const long long end = min(start + kChunk, group_size);
  float s = 0.f, sx = 0.f;
  for (long long i = start + threadIdx.x; i < end; i += kThreads) {
    const int c = int(((base + i) / spatial) % channels);
    float g, xhat;
    grad_terms<Silu>(to_f32(x[base + i]), to_f32(dy[base + i]), to_f32(gamma[c]), to_f32(beta[c]), mean, rstd,
                     &g, &xhat);
    s += g;
    sx += g * xhat;
  }
  store_block_sums(s, sx, partial + (ng * splits + split) * 2);
}

__global__ void backward_means(long long group_size, long long splits, int num_groups, const float* __restrict__ partial,
                               float* __restrict__ means) {
  const int ng = blockIdx.x * blockDim.x + threadIdx.x;
  if (ng >= num_groups) return;
  double s = 0.0, sx = 0.0;
  for (long long i = 0; i < splits; ++i) {
    s += partial[(ng * splits + i) * 2];
    sx += partial[(ng * splits + i) * 2 + 1];
  }
  means[2 * ng] = float(s / double(group_size));
  means[2 * ng + 1] = float(sx / double(group_size));
}

template <typename T, bool Silu>
__global__ void __launch_bounds__(kThreads)
    backward_apply(const T* __restrict__ x, const T* __restrict__ dy, const T* __restrict__ gamma,
                   const T* __restrict__ beta, const float* __restrict__ stats, const float* __restrict__ means,
                   T* __restrict__ dx, long long total, long long spatial, int channels, long long group_size) {
  for (long long i = blockIdx.x * (long long)kThreads + threadIdx.x; i < total; i += (long long)gridDim.x * kThreads) {
    const int c = int((i / spatial) % channels);
    const long long ng = i / group_size;
    const float rstd = stats[2 * ng + 1];
    float g, xhat;
    grad_terms<Silu>(to_f32(x[i]), to_f32(dy[i]), to_f32(gamma[c]), to_f32(beta[c]), stats[2 * ng], rstd, &g,
                     &xhat);
    dx[i] = from_f32<T>(rstd * (g - means[2 * ng] - xhat * means[2 * ng + 1]));
  }
}

template <typename T, bool Silu>
void launch_backward(const SfGroupNormBwdArgs& a, long long group_size, long long splits, float* partial, float* stats,
                     float* means, cudaStream_t s) {
  const long long total = (long long)a.n * a.channels * a.spatial;
  const int num_groups = a.n * a.groups;
  auto x = static_cast<const T*>(a.x);
  auto dy = static_cast<const T*>(a.dy);
  auto g = static_cast<const T*>(a.gamma);
  auto b = static_cast<const T*>(a.beta);
  backward_sums<T, Silu><<<dim3(num_groups, unsigned(splits)), kThreads, 0, s>>>(x, dy, g, b, stats, group_size,
                                                                                a.spatial, a.channels, partial);
  backward_means<<<(num_groups + 127) / 128, 128, 0, s>>>(group_size, splits, num_groups, partial, means);
  const long long blocks = min((total + kThreads - 1) / kThreads, 132LL * 16);
  backward_apply<T, Silu><<<blocks, kThreads, 0, s>>>(x, dy, g, b, stats, means, static_cast<T*>(a.dx), total,
                                                     a.spatial, a.channels, group_size);
}

// Launches the statistics passes (1 and 2 of the header comment): partial
// sums into scratch[0 .. groups·splits·2), then mean and rstd per group into
// the 2·groups floats that follow, which it returns.
template <typename T>
float* launch_stats(const T* x, long long group_size, long long splits, int num_groups, float eps, float* scratch,
                    cudaStream_t s) {
  float* stats = scratch + size_t(num_groups) * splits * 2;
  partial_sums<T><<<dim3(num_groups, unsigned(splits)), kThreads, 0, s>>>(x, group_size, scratch);
  finalise<T><<<(num_groups + 127) / 128, 128, 0, s>>>(x, group_size, splits, num_groups, eps, scratch, stats);
  return stats;
}

// The sizes both entry points accept.
bool valid_shape(int n, int groups, int channels, long long spatial) {
  return n > 0 && groups > 0 && channels % groups == 0 && spatial > 0 && (long long)n * groups <= 0x7fffffffLL;
}

template <typename T>
cudaError_t run_backward(const SfGroupNormBwdArgs& a, cudaStream_t s) {
  const long long group_size = (long long)(a.channels / a.groups) * a.spatial;
  const int num_groups = a.n * a.groups;
  const long long splits = num_splits(group_size);
  if (splits > 65535) return cudaErrorInvalidValue;
  // Scratch: [forward partials | stats | backward partials | backward means].
  float* stats = launch_stats(static_cast<const T*>(a.x), group_size, splits, num_groups, a.eps, a.scratch, s);
  float* partial2 = stats + size_t(num_groups) * 2;
  float* means = partial2 + size_t(num_groups) * splits * 2;
  if (a.silu)
    launch_backward<T, true>(a, group_size, splits, partial2, stats, means, s);
  else
    launch_backward<T, false>(a, group_size, splits, partial2, stats, means, s);
  return cudaGetLastError();
}

template <typename T, int Vec>
void launch_apply(const SfGroupNormArgs& a, const float* stats, long long total, long long group_size,
                  cudaStream_t s) {
  const long long vecs = total / Vec;
  const long long blocks = min((vecs + kThreads - 1) / kThreads, 132LL * 16);
  auto x = static_cast<const T*>(a.x);
  auto g = static_cast<const T*>(a.gamma);
  auto b = static_cast<const T*>(a.beta);
  auto y = static_cast<T*>(a.y);
  if (a.silu)
    apply<T, Vec, true><<<blocks, kThreads, 0, s>>>(x, g, b, stats, y, total, a.spatial, a.channels, group_size);
  else
    apply<T, Vec, false><<<blocks, kThreads, 0, s>>>(x, g, b, stats, y, total, a.spatial, a.channels, group_size);
}

template <typename T>
cudaError_t run(const SfGroupNormArgs& a, cudaStream_t s) {
  const long long group_size = (long long)(a.channels / a.groups) * a.spatial;
  const long long total = (long long)a.n * a.channels * a.spatial;
  const int num_groups = a.n * a.groups;
  const long long splits = num_splits(group_size);
  if (splits > 65535) return cudaErrorInvalidValue;
  const float* stats = launch_stats(static_cast<const T*>(a.x), group_size, splits, num_groups, a.eps, a.scratch, s);
  constexpr int kVec = 16 / sizeof(T);
  const bool aligned = (reinterpret_cast<uintptr_t>(a.x) | reinterpret_cast<uintptr_t>(a.y)) % 16 == 0;
  if (a.spatial % kVec == 0 && aligned)
    launch_apply<T, kVec>(a, stats, total, group_size, s);
  else
    launch_apply<T, 1>(a, stats, total, group_size, s);
  return cudaGetLastError();
}

}  // namespace

extern "C" size_t sf_group_norm_scratch_floats(int n, int groups, long long group_size) {
  return size_t(n) * size_t(groups) * size_t(num_splits(group_size) * 2 + 2);
}

extern "C" int sf_group_norm(const SfGroupNormArgs* a, void* stream) {
  if (!valid_shape(a->n, a->groups, a->channels, a->spatial)) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: return run<float>(*a, s);
    case SF_DTYPE_F16: return run<__half>(*a, s);
    case SF_DTYPE_BF16: return run<__nv_bfloat16>(*a, s);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" int sf_group_norm_backward(const SfGroupNormBwdArgs* a, void* stream) {
  if (!valid_shape(a->n, a->groups, a->channels, a->spatial)) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: return run_backward<float>(*a, s);
    case SF_DTYPE_F16: return run_backward<__half>(*a, s);
    case SF_DTYPE_BF16: return run_backward<__nv_bfloat16>(*a, s);
    default: return cudaErrorInvalidValue;
  }
}
