// Modulated deformable im2col (see api.h): the sampling half of torchvision's
// deform_conv2d, written straight into the column matrix the product reads, in
// the model's dtype. BiRefNet's decoder built it from candle gathers in f32:
// four row gathers of [K²·Ho·Wo, C], a weight pass over each and a permuting
// copy, about ten times the bytes of the columns themselves.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "api.h"
#include "convert.cuh"

namespace {

using sf::from_f32;
using sf::to_f32;

// One thread per (batch item, tap, output pixel of the chunk): the tap's
// bilinear corners and weights (modulator folded in) once, then every channel.
// Consecutive threads take consecutive pixels, so the column writes coalesce.
template <typename T>
__global__ void deform_im2col_kernel(const T* __restrict__ x, const T* __restrict__ offset,
                                     const T* __restrict__ mask, T* __restrict__ cols, int batch, int channels,
                                     int h, int w, int k, int stride, int pad, int ho, int wo, int row0,
                                     int rows) {
  const int taps = k * k;
  const long long pixels = static_cast<long long>(rows) * wo;  // of this chunk
  const long long total = static_cast<long long>(batch) * taps * pixels;
  const long long grid_stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += grid_stride) {
    const long long p = i % pixels;
    const int tap = static_cast<int>((i / pixels) % taps);
    const int b = static_cast<int>(i / (pixels * taps));
    const int oy = row0 + static_cast<int>(p / wo);
    const int ox = static_cast<int>(p % wo);
    const long long plane_out = static_cast<long long>(ho) * wo;
    const long long at = static_cast<long long>(oy) * wo + ox;
    const float dy = to_f32(offset[(static_cast<long long>(b) * 2 * taps + 2 * tap) * plane_out + at]);
    const float dx = to_f32(offset[(static_cast<long long>(b) * 2 * taps + 2 * tap + 1) * plane_out + at]);
    const float m = to_f32(mask[(static_cast<long long>(b) * taps + tap) * plane_out + at]);
    const float py = static_cast<float>(oy * stride - pad + tap / k) + dy;
    const float px = static_cast<float>(ox * stride - pad + tap % k) + dx;
    // torchvision's bilinear_interpolate: nothing at or beyond one pixel
    // outside the image (NaN included), else each in-image corner weighted.
    long long idx[4] = {0, 0, 0, 0};
    float wt[4] = {0.f, 0.f, 0.f, 0.f};
    if (py > -1.f && px > -1.f && py < static_cast<float>(h) && px < static_cast<float>(w)) {
      const int y0 = static_cast<int>(floorf(py)), x0 = static_cast<int>(floorf(px));
      const float ly = py - y0, lx = px - x0;
      const int ys[2] = {y0, y0 + 1}, xs[2] = {x0, x0 + 1};
      const float wy[2] = {1.f - ly, ly}, wx[2] = {1.f - lx, lx};
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int yy = ys[c >> 1], xx = xs[c & 1];
        if (yy >= 0 && xx >= 0 && yy < h && xx < w) {
          idx[c] = static_cast<long long>(yy) * w + xx;
          wt[c] = m * wy[c >> 1] * wx[c & 1];
        }
      }
    }
    const long long plane_in = static_cast<long long>(h) * w;
    const T* xb = x + static_cast<long long>(b) * channels * plane_in;
    T* out = cols + (static_cast<long long>(b) * channels * taps + tap) * pixels + p;
    for (int c = 0; c < channels; ++c) {
      const T* xc = xb + c * plane_in;
      float v = 0.f;
#pragma unroll
      for (int n = 0; n < 4; ++n)
        if (wt[n] != 0.f) v += wt[n] * to_f32(xc[idx[n]]);
      out[static_cast<long long>(c) * taps * pixels] = from_f32<T>(v);
    }
  }
}

template <typename T>
void launch(const SfDeformIm2colArgs* a, cudaStream_t s) {
  constexpr int kThreads = 256;
  const long long work = static_cast<long long>(a->batch) * a->kernel * a->kernel * a->rows * a->out_width;
  long long blocks = (work + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;  // grid-stride loop beyond
  deform_im2col_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
      static_cast<const T*>(a->x), static_cast<const T*>(a->offset), static_cast<const T*>(a->mask),
      static_cast<T*>(a->cols), a->batch, a->channels, a->height, a->width, a->kernel, a->stride, a->padding,
      a->out_height, a->out_width, a->row0, a->rows);
}

}  // namespace

extern "C" int sf_deform_im2col(const SfDeformIm2colArgs* a, void* stream) {
  if (a->batch <= 0 || a->channels <= 0 || a->height <= 0 || a->width <= 0 || a->kernel <= 0 || a->stride <= 0 ||
      a->padding < 0 || a->out_height <= 0 || a->out_width <= 0 || a->rows <= 0 || a->row0 < 0 ||
      a->row0 + a->rows > a->out_height)
    return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F32: launch<float>(a, s); break;
    case SF_DTYPE_F16: launch<__half>(a, s); break;
    case SF_DTYPE_BF16: launch<__nv_bfloat16>(a, s); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
