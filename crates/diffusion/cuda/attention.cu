// Fused multi-head attention (see api.h for the contract), flash-attention 2
// style.
//
// One block of 4 warps owns 64 query rows of one (batch, head); each warp owns
// 16 of them and keeps everything for its rows in registers: the Q fragments,
// the 16×64 score tile of the current keys, the running row maximum and sum,
// and the 16×D output accumulator. Per tile of 64 keys:
//   S = Q·Kᵀ      mma.sync m16n8k16 (f32 accumulation), K fragments by ldmatrix
//   P = exp(S−m)  online softmax in f32, base-2 exponentials, in registers
//   O = α·O + P·V the accumulator layout of S is the A-operand layout of P, so
//                 P never leaves registers; V fragments by ldmatrix.trans
// K and V tiles are double-buffered in shared memory with cp.async: the next
// tile's copy overlaps this tile's products. Scores never reach memory, so
// memory is O(N) instead of O(N²).
//
// Fragment layouts (PTX ISA, mma.m16n8k16, g = lane/4, t = lane%4):
//   A 16×16: a0,a1 (row g, cols 2t,2t+1)  a2,a3 (row g+8)  a4..a7 (cols +8)
//   B 16×8:  b0,b1 (rows 2t,2t+1, col g)  b2,b3 (rows +8)
//   C 16×8:  c0,c1 (row g, cols 2t,2t+1)  c2,c3 (row g+8)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "api.h"

namespace {

constexpr int kRows = 64;  // query rows per block
constexpr int kKeys = 64;  // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void run(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};
template <>
struct Mma<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void run(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0 bytes read: the destination is zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Shared-memory rows are padded by 16 bytes so that the 8 rows an ldmatrix
// reads fall in distinct banks.
template <int D>
struct Tile {
  static constexpr int ld = D + 8;                     // elements per row
  static constexpr int q_elems = kRows * ld;
  static constexpr int kv_elems = kKeys * ld;
  static constexpr size_t bytes = size_t(q_elems + 4 * kv_elems) * 2;  // Q, K×2, V×2
};

// Copies rows [row0, row0 + Rows) of one head (D elements at `base`, rows
// `stride` elements apart, `count` rows valid) into `dst` (pitch Tile::ld).
template <typename T, int D, int Rows>
__device__ __forceinline__ void load_tile(T* dst, const T* base, size_t stride, int row0, int count) {
  constexpr int kVecs = D / 8;  // 16-byte vectors per row
  for (int i = threadIdx.x; i < Rows * kVecs; i += kThreads) {
    const int r = i / kVecs, c = (i % kVecs) * 8;
    const bool valid = row0 + r < count;
    cp_async16(dst + r * Tile<D>::ld + c, valid ? base + size_t(row0 + r) * stride + c : base, valid);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     T* __restrict__ out, int heads, int nq, int nk, float scale_log2) {
  constexpr int ld = Tile<D>::ld;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + Tile<D>::q_elems;           // two buffers
  T* s_v = s_k + 2 * Tile<D>::kv_elems;      // two buffers

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kRows;
  const size_t stride = size_t(heads) * D;
  const T* qb = q + size_t(b) * nq * stride + size_t(h) * D;
  const T* kb = k + size_t(b) * nk * stride + size_t(h) * D;
  const T* vb = v + size_t(b) * nk * stride + size_t(h) * D;
  const int tiles = (nk + kKeys - 1) / kKeys;

  // Commit groups, in order: [Q, K0] [V0], then per tile [K next] [V next]
  // (empty after the last tile, to keep the counting uniform).
  load_tile<T, D, kRows>(s_q, qb, stride, q0, nq);
  load_tile<T, D, kKeys>(s_k, kb, stride, 0, nk);
  cp_async_commit();
  load_tile<T, D, kKeys>(s_v, vb, stride, 0, nk);
  cp_async_commit();

  uint32_t qf[D / 16][4];  // this warp's 16 query rows as A fragments
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY;  // running max of rows g and g+8 (base 2, scaled)
  float l0 = 0.f, l1 = 0.f;              // this thread's share of the running sums

  // ldmatrix address roles: lane → (matrix lane/8, row lane%8).
  const int mat = lane >> 3, mrow = lane & 7;

  for (int tile = 0; tile < tiles; ++tile) {
    const int buf = tile & 1;
    T* kt = s_k + buf * Tile<D>::kv_elems;
    T* vt = s_v + buf * Tile<D>::kv_elems;
    cp_async_wait<1>();  // K of this tile (and Q) landed; its V may be in flight
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc)
        ldmatrix_x4(qf[kc], s_q + (warp * 16 + (mat & 1) * 8 + mrow) * ld + kc * 16 + (mat >> 1) * 8);
    }
    if (tile + 1 < tiles)
      load_tile<T, D, kKeys>(s_k + (buf ^ 1) * Tile<D>::kv_elems, kb, stride, (tile + 1) * kKeys, nk);
    cp_async_commit();

    // S = Q·Kᵀ: 16 rows × 64 keys = 8 n-tiles of 8 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
#pragma unroll
      for (int j = 0; j < kKeys / 8; j += 2) {
        uint32_t bk[4];  // n-tile j: bk[0], bk[1]; n-tile j+1: bk[2], bk[3]
        ldmatrix_x4(bk, kt + (j * 8 + (mat >> 1) * 8 + mrow) * ld + kc * 16 + (mat & 1) * 8);
        Mma<T>::run(s[j], qf[kc], bk[0], bk[1]);
        Mma<T>::run(s[j + 1], qf[kc], bk[2], bk[3]);
      }
    }

    // Online softmax for rows g (elements 0, 1) and g+8 (elements 2, 3).
    const int key0 = tile * kKeys + 2 * t4;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool valid = key0 + j * 8 + e < nk;
        s[j][e] = valid ? s[j][e] * scale_log2 : -INFINITY;
        s[j][2 + e] = valid ? s[j][2 + e] * scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[j][e]);
        mx1 = fmaxf(mx1, s[j][2 + e]);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);  // finite: each tile has a key
    const float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
    m0 = mn0;
    m1 = mn1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      s[j][0] = exp2f(s[j][0] - mn0);
      s[j][1] = exp2f(s[j][1] - mn0);
      s[j][2] = exp2f(s[j][2] - mn1);
      s[j][3] = exp2f(s[j][3] - mn1);
      sum0 += s[j][0] + s[j][1];
      sum1 += s[j][2] + s[j][3];
    }
    l0 = l0 * a0 + sum0;
    l1 = l1 * a1 + sum1;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= a0;
      o[j][1] *= a0;
      o[j][2] *= a1;
      o[j][3] *= a1;
    }

    cp_async_wait<1>();  // V of this tile landed; the next K may be in flight
    __syncthreads();
    if (tile + 1 < tiles)
      load_tile<T, D, kKeys>(s_v + (buf ^ 1) * Tile<D>::kv_elems, vb, stride, (tile + 1) * kKeys, nk);
    cp_async_commit();

    // O += P·V: 4 chunks of 16 keys; P's A fragments are S's accumulators.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t pa[4];
      pa[0] = Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pa[1] = Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pa[2] = Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pa[3] = Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        uint32_t bv[4];  // d-tile j: bv[0], bv[1]; d-tile j+1: bv[2], bv[3]
        ldmatrix_x4_trans(bv, vt + (kk * 16 + (mat & 1) * 8 + mrow) * ld + j * 8 + (mat >> 1) * 8);
        Mma<T>::run(o[j], pa, bv[0], bv[1]);
        Mma<T>::run(o[j + 1], pa, bv[2], bv[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Row sums are spread over the 4 threads of a quad.
#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
  const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
  T* ob = out + size_t(b) * nq * stride + size_t(h) * D + 2 * t4;
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    if (r0 < nq)
      *reinterpret_cast<uint32_t*>(ob + size_t(r0) * stride + j * 8) = Mma<T>::pack(o[j][0] * inv0, o[j][1] * inv0);
    if (r1 < nq)
      *reinterpret_cast<uint32_t*>(ob + size_t(r1) * stride + j * 8) = Mma<T>::pack(o[j][2] * inv1, o[j][3] * inv1);
  }
}

template <typename T, int D>
cudaError_t launch(const SfAttentionArgs& a, cudaStream_t stream) {
  constexpr size_t smem = Tile<D>::bytes;
  auto kernel = attention_kernel<T, D>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((a.nq + kRows - 1) / kRows, a.heads, a.batch);
  kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(a.q), static_cast<const T*>(a.k),
                                           static_cast<const T*>(a.v), static_cast<T*>(a.out), a.heads,
                                           a.nq, a.nk, a.scale * 1.4426950408889634f);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_dim(const SfAttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64: return launch<T, 64>(a, stream);
    case 128: return launch<T, 128>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

extern "C" int sf_attention(const SfAttentionArgs* a, void* stream) {
  if (a->batch <= 0 || a->heads <= 0 || a->nq <= 0 || a->nk <= 0) return cudaErrorInvalidValue;
  if (a->batch > 65535 || a->heads > 65535) return cudaErrorInvalidValue;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case SF_DTYPE_F16: return dispatch_dim<__half>(*a, s);
    case SF_DTYPE_BF16: return dispatch_dim<__nv_bfloat16>(*a, s);
    default: return cudaErrorInvalidValue;
  }
}
