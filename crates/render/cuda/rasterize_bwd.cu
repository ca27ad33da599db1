// Stage 3 backward (rasterize.rs: rasterize_backward_image). One block per
// 16x16 tile, PPT vertically adjacent pixels per thread (see
// rasterize_fwd.cu; with PPT = 2 a warp covers 4 rows and reduces once for
// 64 pixels). Each pixel walks its list back to front from its
// last contributor, recovering T_i = T_{i+1} / (1 - alpha_i) from the final
// transmittance. Gaussians are staged through shared memory in batches of
// 256, back to front. Per Gaussian, each warp sums its 32 pixels'
// contributions (12 values) with a transposing reduce-scatter (13 shuffles
// instead of 12 x 5) and 12 lanes issue one atomicAdd each into the
// per-(camera, Gaussian) screen-space gradient; warps where no pixel used
// the Gaussian skip it (as gsplat, which reduces with cg::reduce and adds
// from lane 0), and where only one or two did, those lanes add directly.
#include "common.cuh"

// v[0..12) summed over the warp by a transposing reduce-scatter (13
// shuffles instead of 12 x 5): each step exchanges half of a lane's values
// with its partner, so that afterwards lane l holds in v[0] the warp total of
// value sf_scatter_index(l), for the even lanes whose index is valid.
__device__ __forceinline__ void sf_warp_reduce_scatter12(float (&v)[12], int lane) {
  {  // 12 -> 6 (offset 16)
    const bool up = lane & 16;
#pragma unroll
    for (int i = 0; i < 6; i++) {
      const float send = up ? v[i] : v[i + 6];
      const float keep = up ? v[i + 6] : v[i];
      v[i] = keep + __shfl_xor_sync(SF_FULL_MASK, send, 16);
    }
  }
  {  // 6 -> 3 (offset 8)
    const bool up = lane & 8;
#pragma unroll
    for (int i = 0; i < 3; i++) {
      const float send = up ? v[i] : v[i + 3];
      const float keep = up ? v[i + 3] : v[i];
      v[i] = keep + __shfl_xor_sync(SF_FULL_MASK, send, 8);
    }
  }
  {  // 3 (+1 zero) -> 2 (offset 4)
    const bool up = lane & 4;
    const float send0 = up ? v[0] : v[2];
    const float send1 = up ? v[1] : 0.0f;
    const float keep0 = up ? v[2] : v[0];
    const float keep1 = up ? 0.0f : v[1];
    v[0] = keep0 + __shfl_xor_sync(SF_FULL_MASK, send0, 4);
    v[1] = keep1 + __shfl_xor_sync(SF_FULL_MASK, send1, 4);
  }
  {  // 2 -> 1 (offset 2)
    const bool up = lane & 2;
    const float send = up ? v[0] : v[1];
    const float keep = up ? v[1] : v[0];
    v[0] = keep + __shfl_xor_sync(SF_FULL_MASK, send, 2);
  }
  v[0] += __shfl_xor_sync(SF_FULL_MASK, v[0], 1);
}

// Which value lane l holds after sf_warp_reduce_scatter12; -1 for none.
__device__ __forceinline__ int sf_scatter_index(int lane) {
  if (lane & 1) return -1;
  const int b16 = (lane >> 4) & 1, b8 = (lane >> 3) & 1, b4 = (lane >> 2) & 1, b2 = (lane >> 1) & 1;
  const int sub = b4 * 2 + b2;  // position within the padded group of 4
  if (sub == 3) return -1;      // the zero pad
  return b16 * 6 + b8 * 3 + sub;
}

template <int PPT, bool EXACT>
__global__ void __launch_bounds__(SF_BLOCK / PPT) sf_rasterize_bwd_kernel(SfRasterBwdArgs a) {
  constexpr int NT = SF_BLOCK / PPT;
  const int c = blockIdx.z;
  const int tile = blockIdx.y * a.tiles_x + blockIdx.x;
  const int tiles_per_cam = a.tiles_x * a.tiles_y;
  const int tid = threadIdx.y * SF_TILE + threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int x = blockIdx.x * SF_TILE + threadIdx.x;
  const int y0 = blockIdx.y * SF_TILE + threadIdx.y * PPT;
  const float px = (float)x + 0.5f;

  const uint32_t gt = (uint32_t)c * tiles_per_cam + tile;
  const uint32_t start = a.tile_start[gt];
  const float4* splats = reinterpret_cast<const float4*>(a.splats);

  // Per-pixel inputs and state.
  float g0[PPT], g1[PPT], g2[PPT], g3[PPT], g_final[PPT], t_final[PPT], t[PPT], py[PPT];
  float b0[PPT], b1[PPT], b2[PPT], b3[PPT];  // colour (and depth) behind
  uint32_t last[PPT];
  uint32_t my_last = 0;
#pragma unroll
  for (int i = 0; i < PPT; i++) {
    const int y = y0 + i;
    py[i] = (float)y + 0.5f;
    g0[i] = g1[i] = g2[i] = g3[i] = g_final[i] = 0.f;
    t_final[i] = 1.f;
    b0[i] = b1[i] = b2[i] = b3[i] = 0.f;
    last[i] = 0;
    if (x < a.width && y < a.height) {
      const size_t p = ((size_t)c * a.height + y) * a.width + x;
      last[i] = a.last[p];
      t_final[i] = a.t_final[p];
      if (a.g_rgb) {
        g0[i] = a.g_rgb[p * 3 + 0];
        g1[i] = a.g_rgb[p * 3 + 1];
        g2[i] = a.g_rgb[p * 3 + 2];
      }
      float g_alpha = a.g_alpha ? a.g_alpha[p] : 0.f;
      float g_depth = a.g_depth ? a.g_depth[p] : 0.f;
      if (a.normalize_depth && g_depth != 0.f) {
        const float alpha = 1.0f - t_final[i];
        const float am = fmaxf(alpha, SF_DEPTH_ALPHA_EPS);
        if (alpha > SF_DEPTH_ALPHA_EPS) g_alpha -= g_depth * a.raw_depth[p] / (am * am);
        g_depth /= am;
      }
      g3[i] = g_depth;
      const bool active = last[i] != 0 && !(g0[i] == 0.f && g1[i] == 0.f && g2[i] == 0.f &&
                                           g_alpha == 0.f && g_depth == 0.f);
      if (!active) last[i] = 0;
      g_final[i] = g_alpha - (g0[i] * a.bg[0] + g1[i] * a.bg[1] + g2[i] * a.bg[2]);
    }
    t[i] = t_final[i];
    my_last = max(my_last, last[i]);
  }

  // Longest list any pixel of the tile needs.
  __shared__ uint32_t s_max[NT / 32];
  const uint32_t m = __reduce_max_sync(SF_FULL_MASK, my_last);
  if (lane == 0) s_max[warp] = m;
  __syncthreads();
  uint32_t tile_last = 0;
#pragma unroll
  for (int w = 0; w < NT / 32; w++) tile_last = max(tile_last, s_max[w]);

  __shared__ float4 sh0[SF_BLOCK], sh1[SF_BLOCK], sh2[SF_BLOCK];
  __shared__ uint32_t sid[SF_BLOCK];
  __shared__ double s_tab[16];
  if (tid < 16) s_tab[tid] = SF_EXP2_16[tid];
  const int scatter_idx = sf_scatter_index(lane);

  // Batches back to front: list positions [lo, hi), hi = tile_last, ...
  for (int64_t hi = tile_last; hi > 0; hi -= SF_BLOCK) {
    const int64_t lo = hi > SF_BLOCK ? hi - SF_BLOCK : 0;
    __syncthreads();  // previous batch fully consumed
#pragma unroll
    for (int l = 0; l < PPT; l++) {
      const int slot = tid + l * NT;
      const int64_t k = lo + slot;
      if (k < hi) {
        const uint32_t id = a.sorted_ids[start + k];
        const float4* s = splats + (size_t)id * SF_SPLAT_F4;
        sh0[slot] = s[0];
        sh1[slot] = s[1];
        sh2[slot] = s[2];
        sid[slot] = id;
      }
    }
    __syncthreads();
    for (int j = (int)(hi - lo) - 1; j >= 0; j--) {
      const uint32_t k = (uint32_t)(lo + j);
      if (!__any_sync(SF_FULL_MASK, k < my_last)) continue;
      const float4 s0 = sh0[j], s1 = sh1[j];
      float alpha[PPT], gauss[PPT], dx[PPT], dy[PPT];
      bool clamped[PPT], valid[PPT];
      bool any = false;
#pragma unroll
      for (int i = 0; i < PPT; i++) {
        valid[i] = k < last[i] && sf_eval<EXACT>(s0, s1, px, py[i], alpha[i], gauss[i], dx[i],
                                                 dy[i], clamped[i], s_tab);
        any |= valid[i];
      }
      const uint32_t ballot = __ballot_sync(SF_FULL_MASK, any);
      if (ballot == 0) continue;
      float v[12];
#pragma unroll
      for (int q = 0; q < 12; q++) v[q] = 0.f;
      if (any) {
        const float4 col = sh2[j];
#pragma unroll
        for (int i = 0; i < PPT; i++) {
          if (!valid[i]) continue;
          const float ra = 1.0f / (1.0f - alpha[i]);
          t[i] *= ra;
          const float w = alpha[i] * t[i];
          v[8] += w * g0[i];
          v[9] += w * g1[i];
          v[10] += w * g2[i];
          v[11] += w * g3[i];
          float v_alpha = t_final[i] * ra * g_final[i];
          v_alpha += g0[i] * (col.x * t[i] - b0[i] * ra);
          v_alpha += g1[i] * (col.y * t[i] - b1[i] * ra);
          v_alpha += g2[i] * (col.z * t[i] - b2[i] * ra);
          v_alpha += g3[i] * (col.w * t[i] - b3[i] * ra);
          if (!clamped[i]) {
            const float v_sigma = -alpha[i] * v_alpha;
            v[7] += gauss[i] * v_alpha;
            v[4] += v_sigma * 0.5f * dx[i] * dx[i];
            v[5] += v_sigma * dx[i] * dy[i];
            v[6] += v_sigma * 0.5f * dy[i] * dy[i];
            const float gx = -v_sigma * (s0.z * dx[i] + s0.w * dy[i]);
            const float gy = -v_sigma * (s0.w * dx[i] + s1.x * dy[i]);
            v[0] += gx;
            v[1] += gy;
            v[2] += fabsf(gx);
            v[3] += fabsf(gy);
          }
          b0[i] += col.x * w;
          b1[i] += col.y * w;
          b2[i] += col.z * w;
          b3[i] += col.w * w;
        }
      }
      float* dst = a.screen_grads + (size_t)sid[j] * SF_SCREEN_GRAD;
      if (__popc(ballot) <= 2) {
        // One or two lanes used the Gaussian: their own 12 atomics are
        // cheaper than the warp-wide reduction.
        if (any) {
#pragma unroll
          for (int q = 0; q < 12; q++) atomicAdd(dst + q, v[q]);
        }
      } else {
        sf_warp_reduce_scatter12(v, lane);
        if (scatter_idx >= 0) atomicAdd(dst + scatter_idx, v[0]);
      }
    }
  }
}

template <int PPT, bool EXACT>
static int launch_bwd(const SfRasterBwdArgs* a, cudaStream_t s) {
  dim3 grid(a->tiles_x, a->tiles_y, a->num_cams);
  dim3 block(SF_TILE, SF_TILE / PPT, 1);
  sf_rasterize_bwd_kernel<PPT, EXACT><<<grid, block, 0, s>>>(*a);
  SF_CHECK_LAUNCH();
  return 0;
}

extern "C" int sf_rasterize_bwd(const SfRasterBwdArgs* a, void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t e = cudaMemsetAsync(a->screen_grads, 0, sizeof(float) * a->screen_grads_len, s);
  if (e != cudaSuccess) return (int)e;
  if (a->num_cams == 0) return 0;
  const bool fast = a->variant & SF_VARIANT_FAST_EXP;
  if (a->variant & SF_VARIANT_PPT2)
    return fast ? launch_bwd<2, false>(a, s) : launch_bwd<2, true>(a, s);
  return fast ? launch_bwd<1, false>(a, s) : launch_bwd<1, true>(a, s);
}
