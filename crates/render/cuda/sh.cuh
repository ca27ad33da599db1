// Real spherical harmonics, degrees 0-3 (crates/render/src/sh.rs, same
// constants, same expression order).
#pragma once

#define SF_SH_C0 ((float)0.28209479177387814)
#define SF_SH_C1 ((float)0.4886025119029199)
#define SF_SH_C2_0 ((float)1.0925484305920792)
#define SF_SH_C2_1 ((float)-1.0925484305920792)
#define SF_SH_C2_2 ((float)0.31539156525252005)
#define SF_SH_C2_3 ((float)-1.0925484305920792)
#define SF_SH_C2_4 ((float)0.5462742152960396)
#define SF_SH_C3_0 ((float)-0.5900435899266435)
#define SF_SH_C3_1 ((float)2.890611442640554)
#define SF_SH_C3_2 ((float)-0.4570457994644658)
#define SF_SH_C3_3 ((float)0.3731763325901154)
#define SF_SH_C3_4 ((float)-0.4570457994644658)
#define SF_SH_C3_5 ((float)1.445305721320277)
#define SF_SH_C3_6 ((float)-0.5900435899266435)

// Basis functions 0..(degree+1)^2 at unit direction d; when G is non-null
// also their partial derivatives (sh.rs: sh_basis). Unused entries are left
// untouched (callers zero them).
__device__ __forceinline__ void sf_sh_basis(int degree, float x, float y, float z, float* b,
                                            float (*g)[3]) {
  b[0] = SF_SH_C0;
  if (degree >= 1) {
    const float c1 = SF_SH_C1;
    b[1] = -c1 * y;
    b[2] = c1 * z;
    b[3] = -c1 * x;
    if (g) {
      g[1][0] = 0.0f; g[1][1] = -c1; g[1][2] = 0.0f;
      g[2][0] = 0.0f; g[2][1] = 0.0f; g[2][2] = c1;
      g[3][0] = -c1; g[3][1] = 0.0f; g[3][2] = 0.0f;
    }
  }
  if (degree >= 2) {
    const float k0 = SF_SH_C2_0, k1 = SF_SH_C2_1, k2 = SF_SH_C2_2, k3 = SF_SH_C2_3, k4 = SF_SH_C2_4;
    float xx = x * x, yy = y * y, zz = z * z;
    b[4] = k0 * x * y;
    b[5] = k1 * y * z;
    b[6] = k2 * (2.0f * zz - xx - yy);
    b[7] = k3 * x * z;
    b[8] = k4 * (xx - yy);
    if (g) {
      g[4][0] = k0 * y; g[4][1] = k0 * x; g[4][2] = 0.0f;
      g[5][0] = 0.0f; g[5][1] = k1 * z; g[5][2] = k1 * y;
      g[6][0] = -2.0f * k2 * x; g[6][1] = -2.0f * k2 * y; g[6][2] = 4.0f * k2 * z;
      g[7][0] = k3 * z; g[7][1] = 0.0f; g[7][2] = k3 * x;
      g[8][0] = 2.0f * k4 * x; g[8][1] = -2.0f * k4 * y; g[8][2] = 0.0f;
    }
  }
  if (degree >= 3) {
    const float k0 = SF_SH_C3_0, k1 = SF_SH_C3_1, k2 = SF_SH_C3_2, k3 = SF_SH_C3_3,
                k4 = SF_SH_C3_4, k5 = SF_SH_C3_5, k6 = SF_SH_C3_6;
    float xx = x * x, yy = y * y, zz = z * z;
    b[9] = k0 * y * (3.0f * xx - yy);
    b[10] = k1 * x * y * z;
    b[11] = k2 * y * (4.0f * zz - xx - yy);
    b[12] = k3 * z * (2.0f * zz - 3.0f * xx - 3.0f * yy);
    b[13] = k4 * x * (4.0f * zz - xx - yy);
    b[14] = k5 * z * (xx - yy);
    b[15] = k6 * x * (xx - 3.0f * yy);
    if (g) {
      g[9][0] = k0 * 6.0f * x * y; g[9][1] = k0 * 3.0f * (xx - yy); g[9][2] = 0.0f;
      g[10][0] = k1 * y * z; g[10][1] = k1 * x * z; g[10][2] = k1 * x * y;
      g[11][0] = -2.0f * k2 * x * y;
      g[11][1] = k2 * (4.0f * zz - xx - 3.0f * yy);
      g[11][2] = 8.0f * k2 * y * z;
      g[12][0] = -6.0f * k3 * x * z;
      g[12][1] = -6.0f * k3 * y * z;
      g[12][2] = k3 * (6.0f * zz - 3.0f * xx - 3.0f * yy);
      g[13][0] = k4 * (4.0f * zz - 3.0f * xx - yy);
      g[13][1] = -2.0f * k4 * x * y;
      g[13][2] = 8.0f * k4 * x * z;
      g[14][0] = 2.0f * k5 * x * z; g[14][1] = -2.0f * k5 * y * z; g[14][2] = k5 * (xx - yy);
      g[15][0] = 3.0f * k6 * (xx - yy); g[15][1] = -6.0f * k6 * x * y; g[15][2] = 0.0f;
    }
  }
}

__device__ __forceinline__ int sf_num_sh_coeffs(int degree) { return (degree + 1) * (degree + 1); }
