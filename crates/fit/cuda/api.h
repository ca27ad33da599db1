// C interface between crates/fit/src/cuda/ffi.rs (which mirrors these structs
// with #[repr(C)]) and the CUDA launchers of the fitting backend (feature
// `cuda` of splatforge-fit). Every launcher enqueues work on `stream`
// (candle's stream) and returns a cudaError_t as int (0 = success). None
// synchronises with the host except sff_densify_classify, whose totals the
// host needs to size the new buffers (documented in src/cuda/mod.rs).
//
// Parameter layout (one buffer for the parameters, one each for Adam's m
// and v, the same layout as the rasterizer's gradient buffer):
//   means 3N | quats 4N | log_scales 3N | opacity_logits N | sh 3KN
// with sh per Gaussian [K][3] (DC first). Floating-point expressions mirror
// the CPU reference (src/adam.rs, src/loss.rs, src/densify.rs) operation for
// operation and are compiled with -fmad=false.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- adam.cu --------------------------------------------------------------

// Adam groups, in the order of crate::adam::Group.
#define SFF_XYZ 0
#define SFF_FDC 1
#define SFF_FREST 2
#define SFF_OPACITY 3
#define SFF_SCALING 4
#define SFF_ROTATION 5

typedef struct {
  float step_size;  // lr / (1 - beta1^t), rounded from f64 as adam_update does
  float bc2_sqrt;   // sqrt(1 - beta2^t), rounded from f64
} SffAdamGroup;

typedef struct {
  float* params;       // layout above
  float* m;
  float* v;
  const float* grad_means;  // the five gradient blocks (may live anywhere)
  const float* grad_quats;
  const float* grad_scales;
  const float* grad_opacity;
  const float* grad_sh;
  int64_t n;      // Gaussians
  int sh_coeffs;  // K
  float beta1, beta2, eps;
  SffAdamGroup group[6];
} SffAdamArgs;

int sff_adam(const SffAdamArgs* a, void* stream);

// ---- loss.cu --------------------------------------------------------------

typedef struct {
  const float* render_rgb;    // [H,W,3] (not clamped)
  const float* render_alpha;  // [H,W]
  const float* target_rgb;    // [H,W,3]
  const float* target_alpha;  // [H,W] or NULL
  int width, height;
  float lambda_ssim;
  float alpha_grad;     // lambda_alpha * grad_scale / (H*W), as view_loss rounds it
  int want_alpha_grad;  // write grad_alpha (target alpha present and lambda_alpha > 0)
  float grad_scale;
  float l1_inv;    // 1 / (3HW) in f32
  float ssim_inv;  // (f32)(1 / (3HW) in f64)
  float c1, c2;
  float taps[11];  // normalised Gaussian window, gaussian_kernel::<f32>(11, 1.5)
  float* grad_rgb;    // [H,W,3] out
  float* grad_alpha;  // [H,W] out, or NULL
  double* sums;       // out, zeroed here then accumulated: L1 sum, squared-error sum,
                      // SSIM-map sum, |alpha error| sum
  float* scratch;     // >= 11 * 3HW floats
} SffLossArgs;

int sff_view_loss(const SffLossArgs* a, void* stream);

// ---- densify.cu -----------------------------------------------------------

typedef struct {
  const float* grad_norm;      // [N] from the rasterizer backward (pixel units, summed over cameras)
  const uint32_t* visible;     // [N]
  const float* max_radius;     // [N]
  float* grad_accum;           // [N]
  float* denom;                // [N]
  float* max_radii;            // [N]
  int64_t n;
  float scale;  // ndc_scale(W, H) * batch
} SffAccumArgs;

int sff_accumulate_stats(const SffAccumArgs* a, void* stream);

typedef struct {
  float* opacity;  // [N] logits
  float* m;        // [N] the opacity group's moments
  float* v;
  int64_t n;
  float cap;  // logit(0.01)
} SffResetOpacityArgs;

int sff_reset_opacity(const SffResetOpacityArgs* a, void* stream);

typedef struct {
  const float* params;  // old layout, n rows
  const float* grad_accum;
  const float* denom;
  const float* max_radii;
  int64_t n;
  int sh_coeffs;
  float grad_threshold;
  float size_limit;  // percent_dense * extent
  float min_opacity;
  int use_screen_size;
  float max_screen_size;
  float max_world;  // 0.1 * extent
  float shrink;     // ln(0.8 * 2): split children's log-scale decrement
  // scratch / outputs (device)
  int32_t* flags;    // [4N] per row: keep original, keep clone, keep children, split
  int32_t* offsets;  // [4N] exclusive prefix sums of flags (int4 per row)
  int32_t* totals;   // [8] device: kept originals, kept clones, kept children (per pass),
                     // splits, clones
  int32_t* totals_host;  // [8] host (pageable is fine)
} SffClassifyArgs;

// Flags every row, scans the flags and copies the totals to the host
// (the densification's one synchronisation).
int sff_densify_classify(const SffClassifyArgs* a, void* stream);

typedef struct {
  const float* params;  // old, n rows
  const float* m;
  const float* v;
  const int32_t* flags;
  const int32_t* offsets;
  const float* normals;  // [2 * splits * 3]: pass 0 then pass 1, in split order
  int64_t n;
  int64_t n_new;
  int sh_coeffs;
  int kept_orig, kept_clone, kept_child, splits;
  float shrink;  // ln(0.8 * 2)
  float* params_new;  // n_new rows
  float* m_new;       // zeroed by the caller
  float* v_new;
} SffScatterArgs;

int sff_densify_scatter(const SffScatterArgs* a, void* stream);

#ifdef __cplusplus
}
#endif
