// Stage 3 forward: front-to-back alpha compositing (rasterize.rs:
// rasterize_forward_image). One block of 16x16 threads per tile, one thread
// per pixel, as gsplat; the tile's depth-sorted Gaussians are staged through
// shared memory in batches of 256. Stores, per pixel, the final
// transmittance, the number of list entries up to the last composited
// Gaussian and the raw accumulated depth for the backward pass.
//
// Lane compaction: a Gaussian typically covers a small part of the tile, so
// with one-entry-at-a-time processing nearly every entry has some lane of
// the warp that composites it, and the whole warp pays for exp and the
// compositing on every entry. Instead each lane first tests 32 entries with
// the cheap sigma test (a bit mask), then composites only its own candidates,
// in list order: the warp pays for the busiest lane's candidates, not for the
// union. The per-pixel arithmetic and its order are unchanged.
#include "common.cuh"

template <bool EXACT>
__global__ void __launch_bounds__(SF_BLOCK) sf_rasterize_fwd_kernel(SfRasterFwdArgs a) {
  const int c = blockIdx.z;
  const int tile = blockIdx.y * a.tiles_x + blockIdx.x;
  const int tiles_per_cam = a.tiles_x * a.tiles_y;
  const int tid = threadIdx.y * SF_TILE + threadIdx.x;
  const int x = blockIdx.x * SF_TILE + threadIdx.x;
  const int y = blockIdx.y * SF_TILE + threadIdx.y;
  const bool inside = x < a.width && y < a.height;
  const float px = (float)x + 0.5f;
  const float py = (float)y + 0.5f;

  const uint32_t gt = (uint32_t)c * tiles_per_cam + tile;
  const uint32_t start = a.tile_start[gt];
  const uint32_t end = a.tile_start[gt + 1];
  const float4* splats = reinterpret_cast<const float4*>(a.splats);

  __shared__ float4 sh0[SF_BLOCK], sh1[SF_BLOCK], sh2[SF_BLOCK];
  __shared__ double s_tab[16];
  if (tid < 16) s_tab[tid] = SF_EXP2_16[tid];

  float t = 1.0f;
  float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
  uint32_t last = 0;
  bool done = !inside;

  for (uint32_t base = start; base < end; base += SF_BLOCK) {
    // Also the barrier that protects the previous batch's shared data.
    if (__syncthreads_count(done) == SF_BLOCK) break;
    const uint32_t pos = base + tid;
    if (pos < end) {
      const uint32_t id = a.sorted_ids[pos];
      const float4* s = splats + (size_t)id * SF_SPLAT_F4;
      sh0[tid] = s[0];
      sh1[tid] = s[1];
      sh2[tid] = s[2];
    }
    __syncthreads();
    const uint32_t n = min((uint32_t)SF_BLOCK, end - base);
    for (uint32_t j0 = 0; j0 < n && !done; j0 += 32) {
      const uint32_t m = min(32u, n - j0);
      uint32_t mask = 0;
#pragma unroll 4
      for (uint32_t jj = 0; jj < m; jj++)
        if (sf_sigma_ok(sh0[j0 + jj], sh1[j0 + jj], px, py)) mask |= 1u << jj;
      while (mask) {
        const uint32_t j = j0 + (uint32_t)(__ffs(mask) - 1);
        mask &= mask - 1;
        float alpha, gauss, dx, dy;
        bool clamped;
        if (!sf_eval<EXACT>(sh0[j], sh1[j], px, py, alpha, gauss, dx, dy, clamped, s_tab)) continue;
        const float next_t = t * (1.0f - alpha);
        if (next_t <= SF_T_STOP) {
          done = true;
          break;
        }
        const float w = alpha * t;
        const float4 col = sh2[j];
        acc0 += w * col.x;
        acc1 += w * col.y;
        acc2 += w * col.z;
        acc3 += w * col.w;
        t = next_t;
        last = base + j + 1 - start;
      }
    }
  }
  if (!inside) return;
  const size_t p = ((size_t)c * a.height + y) * a.width + x;
  a.rgb[p * 3 + 0] = acc0 + t * a.bg[0];
  a.rgb[p * 3 + 1] = acc1 + t * a.bg[1];
  a.rgb[p * 3 + 2] = acc2 + t * a.bg[2];
  const float alpha = 1.0f - t;
  a.alpha[p] = alpha;
  a.depth[p] = a.normalize_depth ? acc3 / fmaxf(alpha, SF_DEPTH_ALPHA_EPS) : acc3;
  a.t_final[p] = t;
  a.last[p] = last;
  a.raw_depth[p] = acc3;
}

extern "C" int sf_rasterize_fwd(const SfRasterFwdArgs* a, void* stream) {
  if (a->num_cams == 0) return 0;
  cudaStream_t s = (cudaStream_t)stream;
  dim3 grid(a->tiles_x, a->tiles_y, a->num_cams);
  dim3 block(SF_TILE, SF_TILE, 1);
  if (a->variant & SF_VARIANT_FAST_EXP)
    sf_rasterize_fwd_kernel<false><<<grid, block, 0, s>>>(*a);
  else
    sf_rasterize_fwd_kernel<true><<<grid, block, 0, s>>>(*a);
  SF_CHECK_LAUNCH();
  return 0;
}
