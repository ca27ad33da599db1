// The image loss of one view and its gradient with respect to the rendered
// image, on the GPU (feature `cuda` of splatforge-fit): 3DGS's
// (1 - λ)·L1 + λ·(1 - SSIM) on the clamped RGB (11×11 Gaussian window,
// σ = 1.5, zero padding) plus the L1 alpha term, as crate::loss::view_loss.
//
// The separable blurs run in the CPU's order (horizontal pass, then vertical,
// each summing the taps left to right from 0), and every per-pixel
// expression mirrors loss.rs operation for operation (no FMA contraction),
// so for the same render the gradient is bitwise the CPU's. The scalar sums
// (L1, squared error, SSIM map, alpha error) are reduced in f64 with
// atomics, so only their summation order differs.
//
// Four passes over 3 planes (channel-planar scratch, 11 planes of 3HW):
//   1. horizontal blur of x, y, x², y², xy          -> scratch[0..5]
//   2. vertical blur, SSIM map, ∂S/∂μx, ∂S/∂Exx, ∂S/∂Exy, L1 / SE / S sums
//                                                    -> scratch[5..8]
//   3. horizontal blur of the three partials        -> scratch[8..11]
//   4. vertical blur, ∂SSIM/∂x, final RGB gradient
// plus, for views with alpha, one pass for the alpha term.
#include <cuda_runtime.h>

#include "api.h"

#define SFF_WIN 11
#define SFF_R 5

__device__ __forceinline__ float sff_clamp01(float v) {
  // Rust's f32::clamp: NaN stays NaN.
  if (v < 0.0f) v = 0.0f;
  if (v > 1.0f) v = 1.0f;
  return v;
}

__device__ __forceinline__ double sff_warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum of up to 3 doubles, atomically added to out[0..count].
__device__ void sff_block_add(double* out, double a, double b, double c, int count) {
  __shared__ double sh[3][32];
  const int lane = (threadIdx.y * blockDim.x + threadIdx.x) & 31;
  const int warp = (threadIdx.y * blockDim.x + threadIdx.x) >> 5;
  const int nwarps = (blockDim.x * blockDim.y + 31) >> 5;
  a = sff_warp_sum(a);
  b = sff_warp_sum(b);
  c = sff_warp_sum(c);
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
    sh[2][warp] = c;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nwarps ? sh[0][lane] : 0.0;
    b = lane < nwarps ? sh[1][lane] : 0.0;
    c = lane < nwarps ? sh[2][lane] : 0.0;
    a = sff_warp_sum(a);
    b = sff_warp_sum(b);
    c = sff_warp_sum(c);
    if (lane == 0) {
      atomicAdd(out, a);
      if (count > 1) atomicAdd(out + 1, b);
      if (count > 2) atomicAdd(out + 2, c);
    }
  }
}

// Pass 1: horizontal blur of x, y, x², y², xy.
__global__ void sff_ssim_h5(SffLossArgs a) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int c = blockIdx.z;
  const int w = a.width, h = a.height;
  if (x >= w || y >= h) return;
  const int lo = x - SFF_R < 0 ? 0 : x - SFF_R;
  const int hi = x + SFF_R > w - 1 ? w - 1 : x + SFF_R;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f, s4 = 0.0f;
  const float* xr = a.render_rgb + (size_t)y * w * 3 + c;
  const float* yr = a.target_rgb + (size_t)y * w * 3 + c;
  for (int xx = lo; xx <= hi; ++xx) {
    const float k = a.taps[xx + SFF_R - x];
    const float xv = sff_clamp01(xr[xx * 3]);
    const float yv = yr[xx * 3];
    s0 += k * xv;
    s1 += k * yv;
    s2 += k * (xv * xv);
    s3 += k * (yv * yv);
    s4 += k * (xv * yv);
  }
  const size_t plane = (size_t)3 * w * h;
  const size_t i = (size_t)c * w * h + (size_t)y * w + x;
  a.scratch[i] = s0;
  a.scratch[plane + i] = s1;
  a.scratch[2 * plane + i] = s2;
  a.scratch[3 * plane + i] = s3;
  a.scratch[4 * plane + i] = s4;
}

// Pass 2: vertical blur, SSIM map and its partials, L1 / SE / SSIM sums.
__global__ void sff_ssim_v5(SffLossArgs a) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int c = blockIdx.z;
  const int w = a.width, h = a.height;
  double l1 = 0.0, se = 0.0, ssum = 0.0;
  if (x < w && y < h) {
    const int lo = y - SFF_R < 0 ? 0 : y - SFF_R;
    const int hi = y + SFF_R > h - 1 ? h - 1 : y + SFF_R;
    const size_t plane = (size_t)3 * w * h;
    const float* base = a.scratch + (size_t)c * w * h + x;
    float mx = 0.0f, my = 0.0f, exx = 0.0f, eyy = 0.0f, exy = 0.0f;
    for (int yy = lo; yy <= hi; ++yy) {
      const float k = a.taps[yy + SFF_R - y];
      const size_t o = (size_t)yy * w;
      mx += k * base[o];
      my += k * base[plane + o];
      exx += k * base[2 * plane + o];
      eyy += k * base[3 * plane + o];
      exy += k * base[4 * plane + o];
    }
    const float two = 2.0f, c1 = a.c1, c2 = a.c2;
    const float sxx = exx - mx * mx;
    const float syy = eyy - my * my;
    const float sxy = exy - mx * my;
    const float n1 = two * mx * my + c1;
    const float n2 = two * sxy + c2;
    const float d1 = mx * mx + my * my + c1;
    const float d2 = sxx + syy + c2;
    const float s = n1 * n2 / (d1 * d2);
    ssum = (double)s;
    const size_t i = (size_t)c * w * h + (size_t)y * w + x;
    a.scratch[5 * plane + i] = two * my * (n2 - n1) / (d1 * d2) - two * mx * s / d1 + two * mx * s / d2;
    a.scratch[6 * plane + i] = -s / d2;
    a.scratch[7 * plane + i] = two * n1 / (d1 * d2);
    const size_t p = ((size_t)y * w + x) * 3 + c;
    const float d = sff_clamp01(a.render_rgb[p]) - a.target_rgb[p];
    l1 = (double)fabsf(d);
    se = (double)d * (double)d;
  }
  sff_block_add(a.sums, l1, se, ssum, 3);
}

// Pass 3: horizontal blur of the three partial-derivative planes.
__global__ void sff_ssim_h3(SffLossArgs a) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int c = blockIdx.z;
  const int w = a.width, h = a.height;
  if (x >= w || y >= h) return;
  const int lo = x - SFF_R < 0 ? 0 : x - SFF_R;
  const int hi = x + SFF_R > w - 1 ? w - 1 : x + SFF_R;
  const size_t plane = (size_t)3 * w * h;
  const float* row = a.scratch + 5 * plane + (size_t)c * w * h + (size_t)y * w;
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
  for (int xx = lo; xx <= hi; ++xx) {
    const float k = a.taps[xx + SFF_R - x];
    s0 += k * row[xx];
    s1 += k * row[plane + xx];
    s2 += k * row[2 * plane + xx];
  }
  const size_t i = 8 * plane + (size_t)c * w * h + (size_t)y * w + x;
  a.scratch[i] = s0;
  a.scratch[plane + i] = s1;
  a.scratch[2 * plane + i] = s2;
}

// Pass 4: vertical blur, ∂SSIM/∂x, and the RGB gradient of view_loss.
__global__ void sff_ssim_v3_grad(SffLossArgs a) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int y = blockIdx.y * blockDim.y + threadIdx.y;
  const int c = blockIdx.z;
  const int w = a.width, h = a.height;
  if (x >= w || y >= h) return;
  const int lo = y - SFF_R < 0 ? 0 : y - SFF_R;
  const int hi = y + SFF_R > h - 1 ? h - 1 : y + SFF_R;
  const size_t plane = (size_t)3 * w * h;
  const float* base = a.scratch + 8 * plane + (size_t)c * w * h + x;
  float ba = 0.0f, bb = 0.0f, bc = 0.0f;
  for (int yy = lo; yy <= hi; ++yy) {
    const float k = a.taps[yy + SFF_R - y];
    const size_t o = (size_t)yy * w;
    ba += k * base[o];
    bb += k * base[plane + o];
    bc += k * base[2 * plane + o];
  }
  const size_t p = ((size_t)y * w + x) * 3 + c;
  const float r = a.render_rgb[p];
  const float xv = sff_clamp01(r);
  const float yv = a.target_rgb[p];
  const float two = 2.0f;
  const float ssim_grad = (ba + two * xv * bb + yv * bc) * a.ssim_inv;
  float out = 0.0f;
  if (r >= 0.0f && r <= 1.0f) {
    const float d = xv - yv;
    const float sign = d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
    const float lam = a.lambda_ssim;
    float g = (1.0f - lam) * sign * a.l1_inv;
    if (lam > 0.0f) g -= lam * ssim_grad;
    out = g * a.grad_scale;
  }
  a.grad_rgb[p] = out;
}

// Alpha term: Σ|α − α_gt| and its gradient.
__global__ void sff_alpha_term(SffLossArgs a) {
  const int64_t n = (int64_t)a.width * a.height;
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  double s = 0.0;
  if (i < n) {
    const float d = a.render_alpha[i] - a.target_alpha[i];
    s = (double)fabsf(d);
    if (a.want_alpha_grad) {
      const float k = a.alpha_grad;
      a.grad_alpha[i] = d > 0.0f ? k : (d < 0.0f ? -k : 0.0f);
    }
  }
  sff_block_add(a.sums + 3, s, 0.0, 0.0, 1);
}

extern "C" int sff_view_loss(const SffLossArgs* a, void* stream) {
  cudaStream_t st = (cudaStream_t)stream;
  cudaError_t e = cudaMemsetAsync(a->sums, 0, 4 * sizeof(double), st);
  if (e != cudaSuccess) return (int)e;
  const int w = a->width, h = a->height;
  if (w <= 0 || h <= 0) return 0;
  dim3 block(32, 8);
  dim3 grid((w + 31) / 32, (h + 7) / 8, 3);
  sff_ssim_h5<<<grid, block, 0, st>>>(*a);
  sff_ssim_v5<<<grid, block, 0, st>>>(*a);
  sff_ssim_h3<<<grid, block, 0, st>>>(*a);
  sff_ssim_v3_grad<<<grid, block, 0, st>>>(*a);
  if (a->target_alpha) {
    const int64_t n = (int64_t)w * h;
    sff_alpha_term<<<(unsigned)((n + 255) / 256), 256, 0, st>>>(*a);
  }
  return (int)cudaGetLastError();
}
