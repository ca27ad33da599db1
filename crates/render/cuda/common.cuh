// Shared definitions of the CUDA rasterizer (feature `cuda` of splatforge-render).
//
// Every constant and every floating-point expression here mirrors the CPU
// reference in crates/render/src (project.rs, sh.rs, tiles.rs, rasterize.rs)
// operation for operation: same operand order, same clamps, same culling,
// compiled with -fmad=false and IEEE division/sqrt, with exp/log rounded like
// glibc's (correctly rounded) expf/logf, so that the GPU makes the same
// discrete decisions (culling, alpha cut-off, clamp, early stop) as the CPU.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "api.h"

#define SF_TILE 16
#define SF_BLOCK (SF_TILE * SF_TILE)
#define SF_FULL_MASK 0xffffffffu

// Constants as the CPU computes them: an f64 literal rounded to f32.
#define SF_ALPHA_THRESHOLD ((float)(1.0 / 255.0))
#define SF_MAX_ALPHA ((float)0.99)
#define SF_T_STOP ((float)1e-4)
#define SF_DEPTH_ALPHA_EPS ((float)1e-10)
#define SF_MIN_QUAT_NORM_SQ ((float)1e-20)
#define SF_MAX_COLOR ((float)1e6)

// Layout of one projected Gaussian (one camera): three float4.
//   s0 = (mean2d.x, mean2d.y, conic.a, conic.b)
//   s1 = (conic.c, opacity, sigma_cut, radius)      radius == 0: culled
//   s2 = (r, g, b, depth)
#define SF_SPLAT_F4 3

// Per-(camera, Gaussian) screen-space gradient, SF_SCREEN_GRAD floats:
//   0,1 mean2d   2,3 |mean2d| (absgrad)   4,5,6 conic   7 opacity
//   8,9,10 rgb   11 depth
#define SF_SCREEN_GRAD 12

#define SF_CHECK_LAUNCH()                      \
  do {                                         \
    cudaError_t e__ = cudaGetLastError();      \
    if (e__ != cudaSuccess) return (int)e__;   \
  } while (0)

// exp and log that round like correctly rounded expf/logf (what glibc's
// expf, used by the CPU path, returns in all but rare midpoint cases): the
// value is computed in double and rounded once. CUDA's own expf is within 2
// ulp; an ulp of difference in an alpha near a decision (1/255 cut-off, 0.99
// clamp, T <= 1e-4 stop) would flip it and change a pixel.
__device__ __forceinline__ float sf_expf(float x) { return (float)exp((double)x); }
__device__ __forceinline__ float sf_logf(float x) { return (float)log((double)x); }

// 2^(j/16), j = 0..15, in double: the table of sf_exp_neg. Each rasterizer
// block copies it to shared memory (16 doubles span the 32 banks once, so any
// gather is conflict-free).
static __constant__ double SF_EXP2_16[16] = {
    1.0, 1.0442737824274138, 1.0905077326652577, 1.1387886347566916,
    1.189207115002721, 1.241857812073484, 1.2968395546510096, 1.3542555469368927,
    1.4142135623730951, 1.4768261459394993, 1.5422108254079407, 1.6104903319492543,
    1.681792830507429, 1.7562521603732995, 1.8340080864093424, 1.9152065613971474};

// exp(x) for x in [-8, 0] (the rasterizer's -sigma, sigma <= ln 255), with
// relative error ~2^-42 before the one rounding to float, so that it rounds
// like a correctly rounded expf: k = rint(16 x / ln 2), r = x - k ln2/16 in
// double (|r| <= ln2/32), degree-5 Taylor polynomial (error 0.0217^6/720 ~
// 2^-42), times 2^((k mod 16)/16) from the table, then an exact 2^(k div 16).
__device__ __forceinline__ float sf_exp_neg(float x, const double* tab) {
  const float kf = rintf(x * 23.083120654223414f);
  const int k = (int)kf;
  const double r = fma(-(double)kf, 0.04332169878499658, (double)x);
  double p = fma(r, 1.0 / 120.0, 1.0 / 24.0);
  p = fma(p, r, 1.0 / 6.0);
  p = fma(p, r, 0.5);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  const double m = p * tab[k & 15];
  return (float)m * __int_as_float((127 + (k >> 4)) << 23);
}

// The cheap part of the per-pixel test: false when sigma alone rejects the
// Gaussian (sigma < 0, or beyond the 1/255 cut-off; NaN passes, as on the CPU).
__device__ __forceinline__ bool sf_sigma_ok(float4 s0, float4 s1, float px, float py) {
  const float dx = px - s0.x;
  const float dy = py - s0.y;
  const float sigma = 0.5f * (s0.z * dx * dx + s1.x * dy * dy) + s0.w * dx * dy;
  return !(sigma < 0.0f || sigma > s1.z);
}

// The rasterizer's per-pixel test of one Gaussian (rasterize.rs, Splat::eval):
// false when the Gaussian is skipped at this pixel centre. EXACT: alpha is
// bitwise the CPU's (see sf_exp_neg); otherwise __expf (benchmarking only).
template <bool EXACT>
__device__ __forceinline__ bool sf_eval(float4 s0, float4 s1, float px, float py, float& alpha,
                                        float& gauss, float& dx, float& dy, bool& clamped,
                                        const double* tab) {
  dx = px - s0.x;
  dy = py - s0.y;
  float sigma = 0.5f * (s0.z * dx * dx + s1.x * dy * dy) + s0.w * dx * dy;
  if (sigma < 0.0f || sigma > s1.z) return false;
  gauss = EXACT ? sf_exp_neg(-sigma, tab) : __expf(-sigma);
  float raw = s1.y * gauss;
  if (raw < SF_ALPHA_THRESHOLD) return false;
  clamped = raw > SF_MAX_ALPHA;
  alpha = clamped ? SF_MAX_ALPHA : raw;
  return true;
}
