// Stage 1 forward: EWA projection, culling, SH colour and tile counts, one
// thread per (camera, Gaussian) (project.rs: project_gaussian; tiles.rs:
// TileGrid::tile_range).
#include "projection.cuh"
#include "sh.cuh"

template <int D>  // SH degree evaluated
__global__ void __launch_bounds__(256) sf_project_fwd_kernel(SfProjectArgs a) {
  const int64_t total = (int64_t)a.num_cams * a.num_gauss;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int c = (int)(i / a.num_gauss);
  const int64_t gi = i - (int64_t)c * a.num_gauss;
  const SfCamera& cam = a.cams[c];
  float4* out = reinterpret_cast<float4*>(a.splats) + i * SF_SPLAT_F4;
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);

  float mean[3] = {a.means[gi * 3 + 0], a.means[gi * 3 + 1], a.means[gi * 3 + 2]};
  float quat[4] = {a.quats[gi * 4 + 0], a.quats[gi * 4 + 1], a.quats[gi * 4 + 2], a.quats[gi * 4 + 3]};
  float ls[3] = {a.log_scales[gi * 3 + 0], a.log_scales[gi * 3 + 1], a.log_scales[gi * 3 + 2]};
  float logit = a.opacity_logits[gi];

  bool ok = false;
  float4 s0, s1, s2;
  uint64_t count = 0;
  do {
    SfGeometry g;
    if (!sf_geometry(mean, quat, ls, logit, cam, g)) break;
    float conic[3], det_b, comp, b00, b11;
    if (!sf_blur(g, a.eps2d, a.antialiased, conic, det_b, comp, b00, b11)) break;
    float mid = 0.5f * (b00 + b11);
    float lambda_max = mid + sqrtf(fmaxf(mid * mid - det_b, (float)0.01));
    float radius = ceilf(3.0f * sqrtf(lambda_max));
    if (!isfinite(radius) || !(radius > a.radius_clip) || !sf_finite3(conic)) break;
    float z = g.t[2];
    float mx = cam.fx * g.t[0] / z + cam.cx;
    float my = cam.fy * g.t[1] / z + cam.cy;
    if (!isfinite(mx) || !isfinite(my) || mx + radius <= 0.0f || mx - radius >= cam.width ||
        my + radius <= 0.0f || my - radius >= cam.height)
      break;
    float opacity = sf_sigmoid(logit) * comp;
    if (!(opacity >= SF_ALPHA_THRESHOLD)) break;
    float dir[3];
    sf_view_dir(mean, cam, dir);
    float basis[16];
    sf_sh_basis(D, dir[0], dir[1], dir[2], basis, nullptr);
    constexpr int ncoef = (D + 1) * (D + 1);
    const float* coeffs = a.sh + gi * (int64_t)a.sh_coeffs * 3;
    float raw[3] = {0.f, 0.f, 0.f};
#pragma unroll
    for (int k = 0; k < ncoef; k++) {
#pragma unroll
      for (int ch = 0; ch < 3; ch++) raw[ch] += basis[k] * coeffs[k * 3 + ch];
    }
    if (!sf_finite3(raw)) break;
    float rgb[3];
#pragma unroll
    for (int ch = 0; ch < 3; ch++) rgb[ch] = fminf(fmaxf(raw[ch] + 0.5f, 0.0f), SF_MAX_COLOR);
    // Tile rectangle, in f64 exactly as TileGrid::tile_range.
    double x = (double)mx, y = (double)my, r = (double)radius;
    double tx = (double)a.tiles_x, ty = (double)a.tiles_y;
    uint32_t tx0 = (uint32_t)fmin(fmax(floor((x - r) / 16.0), 0.0), tx);
    uint32_t tx1 = (uint32_t)fmin(fmax(ceil((x + r) / 16.0), 0.0), tx);
    uint32_t ty0 = (uint32_t)fmin(fmax(floor((y - r) / 16.0), 0.0), ty);
    uint32_t ty1 = (uint32_t)fmin(fmax(ceil((y + r) / 16.0), 0.0), ty);
    if (tx0 < tx1 && ty0 < ty1) count = (uint64_t)(tx1 - tx0) * (uint64_t)(ty1 - ty0);
    s0 = make_float4(mx, my, conic[0], conic[1]);
    s1 = make_float4(conic[2], opacity, sf_logf(opacity * 255.0f), radius);
    s2 = make_float4(rgb[0], rgb[1], rgb[2], z);
    ok = true;
  } while (0);
  if (!ok) {
    s0 = zero;
    s1 = zero;
    s2 = zero;
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  a.tile_counts[i] = count;
  if (a.depth_keys) {
    // Culled Gaussians sort after every visible one of their camera.
    const uint32_t dbits = ok ? __float_as_uint(s2.w) : 0xffffffffu;
    a.depth_keys[i] = ((uint64_t)c << 32) | dbits;
    a.depth_ids[i] = (uint32_t)i;
  }
}

extern "C" int sf_project_fwd(const SfProjectArgs* a, void* stream) {
  const int64_t total = (int64_t)a->num_cams * a->num_gauss;
  if (total == 0) return 0;
  const int threads = 256;
  const unsigned blocks = (unsigned)((total + threads - 1) / threads);
  cudaStream_t s = (cudaStream_t)stream;
  switch (a->sh_degree) {
    case 0: sf_project_fwd_kernel<0><<<blocks, threads, 0, s>>>(*a); break;
    case 1: sf_project_fwd_kernel<1><<<blocks, threads, 0, s>>>(*a); break;
    case 2: sf_project_fwd_kernel<2><<<blocks, threads, 0, s>>>(*a); break;
    default: sf_project_fwd_kernel<3><<<blocks, threads, 0, s>>>(*a); break;
  }
  SF_CHECK_LAUNCH();
  return 0;
}
