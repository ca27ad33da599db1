// Stage 1 backward (project.rs: project_gaussian_backward, and the
// per-Gaussian loop of lib.rs: rasterize_backward). One thread per Gaussian
// loops over the cameras in order, so the parameter gradients, the SH
// gradients and the densification statistics are written once, without
// atomics.
#include "projection.cuh"
#include "sh.cuh"

template <int D>  // SH degree evaluated
__global__ void __launch_bounds__(128) sf_project_bwd_kernel(SfProjectBwdArgs a) {
  const int64_t gi = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (gi >= a.num_gauss) return;
  const float mean[3] = {a.means[gi * 3 + 0], a.means[gi * 3 + 1], a.means[gi * 3 + 2]};
  const float quat[4] = {a.quats[gi * 4 + 0], a.quats[gi * 4 + 1], a.quats[gi * 4 + 2],
                         a.quats[gi * 4 + 3]};
  const float ls[3] = {a.log_scales[gi * 3 + 0], a.log_scales[gi * 3 + 1], a.log_scales[gi * 3 + 2]};
  const float logit = a.opacity_logits[gi];
  const float* coeffs = a.sh + gi * (int64_t)a.sh_coeffs * 3;
  constexpr int ncoef = (D + 1) * (D + 1);
  const float4* splats = reinterpret_cast<const float4*>(a.splats);

  float o_mean[3] = {0.f, 0.f, 0.f};
  float o_quat[4] = {0.f, 0.f, 0.f, 0.f};
  float o_ls[3] = {0.f, 0.f, 0.f};
  float o_logit = 0.f;
  float v_sh[3 * ncoef];
#pragma unroll
  for (int q = 0; q < 3 * ncoef; q++) v_sh[q] = 0.f;
  float norm = 0.f, abs_norm = 0.f, max_radius = 0.f;
  uint32_t count = 0;

  for (int c = 0; c < a.num_cams; c++) {
    const int64_t ci = (int64_t)c * a.num_gauss + gi;
    const float4 s0 = splats[ci * SF_SPLAT_F4 + 0];
    const float4 s1 = splats[ci * SF_SPLAT_F4 + 1];
    const float radius = s1.w;
    if (!(radius > 0.f)) continue;
    const SfCamera& cam = a.cams[c];
    const float* sg = a.screen_grads + ci * SF_SCREEN_GRAD;
    const float vm0 = sg[0], vm1 = sg[1], va0 = sg[2], va1 = sg[3];
    count += 1;
    norm += sqrtf(vm0 * vm0 + vm1 * vm1);
    abs_norm += sqrtf(va0 * va0 + va1 * va1);
    max_radius = fmaxf(max_radius, radius);
    SfGeometry geo;
    if (!sf_geometry(mean, quat, ls, logit, cam, geo)) continue;
    const float vc0 = sg[4], vc1 = sg[5], vc2 = sg[6], v_op = sg[7];
    const float vr[3] = {sg[8], sg[9], sg[10]};
    const float v_depth = sg[11];
    // Compensation, recomputed exactly as the forward did.
    float conic_unused[3], det_b, comp, b00, b11;
    sf_blur(geo, a.eps2d, a.antialiased, conic_unused, det_b, comp, b00, b11);

    // Colour: rgb = clamp(SH(dir) + 0.5, 0, MAX_COLOR).
    float dir[3];
    const float dist = sf_view_dir(mean, cam, dir);
    float v_mean[3] = {0.f, 0.f, 0.f};
    {
      float basis[16];
      float grad[16][3];
#pragma unroll
      for (int k = 0; k < 16; k++) {
        basis[k] = 0.f;
        grad[k][0] = grad[k][1] = grad[k][2] = 0.f;
      }
      sf_sh_basis(D, dir[0], dir[1], dir[2], basis, grad);
      float raw[3] = {0.f, 0.f, 0.f};
#pragma unroll
      for (int k = 0; k < ncoef; k++)
#pragma unroll
        for (int ch = 0; ch < 3; ch++) raw[ch] += basis[k] * coeffs[k * 3 + ch];
      float v_raw[3];
#pragma unroll
      for (int ch = 0; ch < 3; ch++) {
        const float val = raw[ch] + 0.5f;
        v_raw[ch] = (val > 0.f && val < SF_MAX_COLOR) ? vr[ch] : 0.f;
      }
      float v_dir[3] = {0.f, 0.f, 0.f};
#pragma unroll
      for (int k = 0; k < ncoef; k++) {
          float dot = 0.f;
#pragma unroll
          for (int ch = 0; ch < 3; ch++) {
            v_sh[k * 3 + ch] += basis[k] * v_raw[ch];
            dot += coeffs[k * 3 + ch] * v_raw[ch];
          }
#pragma unroll
          for (int q = 0; q < 3; q++) v_dir[q] += dot * grad[k][q];
        }
      const float dv = dir[0] * v_dir[0] + dir[1] * v_dir[1] + dir[2] * v_dir[2];
#pragma unroll
      for (int k = 0; k < 3; k++) v_mean[k] += (v_dir[k] - dir[k] * dv) / dist;
    }

    // Opacity: o = sigmoid(l) * comp.
    const float sig = sf_sigmoid(logit);
    o_logit += v_op * comp * sig * (1.0f - sig);
    const float v_comp = v_op * sig;

    // Conic = inverse of the blurred covariance: dL/dB = -C G C.
    const float ca = s0.z, cb = s0.w, cc = s1.x;
    const float g00 = vc0, g01 = 0.5f * vc1, g11 = vc2;
    const float cg00 = ca * g00 + cb * g01;
    const float cg01 = ca * g01 + cb * g11;
    const float cg10 = cb * g00 + cc * g01;
    const float cg11 = cb * g01 + cc * g11;
    float v_cov[2][2] = {{-(cg00 * ca + cg01 * cb), -(cg00 * cb + cg01 * cc)},
                         {-(cg10 * ca + cg11 * cb), -(cg10 * cb + cg11 * cc)}};
    if (a.antialiased && comp > 0.f && v_comp != 0.f) {
      const float c00 = geo.cov2d[0], c01 = geo.cov2d[1], c11 = geo.cov2d[2];
      const float det0 = c00 * c11 - c01 * c01;
      if (det0 > 0.f) {
        const float inv0[2][2] = {{c11 / det0, -c01 / det0}, {-c01 / det0, c00 / det0}};
        const float binv[2][2] = {{ca, cb}, {cb, cc}};
        const float k = v_comp * 0.5f * comp;
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
          for (int j = 0; j < 2; j++) v_cov[i][j] += k * (inv0[i][j] - binv[i][j]);
      }
    }
    const float off = 0.5f * (v_cov[0][1] + v_cov[1][0]);
    v_cov[0][1] = off;
    v_cov[1][0] = off;

    // cov2d = J Sc J^T.
    float vj[2][3];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int k = 0; k < 3; k++) vj[i][k] = v_cov[i][0] * geo.jac[0][k] + v_cov[i][1] * geo.jac[1][k];
    float v_cov_c[3][3];
#pragma unroll
    for (int i = 0; i < 3; i++)
#pragma unroll
      for (int k = 0; k < 3; k++) v_cov_c[i][k] = geo.jac[0][i] * vj[0][k] + geo.jac[1][i] * vj[1][k];
    float v_jac[2][3];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int k = 0; k < 3; k++)
        v_jac[i][k] = 2.0f * (vj[i][0] * geo.cov_c[0][k] + vj[i][1] * geo.cov_c[1][k] +
                              vj[i][2] * geo.cov_c[2][k]);

    // Camera-space mean.
    const float tx = geo.t[0], ty = geo.t[1], tz = geo.t[2];
    const float fx = cam.fx, fy = cam.fy;
    const float rz = 1.0f / tz;
    const float rz2 = rz * rz;
    float v_t[3] = {fx * rz * vm0, fy * rz * vm1, -(fx * tx * vm0 + fy * ty * vm1) * rz2};
    v_t[2] += v_depth;
    v_t[2] -= (fx * v_jac[0][0] + fy * v_jac[1][1]) * rz2;
#pragma unroll
    for (int axis = 0; axis < 2; axis++) {
      const float f = axis == 0 ? fx : fy;
      const float vj2 = v_jac[axis][2];
      if (geo.clamped[axis]) {
        v_t[2] += f * geo.ratio[axis] * rz2 * vj2;
      } else {
        const float coord = geo.t[axis];
        v_t[axis] -= f * rz2 * vj2;
        v_t[2] += 2.0f * f * coord * rz2 * rz * vj2;
      }
    }
    float w[3][3];
    sf_load_cam_rot(cam, w);
#pragma unroll
    for (int k = 0; k < 3; k++) v_mean[k] += w[0][k] * v_t[0] + w[1][k] * v_t[1] + w[2][k] * v_t[2];
#pragma unroll
    for (int k = 0; k < 3; k++) o_mean[k] += v_mean[k];

    // World covariance: dL/dSigma = W^T (dL/dSc) W.
    float wt[3][3], tmp[3][3], v_sigma[3][3];
    sf_transpose3(w, wt);
    sf_matmul3(wt, v_cov_c, tmp);
    sf_matmul3(tmp, w, v_sigma);
    float gs[3][3];
#pragma unroll
    for (int i = 0; i < 3; i++)
#pragma unroll
      for (int j = 0; j < 3; j++) gs[i][j] = v_sigma[i][j] + v_sigma[j][i];
    float v_m[3][3];
    sf_matmul3(gs, geo.m, v_m);
    float v_rot[3][3];
#pragma unroll
    for (int i = 0; i < 3; i++)
#pragma unroll
      for (int k = 0; k < 3; k++) v_rot[i][k] = v_m[i][k] * geo.scale[k];
#pragma unroll
    for (int k = 0; k < 3; k++) {
      const float v_scale =
          geo.rotq[0][k] * v_m[0][k] + geo.rotq[1][k] * v_m[1][k] + geo.rotq[2][k] * v_m[2][k];
      o_ls[k] += v_scale * geo.scale[k];
    }
    // Quaternion (project.rs: quat_to_rotmat_backward, then the normalisation).
    {
      const float qw = geo.qn[0], qx = geo.qn[1], qy = geo.qn[2], qz = geo.qn[3];
      const float(*g)[3] = v_rot;
      const float dw = qx * (g[2][1] - g[1][2]) + qy * (g[0][2] - g[2][0]) + qz * (g[1][0] - g[0][1]);
      const float dx = qy * (g[0][1] + g[1][0]) + qz * (g[0][2] + g[2][0]) + qw * (g[2][1] - g[1][2]) -
                       2.0f * qx * (g[1][1] + g[2][2]);
      const float dy = qx * (g[0][1] + g[1][0]) + qz * (g[1][2] + g[2][1]) + qw * (g[0][2] - g[2][0]) -
                       2.0f * qy * (g[0][0] + g[2][2]);
      const float dz = qx * (g[0][2] + g[2][0]) + qy * (g[1][2] + g[2][1]) + qw * (g[1][0] - g[0][1]) -
                       2.0f * qz * (g[0][0] + g[1][1]);
      const float v_qn[4] = {2.0f * dw, 2.0f * dx, 2.0f * dy, 2.0f * dz};
      float dq = 0.f;
#pragma unroll
      for (int k = 0; k < 4; k++) dq += geo.qn[k] * v_qn[k];
#pragma unroll
      for (int k = 0; k < 4; k++) o_quat[k] += (v_qn[k] - geo.qn[k] * dq) / geo.qnorm;
    }

  }

#pragma unroll
  for (int k = 0; k < 3; k++) a.v_means[gi * 3 + k] = o_mean[k];
#pragma unroll
  for (int k = 0; k < 4; k++) a.v_quats[gi * 4 + k] = o_quat[k];
#pragma unroll
  for (int k = 0; k < 3; k++) a.v_log_scales[gi * 3 + k] = o_ls[k];
  a.v_opacity_logits[gi] = o_logit;
  float* vsh_out = a.v_sh + gi * (int64_t)a.sh_coeffs * 3;
  const int nsh = a.sh_coeffs * 3;
#pragma unroll
  for (int q = 0; q < 3 * ncoef; q++) vsh_out[q] = v_sh[q];
  for (int q = 3 * ncoef; q < nsh; q++) vsh_out[q] = 0.f;
  a.grad_norm[gi] = norm;
  a.absgrad_norm[gi] = abs_norm;
  a.visible_count[gi] = count;
  a.max_radius[gi] = max_radius;
}

extern "C" int sf_project_bwd(const SfProjectBwdArgs* a, void* stream) {
  if (a->num_gauss == 0) return 0;
  const int threads = 128;
  const unsigned blocks = (unsigned)((a->num_gauss + threads - 1) / threads);
  cudaStream_t s = (cudaStream_t)stream;
  switch (a->sh_degree) {
    case 0: sf_project_bwd_kernel<0><<<blocks, threads, 0, s>>>(*a); break;
    case 1: sf_project_bwd_kernel<1><<<blocks, threads, 0, s>>>(*a); break;
    case 2: sf_project_bwd_kernel<2><<<blocks, threads, 0, s>>>(*a); break;
    default: sf_project_bwd_kernel<3><<<blocks, threads, 0, s>>>(*a); break;
  }
  SF_CHECK_LAUNCH();
  return 0;
}
