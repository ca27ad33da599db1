// Memory-bound helpers around the convolutions and matrix products (see
// api.h): the per-channel bias of a cuDNN convolution, added in place to its
// output; the 2× nearest-neighbour upsampling of the VAE decoder and the
// UNet; the epilogue of a linear layer (bias, GELU, gated residual) in one
// pass; the per-head RMSNorm of queries and keys (FLUX's with its rotary
// embedding, TRELLIS' with a scale per head); the LayerNorm + adaLN
// modulation of TRELLIS' DiT blocks; and the LayerNorm over channels of its
// structure decoder (+ SiLU), read in place of the permuted copies. candle's broadcast kernels index every
// element through the full shape and strides and round after every op; these
// take one pass at close to memory bandwidth (the conv bias measured 3×, the
// linear bias 10× faster).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "api.h"
#include "convert.cuh"

namespace {

using sf::from_f32;
using sf::to_f32;

// blockIdx.y = plane (n·C + c); x-threads stride over the plane's elements,
// 16 bytes at a time when the plane allows it.
template <typename T>
__global__ void channel_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int channels, long long plane) {
  const long long p = blockIdx.y;
  const float b = to_f32(bias[p % channels]);
  T* row = y + p * plane;
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = plane % kVec == 0;  // planes start 16-byte aligned then (the buffer is)
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec) {
    for (long long i = first; i < plane / kVec; i += stride) {
      uint4 raw = reinterpret_cast<uint4*>(row)[i];
      T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] = from_f32<T>(to_f32(v[e]) + b);
      reinterpret_cast<uint4*>(row)[i] = raw;
    }
  } else {
    for (long long i = first; i < plane; i += stride) row[i] = from_f32<T>(to_f32(row[i]) + b);
  }
}

// One thread per input element: writes its 2×2 output block as two
// pair-sized stores. E is an unsigned type of the element's size (values are
// only copied), P one of twice that size.
template <typename E, typename P>
__global__ void upsample2x_kernel(const E* __restrict__ x, E* __restrict__ y, long long planes, int h, int w) {
  const long long total = planes * h * w;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int col = static_cast<int>(i % w);
    const long long pr = i / w;  // plane · h + row
    const E v = x[i];
    P pair;
    reinterpret_cast<E*>(&pair)[0] = v;
    reinterpret_cast<E*>(&pair)[1] = v;
    // Output rows 2·row and 2·row + 1 of the plane (2w wide); 2·col is even,
    // so the pair is aligned.
    P* top = reinterpret_cast<P*>(y + pr * 4LL * w + 2 * col);
    top[0] = pair;
    top[w] = pair;
  }
}

// out = r + g ⊙ act(y + bias + extra) over rows × cols (row-major), each
// term optional: bias [cols], extra and r [rows, cols], g [rows / rows_per_gate,
// cols]. In f32, rounded once; `out` may alias `y`.
template <typename T>
__global__ void linear_epilogue_kernel(const T* __restrict__ y, T* out, const T* __restrict__ bias,
                                       const T* __restrict__ extra, const T* __restrict__ gate,
                                       const T* __restrict__ residual, long long rows, int cols,
                                       long long rows_per_gate, int gelu) {
  const long long total = rows * cols;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int col = static_cast<int>(i % cols);
    float v = to_f32(y[i]);
    if (bias) v += to_f32(bias[col]);
    if (extra) v += to_f32(extra[i]);
    if (gelu) {
      // GELU, tanh approximation (torch's approximate="tanh", candle's gelu).
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      v = 0.5f * v * (1.f + tanhf(u));
    }
    if (gate) v *= to_f32(gate[(i / cols) / rows_per_gate * cols + col]);
    if (residual) v += to_f32(residual[i]);
    out[i] = from_f32<T>(v);
  }
}

// One warp per (token, head) row of D elements: the head's bias added (when
// given), RMSNorm over the row (f32 sum of squares, f32 scale[D] or, per
// head, scale[heads·D]), then, when cos_t is given, the interleaved rotation
// of each pair (x[2j], x[2j+1]) by the token's angle j: (a·cos − b·sin,
// a·sin + b·cos). Lanes own pairs lane, lane + 32, …; kPairs bounds the pairs
// per lane.
template <typename T, int kPairs>
__global__ void rms_norm_rope_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                     const float* __restrict__ scale, const T* __restrict__ cos_t,
                                     const T* __restrict__ sin_t, T* __restrict__ out, long long rows, int heads, int d,
                                     int scale_per_head, float eps) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const long long token = row / heads;
  const int head = static_cast<int>(row % heads);
  const int pairs = d / 2;
  const T* xr = x + row * d;
  const T* br = bias ? bias + head * d : nullptr;  // this head's bias
  const float* sr = scale_per_head ? scale + head * d : scale;
  float a[kPairs], b[kPairs];
  float sumsq = 0.f;
#pragma unroll
  for (int i = 0; i < kPairs; ++i) {
    const int p = lane + 32 * i;
    a[i] = b[i] = 0.f;
    if (p < pairs) {
      a[i] = to_f32(xr[2 * p]) + (br ? to_f32(br[2 * p]) : 0.f);
      b[i] = to_f32(xr[2 * p + 1]) + (br ? to_f32(br[2 * p + 1]) : 0.f);
      sumsq += a[i] * a[i] + b[i] * b[i];
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sumsq += __shfl_xor_sync(0xffffffffu, sumsq, off);
  const float rstd = rsqrtf(sumsq / d + eps);
  T* orow = out + row * d;
#pragma unroll
  for (int i = 0; i < kPairs; ++i) {
    const int p = lane + 32 * i;
    if (p < pairs) {
      const float na = a[i] * rstd * sr[2 * p];
      const float nb = b[i] * rstd * sr[2 * p + 1];
      if (cos_t) {
        const float c = to_f32(cos_t[token * pairs + p]), s = to_f32(sin_t[token * pairs + p]);
        orow[2 * p] = from_f32<T>(na * c - nb * s);
        orow[2 * p + 1] = from_f32<T>(na * s + nb * c);
      } else {
        orow[2 * p] = from_f32<T>(na);
        orow[2 * p + 1] = from_f32<T>(nb);
      }
    }
  }
}

// One warp per row; lane l owns columns l, l + 32, … (kPer of them, coalesced loads). Two
// passes over the registers: the mean, then the centred sum of squares (no cancellation).
template <typename T, int kPer>
__global__ void layer_norm_modulate_kernel(const T* __restrict__ x, const float* __restrict__ weight,
                                           const float* __restrict__ bias, const T* __restrict__ shift,
                                           const T* __restrict__ scale, T* __restrict__ out, long long rows,
                                           int c, long long rows_per_item, float eps) {
  const int lane = threadIdx.x & 31;
  const long long row = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const T* xr = x + row * c;
  float v[kPer];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int col = lane + 32 * i;
    v[i] = col < c ? to_f32(xr[col]) : 0.f;
    sum += v[i];
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const float mean = sum / c;
  float sq = 0.f;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int col = lane + 32 * i;
    if (col < c) {
      const float d = v[i] - mean;
      sq += d * d;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, off);
  const float rstd = rsqrtf(sq / c + eps);
  const long long item = row / rows_per_item;
  const T* sh = shift ? shift + item * c : nullptr;
  const T* sc = scale ? scale + item * c : nullptr;
  T* orow = out + row * c;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int col = lane + 32 * i;
    if (col < c) {
      float y = (v[i] - mean) * rstd * weight[col] + bias[col];
      if (sc) y = y * (1.f + to_f32(sc[col])) + to_f32(sh[col]);
      orow[col] = from_f32<T>(y);
    }
  }
}

unsigned grid_for(long long work, int threads) {
  const long long blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

extern "C" int sf_channel_bias(const SfChannelBiasArgs* a, void* stream) {
  if (a->planes <= 0 || a->channels <= 0 || a->plane <= 0 || a->planes > 2147483647LL) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  constexpr int kThreads = 256;
  // Enough x-blocks to cover a plane in 16-byte vectors, at most 64 per plane
  // (many planes already fill the GPU).
  const long long per_plane = (a->plane + 7) / 8;
  unsigned bx = grid_for(per_plane, kThreads);
  if (bx > 64) bx = 64;
  const dim3 grid(bx, static_cast<unsigned>(a->planes));
  if (grid.y > 65535) return cudaErrorInvalidValue;
  switch (a->dtype) {
    case SF_DTYPE_F32:
      channel_bias_kernel<float><<<grid, kThreads, 0, s>>>(static_cast<float*>(a->y), static_cast<const float*>(a->bias),
                                                           a->channels, a->plane);
      break;
    case SF_DTYPE_F16:
      channel_bias_kernel<__half><<<grid, kThreads, 0, s>>>(static_cast<__half*>(a->y), static_cast<const __half*>(a->bias),
                                                            a->channels, a->plane);
      break;
    case SF_DTYPE_BF16:
      channel_bias_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(
          static_cast<__nv_bfloat16*>(a->y), static_cast<const __nv_bfloat16*>(a->bias), a->channels, a->plane);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" int sf_upsample_nearest2x(const SfUpsampleArgs* a, void* stream) {
  if (a->planes <= 0 || a->h <= 0 || a->w <= 0) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  constexpr int kThreads = 256;
  unsigned blocks = grid_for(a->planes * a->h * a->w, kThreads);
  if (blocks > 8192) blocks = 8192;  // grid-stride loop beyond
  switch (a->dtype) {
    case SF_DTYPE_F32:
      upsample2x_kernel<uint32_t, uint2><<<blocks, kThreads, 0, s>>>(static_cast<const uint32_t*>(a->x), static_cast<uint32_t*>(a->y),
                                                              a->planes, a->h, a->w);
      break;
    case SF_DTYPE_F16:
    case SF_DTYPE_BF16:
      upsample2x_kernel<uint16_t, uint32_t><<<blocks, kThreads, 0, s>>>(static_cast<const uint16_t*>(a->x), static_cast<uint16_t*>(a->y),
                                                              a->planes, a->h, a->w);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace {
template <typename T>
void launch_epilogue(const SfLinearEpilogueArgs* a, unsigned blocks, cudaStream_t s) {
  linear_epilogue_kernel<T><<<blocks, 256, 0, s>>>(
      static_cast<const T*>(a->y), static_cast<T*>(a->out), static_cast<const T*>(a->bias),
      static_cast<const T*>(a->extra), static_cast<const T*>(a->gate), static_cast<const T*>(a->residual), a->rows,
      a->cols, a->rows_per_gate, a->gelu);
}
}  // namespace

extern "C" int sf_linear_epilogue(const SfLinearEpilogueArgs* a, void* stream) {
  if (a->rows <= 0 || a->cols <= 0 || (a->gate && a->rows_per_gate <= 0)) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  unsigned blocks = grid_for(a->rows * a->cols, 256);
  if (blocks > 16384) blocks = 16384;  // grid-stride loop beyond
  switch (a->dtype) {
    case SF_DTYPE_F32: launch_epilogue<float>(a, blocks, s); break;
    case SF_DTYPE_F16: launch_epilogue<__half>(a, blocks, s); break;
    case SF_DTYPE_BF16: launch_epilogue<__nv_bfloat16>(a, blocks, s); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace {
template <typename T>
void launch_rms_norm_rope(const SfRmsNormRopeArgs* a, cudaStream_t s) {
  constexpr int kWarps = 8;
  const long long rows = a->tokens * a->heads;
  const unsigned blocks = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  rms_norm_rope_kernel<T, 4><<<blocks, kWarps * 32, 0, s>>>(
      static_cast<const T*>(a->x), static_cast<const T*>(a->bias), a->scale, static_cast<const T*>(a->cos),
      static_cast<const T*>(a->sin), static_cast<T*>(a->out), rows, a->heads, a->head_dim, a->scale_per_head, a->eps);
}
}  // namespace

extern "C" int sf_rms_norm_rope(const SfRmsNormRopeArgs* a, void* stream) {
  // Up to 4 pairs per lane: head dims up to 256.
  if (a->tokens <= 0 || a->heads <= 0 || a->head_dim <= 0 || a->head_dim % 2 || a->head_dim > 256 || !a->scale ||
      (!a->cos) != (!a->sin))
    return cudaErrorInvalidValue;
  if ((a->tokens * a->heads + 7) / 8 > 2147483647LL) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: launch_rms_norm_rope<float>(a, s); break;
    case SF_DTYPE_F16: launch_rms_norm_rope<__half>(a, s); break;
    case SF_DTYPE_BF16: launch_rms_norm_rope<__nv_bfloat16>(a, s); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace {
template <typename T, int kPer>
void launch_layer_norm_modulate(const SfLayerNormModulateArgs* a, cudaStream_t s) {
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>((a->rows + kWarps - 1) / kWarps);
  layer_norm_modulate_kernel<T, kPer><<<blocks, kWarps * 32, 0, s>>>(
      static_cast<const T*>(a->x), a->weight, a->bias, static_cast<const T*>(a->shift),
      static_cast<const T*>(a->scale), static_cast<T*>(a->out), a->rows, a->channels, a->rows_per_item, a->eps);
}

template <typename T>
void launch_layer_norm_modulate_for(const SfLayerNormModulateArgs* a, cudaStream_t s) {
  if (a->channels <= 512) launch_layer_norm_modulate<T, 16>(a, s);
  else if (a->channels <= 1024) launch_layer_norm_modulate<T, 32>(a, s);
  else launch_layer_norm_modulate<T, 64>(a, s);
}
}  // namespace

extern "C" int sf_layer_norm_modulate(const SfLayerNormModulateArgs* a, void* stream) {
  if (a->rows <= 0 || a->channels <= 0 || a->channels > 2048 || a->rows_per_item <= 0 ||
      a->rows % a->rows_per_item != 0 || !a->weight || !a->bias || (!a->shift) != (!a->scale))
    return cudaErrorInvalidValue;
  if ((a->rows + 7) / 8 > 2147483647LL) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: launch_layer_norm_modulate_for<float>(a, s); break;
    case SF_DTYPE_F16: launch_layer_norm_modulate_for<__half>(a, s); break;
    case SF_DTYPE_BF16: launch_layer_norm_modulate_for<__nv_bfloat16>(a, s); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

namespace {
// Blocks of kPositions × kLanes threads: each position's channels are split
// over kLanes threads (in different warps, reduced through shared memory);
// a warp's 32 threads take 32 consecutive positions, so each channel's loads
// and stores coalesce. Two passes for the statistics (mean, then the centred
// sum of squares), a third writes.
constexpr int kPositions = 32;
constexpr int kLanes = 8;

template <typename T>
__global__ void channel_layer_norm_kernel(const T* __restrict__ x, const float* __restrict__ weight,
                                          const float* __restrict__ bias, T* __restrict__ out, int n, int c,
                                          long long spatial, float eps, int silu) {
  __shared__ float red[kLanes][kPositions];
  const int pos_in_block = threadIdx.x % kPositions;
  const int lane = threadIdx.x / kPositions;
  const long long pos = static_cast<long long>(blockIdx.x) * kPositions + pos_in_block;
  const bool live = pos < static_cast<long long>(n) * spatial;
  const long long item = live ? pos / spatial : 0;
  const long long s = live ? pos % spatial : 0;
  const T* xp = x + item * c * spatial + s;
  T* op = out + item * c * spatial + s;
  float sum = 0.f;
  if (live)
    for (int ch = lane; ch < c; ch += kLanes) sum += to_f32(xp[ch * spatial]);
  red[lane][pos_in_block] = sum;
  __syncthreads();
  float mean = 0.f;
#pragma unroll
  for (int l = 0; l < kLanes; ++l) mean += red[l][pos_in_block];
  mean /= c;
  __syncthreads();
  float sq = 0.f;
  if (live)
    for (int ch = lane; ch < c; ch += kLanes) {
      const float d = to_f32(xp[ch * spatial]) - mean;
      sq += d * d;
    }
  red[lane][pos_in_block] = sq;
  __syncthreads();
  float var = 0.f;
#pragma unroll
  for (int l = 0; l < kLanes; ++l) var += red[l][pos_in_block];
  const float rstd = rsqrtf(var / c + eps);
  if (!live) return;
  for (int ch = lane; ch < c; ch += kLanes) {
    float y = (to_f32(xp[ch * spatial]) - mean) * rstd * weight[ch] + bias[ch];
    if (silu) y = y / (1.f + __expf(-y));
    op[ch * spatial] = from_f32<T>(y);
  }
}

template <typename T>
void launch_channel_layer_norm(const SfChannelLayerNormArgs* a, cudaStream_t s) {
  const long long positions = static_cast<long long>(a->n) * a->spatial;
  const unsigned blocks = static_cast<unsigned>((positions + kPositions - 1) / kPositions);
  channel_layer_norm_kernel<T><<<blocks, kPositions * kLanes, 0, s>>>(
      static_cast<const T*>(a->x), a->weight, a->bias, static_cast<T*>(a->out), a->n, a->channels, a->spatial,
      a->eps, a->silu);
}
}  // namespace

extern "C" int sf_channel_layer_norm(const SfChannelLayerNormArgs* a, void* stream) {
  if (a->n <= 0 || a->channels <= 0 || a->spatial <= 0 || !a->weight || !a->bias) return cudaErrorInvalidValue;
  if ((static_cast<long long>(a->n) * a->spatial + kPositions - 1) / kPositions > 2147483647LL)
    return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: launch_channel_layer_norm<float>(a, s); break;
    case SF_DTYPE_F16: launch_channel_layer_norm<__half>(a, s); break;
    case SF_DTYPE_BF16: launch_channel_layer_norm<__nv_bfloat16>(a, s); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
