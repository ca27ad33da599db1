// C interface between the Rust side (crates/render/src/cuda/ffi.rs, which
// mirrors these structs with #[repr(C)]) and the CUDA launchers. Every
// launcher enqueues work on `stream` (candle's stream) and returns a
// cudaError_t as int (0 = success); none synchronises with the host except
// sf_read_totals, which is documented as the one readback of a forward call.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Rasterizer kernel variants (benchmarking knobs; the default is 0 or PPT2).
#define SF_VARIANT_PPT2 1       // backward: two vertically adjacent pixels per thread
#define SF_VARIANT_FAST_EXP 2   // __expf in the rasterizer: faster, no bitwise parity
#define SF_VARIANT_FULL_SORT 4  // one sort of (tile | depth) 64-bit keys instead of
                                // depth presort + 32-bit tile sort

// One camera, as crate::project::CameraParams<f32> computes it on the host.
typedef struct {
  float rot[9];    // world->camera rotation, row-major
  float trans[3];
  float fx, fy, cx, cy;
  float width, height, near_plane, far_plane;
  float position[3];  // camera centre, world
  float lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos;
  float pad;
} SfCamera;

typedef struct {
  // inputs (device)
  const float* means;           // [N,3]
  const float* quats;           // [N,4] wxyz
  const float* log_scales;      // [N,3]
  const float* opacity_logits;  // [N]
  const float* sh;              // [N,K,3]
  const SfCamera* cams;         // [C]
  int num_cams;
  int num_gauss;
  int sh_coeffs;     // K stored per Gaussian
  int sh_degree;     // degree evaluated (<= stored)
  int antialiased;   // RenderMode::Antialiased
  float eps2d;
  float radius_clip;
  int width, height, tiles_x, tiles_y;
  // outputs (device)
  void* splats;           // [C*N] x 3 float4 (see common.cuh)
  uint64_t* tile_counts;  // [C*N] tiles touched; 0 when culled
  uint64_t* depth_keys;   // [C*N] (camera << 32 | depth bits), culled last; NULL: skip
  uint32_t* depth_ids;    // [C*N] camera*N + Gaussian; NULL: skip
} SfProjectArgs;

typedef struct {
  const uint64_t* counts;  // [C*N] tile counts from the projection
  uint64_t* offsets;       // [C*N] out: inclusive prefix sum (in list order)
  uint64_t* totals;        // [C] intersections per camera (device)
  void* temp;              // CUB scratch (scan, and the depth sort)
  size_t temp_bytes;
  int num_cams;
  int num_gauss;
  // Depth presort (when presort != 0): the Gaussians of each camera are
  // sorted front to back first; the list order is then that order.
  int presort;
  int cam_bits;
  uint64_t* dkeys[2];      // double buffer [C*N]; dkeys[0] = projection's depth_keys
  uint32_t* dvals[2];      // double buffer [C*N]; dvals[0] = projection's depth_ids
  int* out_selector;       // host: which dvals[] holds the order
} SfScanArgs;

typedef struct {
  const void* splats;
  const uint64_t* offsets;   // inclusive scan of tile counts, in list order
  const uint32_t* order;     // presort: list position -> camera*N + Gaussian; NULL: identity
  int num_cams, num_gauss;
  int tiles_x, tiles_y;
  uint64_t num_isect;        // total over cameras
  int key_bits;              // bits of (camera*tiles + tile)
  void* keys[2];             // double buffer [M]: uint32 (presort) or uint64 keys
  uint32_t* vals[2];         // double buffer [M]
  void* temp;                // CUB scratch
  size_t temp_bytes;
  uint32_t* tile_start;      // [C*T + 1]
  int* out_selector;         // host: which of vals[] holds the sorted ids
} SfIsectArgs;

typedef struct {
  const void* splats;
  const uint32_t* sorted_ids;  // [M] flat (camera*N + gaussian)
  const uint32_t* tile_start;  // [C*T + 1]
  int num_cams, width, height, tiles_x, tiles_y;
  float bg[3];
  int normalize_depth;
  // outputs
  float* rgb;        // [C,H,W,3]
  float* alpha;      // [C,H,W]
  float* depth;      // [C,H,W]
  float* t_final;    // [C,H,W]
  uint32_t* last;    // [C,H,W]
  float* raw_depth;  // [C,H,W]
  int variant;       // SF_VARIANT_* bits
} SfRasterFwdArgs;

typedef struct {
  const void* splats;
  const uint32_t* sorted_ids;
  const uint32_t* tile_start;
  int num_cams, width, height, tiles_x, tiles_y;
  float bg[3];
  int normalize_depth;
  const float* t_final;
  const uint32_t* last;
  const float* raw_depth;
  const float* g_rgb;    // [C,H,W,3] or NULL
  const float* g_alpha;  // [C,H,W] or NULL
  const float* g_depth;  // [C,H,W] or NULL
  float* screen_grads;   // [C*N, SF_SCREEN_GRAD], zeroed by the launcher
  uint64_t screen_grads_len;  // floats
  int variant;                // SF_VARIANT_* bits
} SfRasterBwdArgs;

typedef struct {
  const float* means;
  const float* quats;
  const float* log_scales;
  const float* opacity_logits;
  const float* sh;
  const SfCamera* cams;
  int num_cams, num_gauss, sh_coeffs, sh_degree, antialiased;
  float eps2d;
  const void* splats;
  const float* screen_grads;
  // outputs [N,...]
  float* v_means;
  float* v_quats;
  float* v_log_scales;
  float* v_opacity_logits;
  float* v_sh;                // [N,K,3]
  float* grad_norm;           // [N]
  float* absgrad_norm;        // [N]
  uint32_t* visible_count;    // [N]
  float* max_radius;          // [N]
} SfProjectBwdArgs;

int sf_project_fwd(const SfProjectArgs* a, void* stream);
size_t sf_scan_temp_bytes(int64_t n, int presort, int cam_bits);
int sf_scan_counts(const SfScanArgs* a, void* stream);
// Copies totals[0..C) to host memory and waits for the stream: the one
// host synchronisation of a forward call.
int sf_read_totals(const uint64_t* totals_dev, uint64_t* totals_host, int num_cams, void* stream);
size_t sf_sort_temp_bytes(uint64_t n, int key_bits, int presort);
int sf_intersect(const SfIsectArgs* a, void* stream);
int sf_rasterize_fwd(const SfRasterFwdArgs* a, void* stream);
int sf_rasterize_bwd(const SfRasterBwdArgs* a, void* stream);
int sf_project_bwd(const SfProjectBwdArgs* a, void* stream);

#ifdef __cplusplus
}
#endif
