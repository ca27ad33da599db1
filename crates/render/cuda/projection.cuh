// EWA projection of one Gaussian into one camera, shared by the forward and
// backward projection kernels (crates/render/src/project.rs: geometry()).
#pragma once

#include "common.cuh"

struct SfGeometry {
  float qn[4];
  float qnorm;
  float rotq[3][3];
  float scale[3];
  float m[3][3];      // R(q) S
  float t[3];         // camera-space mean
  float cov_c[3][3];  // W Sigma W^T
  float jac[2][3];
  bool clamped[2];
  float ratio[2];
  float cov2d[3];     // un-blurred (c00, c01, c11)
};

__device__ __forceinline__ void sf_quat_to_rotmat(const float q[4], float r[3][3]) {
  float w = q[0], x = q[1], y = q[2], z = q[3];
  r[0][0] = 1.0f - 2.0f * (y * y + z * z);
  r[0][1] = 2.0f * (x * y - w * z);
  r[0][2] = 2.0f * (x * z + w * y);
  r[1][0] = 2.0f * (x * y + w * z);
  r[1][1] = 1.0f - 2.0f * (x * x + z * z);
  r[1][2] = 2.0f * (y * z - w * x);
  r[2][0] = 2.0f * (x * z - w * y);
  r[2][1] = 2.0f * (y * z + w * x);
  r[2][2] = 1.0f - 2.0f * (x * x + y * y);
}

// o = a b
__device__ __forceinline__ void sf_matmul3(const float a[3][3], const float b[3][3], float o[3][3]) {
#pragma unroll
  for (int i = 0; i < 3; i++)
#pragma unroll
    for (int j = 0; j < 3; j++) o[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
}

__device__ __forceinline__ void sf_transpose3(const float a[3][3], float o[3][3]) {
#pragma unroll
  for (int i = 0; i < 3; i++)
#pragma unroll
    for (int j = 0; j < 3; j++) o[i][j] = a[j][i];
}

__device__ __forceinline__ bool sf_finite3(const float* v) {
  return isfinite(v[0]) && isfinite(v[1]) && isfinite(v[2]);
}

__device__ __forceinline__ void sf_load_cam_rot(const SfCamera& cam, float w[3][3]) {
#pragma unroll
  for (int i = 0; i < 3; i++)
#pragma unroll
    for (int k = 0; k < 3; k++) w[i][k] = cam.rot[i * 3 + k];
}

__device__ __forceinline__ bool sf_geometry(const float mean[3], const float quat[4],
                                            const float log_scale[3], float opacity_logit,
                                            const SfCamera& cam, SfGeometry& g) {
  if (!sf_finite3(mean) || !(isfinite(quat[0]) && isfinite(quat[1]) && isfinite(quat[2]) &&
                             isfinite(quat[3])) ||
      isnan(opacity_logit))
    return false;
#pragma unroll
  for (int k = 0; k < 3; k++)
    if (isnan(log_scale[k]) || log_scale[k] == INFINITY) return false;
  float w[3][3];
  sf_load_cam_rot(cam, w);
#pragma unroll
  for (int i = 0; i < 3; i++)
    g.t[i] = w[i][0] * mean[0] + w[i][1] * mean[1] + w[i][2] * mean[2] + cam.trans[i];
  if (!(g.t[2] >= cam.near_plane && g.t[2] <= cam.far_plane)) return false;
  float n2 = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  if (!(n2 >= SF_MIN_QUAT_NORM_SQ) || !isfinite(n2)) return false;
  g.qnorm = sqrtf(n2);
#pragma unroll
  for (int k = 0; k < 4; k++) g.qn[k] = quat[k] / g.qnorm;
  sf_quat_to_rotmat(g.qn, g.rotq);
#pragma unroll
  for (int k = 0; k < 3; k++) g.scale[k] = sf_expf(log_scale[k]);
  if (!sf_finite3(g.scale)) return false;
#pragma unroll
  for (int i = 0; i < 3; i++)
#pragma unroll
    for (int k = 0; k < 3; k++) g.m[i][k] = g.rotq[i][k] * g.scale[k];
  float mt[3][3], sigma[3][3], ws[3][3], wt[3][3];
  sf_transpose3(g.m, mt);
  sf_matmul3(g.m, mt, sigma);
  sf_matmul3(w, sigma, ws);
  sf_transpose3(w, wt);
  sf_matmul3(ws, wt, g.cov_c);

  float z = g.t[2];
  float rx = g.t[0] / z;
  float ry = g.t[1] / z;
  float ux = fminf(fmaxf(rx, -cam.lim_x_neg), cam.lim_x_pos);
  float uy = fminf(fmaxf(ry, -cam.lim_y_neg), cam.lim_y_pos);
  g.clamped[0] = ux != rx;
  g.clamped[1] = uy != ry;
  g.ratio[0] = ux;
  g.ratio[1] = uy;
  g.jac[0][0] = cam.fx / z;
  g.jac[0][1] = 0.0f;
  g.jac[0][2] = -cam.fx * ux / z;
  g.jac[1][0] = 0.0f;
  g.jac[1][1] = cam.fy / z;
  g.jac[1][2] = -cam.fy * uy / z;
  float jc[2][3];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int k = 0; k < 3; k++)
      jc[i][k] = g.jac[i][0] * g.cov_c[0][k] + g.jac[i][1] * g.cov_c[1][k] + g.jac[i][2] * g.cov_c[2][k];
  g.cov2d[0] = jc[0][0] * g.jac[0][0] + jc[0][1] * g.jac[0][1] + jc[0][2] * g.jac[0][2];
  g.cov2d[1] = jc[0][0] * g.jac[1][0] + jc[0][1] * g.jac[1][1] + jc[0][2] * g.jac[1][2];
  g.cov2d[2] = jc[1][0] * g.jac[1][0] + jc[1][1] * g.jac[1][1] + jc[1][2] * g.jac[1][2];
  return true;
}

// Unit direction from the camera centre to the mean, and the distance.
__device__ __forceinline__ float sf_view_dir(const float mean[3], const SfCamera& cam, float dir[3]) {
  float d0 = mean[0] - cam.position[0];
  float d1 = mean[1] - cam.position[1];
  float d2 = mean[2] - cam.position[2];
  float len = sqrtf(d0 * d0 + d1 * d1 + d2 * d2);
  dir[0] = d0 / len;
  dir[1] = d1 / len;
  dir[2] = d2 / len;
  return len;
}

// Blurred-covariance quantities (project.rs: project_inner, up to the conic).
// Returns false when det_b is not positive and finite.
__device__ __forceinline__ bool sf_blur(const SfGeometry& g, float eps2d, int antialiased,
                                        float conic[3], float& det_b, float& compensation,
                                        float& b00, float& b11) {
  float c00 = g.cov2d[0], c01 = g.cov2d[1], c11 = g.cov2d[2];
  b00 = c00 + eps2d;
  b11 = c11 + eps2d;
  det_b = b00 * b11 - c01 * c01;
  if (!(det_b > 0.0f) || !isfinite(det_b)) return false;
  if (antialiased) {
    float det0 = c00 * c11 - c01 * c01;
    compensation = sqrtf(fmaxf(det0 / det_b, 0.0f));
  } else {
    compensation = 1.0f;
  }
  conic[0] = b11 / det_b;
  conic[1] = -c01 / det_b;
  conic[2] = b00 / det_b;
  return true;
}

__device__ __forceinline__ float sf_sigmoid(float x) { return 1.0f / (1.0f + sf_expf(-x)); }
