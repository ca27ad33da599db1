// C interface between crates/diffusion/src/ops/cuda.rs and the CUDA launchers
// of the diffusion models' fused operations. Every launcher enqueues its work
// on `stream` (candle's stream), never synchronises with the host, and returns
// a cudaError_t as int (0 = success).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types of the tensors a launcher reads and writes.
#define SF_DTYPE_F32 0
#define SF_DTYPE_F16 1
#define SF_DTYPE_BF16 2

// Multi-head softmax attention without materialising the scores
// (flash-attention style: one pass over the keys with an online softmax).
// q [B, Nq, H*D], k and v [B, Nk, H*D], out [B, Nq, H*D], all contiguous, f16
// or bf16, 16-byte aligned. D is 64 or 128; scale is applied to q·k.
// Products on tensor cores (f32 accumulation), softmax in f32.
typedef struct {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int batch, heads, head_dim, nq, nk;
  float scale;
  int dtype;  // SF_DTYPE_F16 or SF_DTYPE_BF16
} SfAttentionArgs;

int sf_attention(const SfAttentionArgs* args, void* stream);

// GroupNorm over x [N, C, S] (S = product of the spatial sizes), contiguous,
// statistics in f32 per (n, group), y = (x - mean) * rstd * gamma[c] + beta[c],
// then SiLU when `silu` is set. gamma and beta [C] have x's dtype.
// `scratch` holds at least sf_group_norm_scratch_floats(N, groups, C*S/groups)
// floats of device memory.
typedef struct {
  const void* x;
  const void* gamma;
  const void* beta;
  void* y;
  float* scratch;
  int n, channels, groups;
  long long spatial;
  float eps;
  int silu;
  int dtype;  // SF_DTYPE_*
} SfGroupNormArgs;

size_t sf_group_norm_scratch_floats(int n, int groups, long long group_size);
int sf_group_norm(const SfGroupNormArgs* args, void* stream);

// Gradient of the input of the GroupNorm (+ SiLU) above: dx from x and dy
// (gamma and beta take none). Same shapes and dtype as the forward; `scratch`
// holds at least 2 * sf_group_norm_scratch_floats(...) floats.
typedef struct {
  const void* x;
  const void* dy;
  const void* gamma;
  const void* beta;
  void* dx;
  float* scratch;
  int n, channels, groups;
  long long spatial;
  float eps;
  int silu;
  int dtype;  // SF_DTYPE_*
} SfGroupNormBwdArgs;

int sf_group_norm_backward(const SfGroupNormBwdArgs* args, void* stream);

#ifdef __cplusplus
}
#endif
