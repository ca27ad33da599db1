// Stage 2: tile intersection (tiles.rs: bin_gaussians), as gsplat's
// isect_tiles + isect_offset_encode, with a depth presort:
//   1. stable CUB radix sort of the (camera, depth) keys of all Gaussians
//      (culled ones last in their camera): each camera's Gaussians front to
//      back, equal depths in index order — the "list order";
//   2. inclusive prefix sum of the tile counts in list order (CUB);
//   3. per-camera totals, read back once by the host (buffer sizes, the
//      max_intersections check);
//   4. one (key, id) pair per (tile, Gaussian), written in list order:
//      key = camera*T + tile (32 bits), id = camera*N + Gaussian;
//   5. stable CUB radix sort over the key bits only (2 passes of 8 bits for
//      up to 65536 tiles): per tile, front to back, equal depths in index
//      order, exactly the CPU's order;
//   6. tile_start[t] = first sorted position of tile t (t = 0..C*T).
// With SF_VARIANT_FULL_SORT (kept for comparison) step 1 is skipped, the
// list order is the index order, and step 5 sorts 64-bit (tile << 32 | depth)
// keys over 32 + key_bits bits, as gsplat does.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "common.cuh"

static size_t depth_sort_temp_bytes(int64_t n, int cam_bits) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint64_t> k(nullptr, nullptr);
  cub::DoubleBuffer<uint32_t> v(nullptr, nullptr);
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, n, 0, 32 + cam_bits);
  return bytes;
}

extern "C" size_t sf_scan_temp_bytes(int64_t n, int presort, int cam_bits) {
  size_t bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, bytes, (uint64_t*)nullptr, (uint64_t*)nullptr, n);
  if (presort) {
    size_t b2 = depth_sort_temp_bytes(n, cam_bits);
    if (b2 > bytes) bytes = b2;
  }
  return bytes;
}

__global__ void sf_gather_counts_kernel(const uint64_t* __restrict__ counts,
                                        const uint32_t* __restrict__ order, int64_t n,
                                        uint64_t* __restrict__ out) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j < n) out[j] = counts[order[j]];
}

__global__ void sf_totals_kernel(const uint64_t* offsets, uint64_t* totals, int num_cams, int num_gauss) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= num_cams) return;
  int64_t end = (int64_t)(c + 1) * num_gauss - 1;
  uint64_t before = c == 0 ? 0 : offsets[(int64_t)c * num_gauss - 1];
  totals[c] = offsets[end] - before;
}

extern "C" int sf_scan_counts(const SfScanArgs* a, void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
  const int64_t n = (int64_t)a->num_cams * a->num_gauss;
  *a->out_selector = 0;
  if (n == 0) {
    cudaError_t e = cudaMemsetAsync(a->totals, 0, sizeof(uint64_t) * a->num_cams, s);
    return (int)e;
  }
  cudaError_t e;
  if (a->presort) {
    cub::DoubleBuffer<uint64_t> k(a->dkeys[0], a->dkeys[1]);
    cub::DoubleBuffer<uint32_t> v(a->dvals[0], a->dvals[1]);
    size_t bytes = a->temp_bytes;
    e = cub::DeviceRadixSort::SortPairs(a->temp, bytes, k, v, n, 0, 32 + a->cam_bits, s);
    if (e != cudaSuccess) return (int)e;
    *a->out_selector = v.selector;
    sf_gather_counts_kernel<<<(unsigned)((n + 255) / 256), 256, 0, s>>>(a->counts, v.Current(), n,
                                                                         a->offsets);
    SF_CHECK_LAUNCH();
  } else {
    e = cudaMemcpyAsync(a->offsets, a->counts, sizeof(uint64_t) * n, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess) return (int)e;
  }
  size_t bytes = a->temp_bytes;
  e = cub::DeviceScan::InclusiveSum(a->temp, bytes, a->offsets, a->offsets, n, s);
  if (e != cudaSuccess) return (int)e;
  sf_totals_kernel<<<(a->num_cams + 127) / 128, 128, 0, s>>>(a->offsets, a->totals, a->num_cams,
                                                              a->num_gauss);
  SF_CHECK_LAUNCH();
  return 0;
}

extern "C" int sf_read_totals(const uint64_t* totals_dev, uint64_t* totals_host, int num_cams,
                              void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
  cudaError_t e = cudaMemcpyAsync(totals_host, totals_dev, sizeof(uint64_t) * num_cams,
                                  cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaStreamSynchronize(s);
}

extern "C" size_t sf_sort_temp_bytes(uint64_t n, int key_bits, int presort) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint32_t> v(nullptr, nullptr);
  if (presort) {
    cub::DoubleBuffer<uint32_t> k(nullptr, nullptr);
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, (int64_t)n, 0, key_bits);
  } else {
    cub::DoubleBuffer<uint64_t> k(nullptr, nullptr);
    cub::DeviceRadixSort::SortPairs(nullptr, bytes, k, v, (int64_t)n, 0, 32 + key_bits);
  }
  return bytes;
}

// One thread per list position: writes its Gaussian's tiles' keys at its
// offset. KEY = uint32_t: key = tile; KEY = uint64_t: key = tile << 32 | depth.
template <typename KEY>
__global__ void __launch_bounds__(256) sf_emit_kernel(const float4* __restrict__ splats,
                                                      const uint64_t* __restrict__ offsets,
                                                      const uint32_t* __restrict__ order,
                                                      int num_cams, int num_gauss, int tiles_x,
                                                      int tiles_y, KEY* keys, uint32_t* vals) {
  const int64_t total = (int64_t)num_cams * num_gauss;
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= total) return;
  const uint64_t end = offsets[j];
  const uint64_t start = j == 0 ? 0 : offsets[j - 1];
  if (end == start) return;
  const int64_t i = order ? (int64_t)order[j] : j;
  const float4 s0 = splats[i * SF_SPLAT_F4 + 0];
  const float4 s1 = splats[i * SF_SPLAT_F4 + 1];
  const int c = (int)(i / num_gauss);
  double x = (double)s0.x, y = (double)s0.y, r = (double)s1.w;
  double tx = (double)tiles_x, ty = (double)tiles_y;
  uint32_t tx0 = (uint32_t)fmin(fmax(floor((x - r) / 16.0), 0.0), tx);
  uint32_t tx1 = (uint32_t)fmin(fmax(ceil((x + r) / 16.0), 0.0), tx);
  uint32_t ty0 = (uint32_t)fmin(fmax(floor((y - r) / 16.0), 0.0), ty);
  uint32_t ty1 = (uint32_t)fmin(fmax(ceil((y + r) / 16.0), 0.0), ty);
  uint64_t low = 0;
  if (sizeof(KEY) == 8) low = (uint64_t)__float_as_uint(splats[i * SF_SPLAT_F4 + 2].w);
  const uint64_t tile_base = (uint64_t)c * tiles_x * tiles_y;
  uint64_t o = start;
  for (uint32_t yy = ty0; yy < ty1; yy++) {
    for (uint32_t xx = tx0; xx < tx1; xx++) {
      const uint64_t tile = tile_base + (uint64_t)yy * tiles_x + xx;
      if (sizeof(KEY) == 8)
        keys[o] = (KEY)((tile << 32) | low);
      else
        keys[o] = (KEY)tile;
      vals[o] = (uint32_t)i;
      o++;
    }
  }
}

// tile_start[t] for t in (tile(i-1), tile(i)] is i; the last thread fills the tail.
template <typename KEY>
__global__ void sf_tile_start_kernel(const KEY* __restrict__ keys, uint64_t n, uint32_t num_tiles,
                                     uint32_t* tile_start) {
  const int shift = sizeof(KEY) == 8 ? 32 : 0;
  const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const uint32_t cur = (uint32_t)((uint64_t)keys[i] >> shift);
  const int64_t prev = i == 0 ? -1 : (int64_t)((uint64_t)keys[i - 1] >> shift);
  for (int64_t t = prev + 1; t <= (int64_t)cur; t++) tile_start[t] = (uint32_t)i;
  if (i == n - 1)
    for (uint32_t t = cur + 1; t <= num_tiles; t++) tile_start[t] = (uint32_t)n;
}

template <typename KEY>
static int intersect(const SfIsectArgs* a, cudaStream_t s, int begin_bit_of_tile) {
  const uint32_t num_tiles = (uint32_t)a->num_cams * a->tiles_x * a->tiles_y;
  const uint64_t n = a->num_isect;
  const int64_t total = (int64_t)a->num_cams * a->num_gauss;
  KEY* k0 = (KEY*)a->keys[0];
  KEY* k1 = (KEY*)a->keys[1];
  sf_emit_kernel<KEY><<<(unsigned)((total + 255) / 256), 256, 0, s>>>(
      (const float4*)a->splats, a->offsets, a->order, a->num_cams, a->num_gauss, a->tiles_x,
      a->tiles_y, k0, a->vals[0]);
  SF_CHECK_LAUNCH();
  cub::DoubleBuffer<KEY> k(k0, k1);
  cub::DoubleBuffer<uint32_t> v(a->vals[0], a->vals[1]);
  size_t bytes = a->temp_bytes;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(a->temp, bytes, k, v, (int64_t)n, 0,
                                                  begin_bit_of_tile + a->key_bits, s);
  if (e != cudaSuccess) return (int)e;
  *a->out_selector = v.selector;
  sf_tile_start_kernel<KEY><<<(unsigned)((n + 255) / 256), 256, 0, s>>>(k.Current(), n, num_tiles,
                                                                         a->tile_start);
  SF_CHECK_LAUNCH();
  return 0;
}

extern "C" int sf_intersect(const SfIsectArgs* a, void* stream) {
  cudaStream_t s = (cudaStream_t)stream;
  const uint32_t num_tiles = (uint32_t)a->num_cams * a->tiles_x * a->tiles_y;
  *a->out_selector = 0;
  if (a->num_isect == 0) {
    return (int)cudaMemsetAsync(a->tile_start, 0, sizeof(uint32_t) * (num_tiles + 1), s);
  }
  if (a->order) return intersect<uint32_t>(a, s, 0);
  return intersect<uint64_t>(a, s, 32);
}

