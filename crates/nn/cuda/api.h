// C interface between crates/nn/src/ops/cuda.rs and the CUDA launchers of the
// runtime's fused operations. Every launcher enqueues its work
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
// `variant` picks the kernel's block shape (keys are taken 64 at a time in
// all): 0 = the tuned default (kDefaultVariant in attention.cu); 1 = 4 warps
// × 16 query rows; 2 = 8 warps × 16 rows; 3 = 4 warps × 32 rows; 4 = 8 warps
// × 32 rows. Others are rejected (cudaErrorInvalidValue). All compute each
// output row alike, so they give the same results; 1..4 are for benchmarks
// and checks.
typedef struct {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int batch, heads, head_dim, nq, nk;
  float scale;
  int dtype;  // SF_DTYPE_F16 or SF_DTYPE_BF16
  int variant;
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

// y[p, :] += bias[p % channels] for each of `planes` contiguous planes of
// `plane` elements (NCHW: planes = N·C, plane = H·W), in place, in f32 then
// rounded once. y is 16-byte aligned.
typedef struct {
  void* y;
  const void* bias;
  long long planes;
  int channels;
  long long plane;
  int dtype;  // SF_DTYPE_*
} SfChannelBiasArgs;

int sf_channel_bias(const SfChannelBiasArgs* args, void* stream);

// Nearest-neighbour 2× upsampling: x [planes, h, w] → y [planes, 2h, 2w],
// contiguous, any SF_DTYPE_*; y is 8-byte aligned.
typedef struct {
  const void* x;
  void* y;
  long long planes;
  int h, w;
  int dtype;  // SF_DTYPE_*
} SfUpsampleArgs;

int sf_upsample_nearest2x(const SfUpsampleArgs* args, void* stream);

// The epilogue of a linear layer y = x·Wᵀ, in one pass:
//   out = residual + gate ⊙ act(y + bias + extra)
// with act = GELU (tanh approximation) when `gelu` is set; every term but y
// is optional (null). y, extra, residual, out [rows, cols]; bias [cols];
// gate [rows / rows_per_gate, cols] (one row of gates per batch item). All
// contiguous, one dtype; f32 arithmetic, one rounding. out may alias y.
typedef struct {
  const void* y;
  void* out;
  const void* bias;
  const void* extra;
  const void* gate;
  const void* residual;
  long long rows;
  int cols;
  long long rows_per_gate;
  int gelu;
  int dtype;  // SF_DTYPE_*
} SfLinearEpilogueArgs;

int sf_linear_epilogue(const SfLinearEpilogueArgs* args, void* stream);

// Per-head RMSNorm of queries and keys, with FLUX's extras: the
// projection's bias[heads·D] added first (when not null), RMSNorm of each
// head's D values (f32 sum of squares, rstd = 1/sqrt(mean + eps)) times the
// f32 scale (scale[D] shared by the heads, or scale[heads·D] one row per head
// when scale_per_head is set: TRELLIS' MultiHeadRMSNorm), then, when cos and
// sin are not null, FLUX's interleaved rotary embedding of each pair
// (x[2j], x[2j+1]) by the token's angle j:
//   (a·cos[t, j] − b·sin[t, j], a·sin[t, j] + b·cos[t, j]).
// x, out [tokens, heads, D]; cos, sin [tokens, D/2]; all contiguous, x's
// dtype but the scale; f32 arithmetic, one rounding. D even, at most 256.
typedef struct {
  const void* x;
  const void* bias;
  const float* scale;
  const void* cos;
  const void* sin;
  void* out;
  long long tokens;
  int heads, head_dim;
  int scale_per_head;
  float eps;
  int dtype;  // SF_DTYPE_*
} SfRmsNormRopeArgs;

int sf_rms_norm_rope(const SfRmsNormRopeArgs* args, void* stream);

// LayerNorm over the last dim with an f32 affine, then (when scale is not
// null) the adaLN modulation of DiT blocks:
//   y = ((x − mean)·rstd·weight[c] + bias[c]) · (1 + scale[i, c]) + shift[i, c]
// with i = row / rows_per_item (one modulation row per batch item, or per row
// when rows_per_item is 1). x, out [rows, channels]; shift, scale
// [rows / rows_per_item, channels] in x's dtype; weight, bias [channels] f32;
// all contiguous. Statistics and arithmetic in f32, one rounding (the composite
// rounds after the norm and after each modulation op). channels ≤ 2048.
typedef struct {
  const void* x;
  const float* weight;
  const float* bias;
  const void* shift;
  const void* scale;
  void* out;
  long long rows;
  int channels;
  long long rows_per_item;
  float eps;
  int dtype;  // SF_DTYPE_*
} SfLayerNormModulateArgs;

int sf_layer_norm_modulate(const SfLayerNormModulateArgs* args, void* stream);

// Modulated deformable im2col, the sampling half of torchvision's
// deform_conv2d (one offset group, dilation 1), for output rows
// [row0, row0 + rows): for tap t = (i, j) of a K×K kernel and output pixel
// (oy, ox), the input of channel c is sampled bilinearly at
//   (oy·stride − padding + i + offset[b, 2t, oy, ox],
//    ox·stride − padding + j + offset[b, 2t + 1, oy, ox])
// (zero at or beyond one pixel outside the image, each out-of-image corner
// dropped), times mask[b, t, oy, ox], into
//   cols[b, c·K² + t, (oy − row0)·Wo + ox].
// x [B, C, H, W], offset [B, 2K², Ho, Wo], mask [B, K², Ho, Wo],
// cols [B, C·K², rows·Wo]; all contiguous, one dtype; f32 arithmetic, one
// rounding.
typedef struct {
  const void* x;
  const void* offset;
  const void* mask;
  void* cols;
  int batch, channels, height, width;
  int kernel, stride, padding;
  int out_height, out_width;
  int row0, rows;
  int dtype;  // SF_DTYPE_*
} SfDeformIm2colArgs;

int sf_deform_im2col(const SfDeformIm2colArgs* args, void* stream);

// LayerNorm over the channels of x [N, C, S] (S = product of the spatial
// sizes), for each (n, s) position: TRELLIS' ChannelLayerNorm32 without the
// permutes around it. y = (x − mean)·rstd·weight[c] + bias[c], then SiLU when
// `silu` is set; statistics and arithmetic in f32, one rounding. x, out
// contiguous, one dtype; weight, bias [C] f32.
typedef struct {
  const void* x;
  const float* weight;
  const float* bias;
  void* out;
  int n, channels;
  long long spatial;
  float eps;
  int silu;
  int dtype;  // SF_DTYPE_*
} SfChannelLayerNormArgs;

int sf_channel_layer_norm(const SfChannelLayerNormArgs* args, void* stream);

#ifdef __cplusplus
}
#endif
