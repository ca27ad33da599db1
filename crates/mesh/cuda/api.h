// C interface between crates/mesh/src/cuda.rs and the TSDF fusion kernel.
// The launcher enqueues work on `stream` (candle's stream) and returns a
// cudaError_t as int (0 = success); it does not synchronise with the host.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// One fusion view: what crate::tsdf::Projector holds.
typedef struct {
  float rows[12];  // world->camera rows 0..2 of the 4x4 matrix, row-major
  float fx, fy, cx, cy;
  float near_plane;
} SmView;

typedef struct {
  const SmView* views;  // [V] (device)
  const float* alpha;   // [V,H,W] (device)
  const float* depth;   // [V,H,W] expected depth (device)
  int num_views;
  int width, height;
  float origin[3];      // world position of sample (0,0,0)
  float voxel;          // sample spacing
  int dims[3];          // samples along x, y, z
  float truncation;     // tau, scene units
  float surface_alpha;  // below it, a pixel is free space
  float* sdf;           // [dims[2], dims[1], dims[0]] (device), output
} SmFuseArgs;

int sm_tsdf_fuse(const SmFuseArgs* args, void* stream);

#ifdef __cplusplus
}
#endif
