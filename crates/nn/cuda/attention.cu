// Fused multi-head attention (see api.h for the contract), flash-attention 2
// style.
//
// One block of WARPS warps owns WARPS·MT·16 query rows of one (batch, head);
// each warp owns MT m-tiles of 16 rows (MT = 1 or 2) and keeps in registers
// the 16×64 score tile of the current keys of each, the running row maxima
// and sums, and the MT·16×D output accumulator. Per tile of 64 keys:
//   S = Q·Kᵀ      mma.sync m16n8k16 (f32 accumulation), K fragments by ldmatrix
//   P = exp(S−m)  online softmax in f32, base-2 exponentials, in registers
//   O = α·O + P·V the accumulator layout of S is the A-operand layout of P, so
//                 P never leaves registers; V fragments by ldmatrix.trans
// Each K and V fragment read from shared memory feeds the MT m-tiles of its
// warp, and each K/V tile the WARPS·MT·16 rows of its block: more rows per
// warp cut shared-memory reads per MMA, more per block cut L2 reads of K/V.
// Q fragments stay in registers when they fit (D = 64, or MT = 1); at D = 128
// with MT = 2 the accumulators need the registers, so Q stays in shared
// memory and its A fragment of each k-chunk is re-read inside S = Q·Kᵀ.
// K and V tiles are double-buffered in shared memory with cp.async: the next
// tile's copy overlaps this tile's products. Scores never reach memory, so
// memory is O(N) instead of O(N²). The block shapes instantiated are listed
// at `variant` in api.h; kDefaultVariant below is the one used by default.
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

constexpr int kKeys = 64;  // keys per tile

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
// 2^x, flushing results below 2^−126 to 0 (exp2f without fast math adds
// three instructions per call to produce them): a probability that small
// weighs nothing next to the row maximum's 1.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Block shape: WARPS warps of MT m-tiles (16 query rows each).
template <int D, int WARPS, int MT>
struct Config {
  static constexpr int threads = WARPS * 32;
  static constexpr int rows = WARPS * MT * 16;  // query rows per block
  // Shared-memory rows are padded by 16 bytes so that the 8 rows an ldmatrix
  // reads fall in distinct banks.
  static constexpr int ld = D + 8;  // elements per row
  static constexpr int q_elems = rows * ld;
  static constexpr int kv_elems = kKeys * ld;
  static constexpr size_t smem = size_t(q_elems + 4 * kv_elems) * 2;  // Q, K×2, V×2
  // MT·D/4 registers of Q fragments next to the MT·(D/2 + 32) of the O and S
  // accumulators: at D = 128 with MT = 2 they would spill.
  static constexpr bool q_in_regs = D == 64 || MT == 1;
  // Two resident blocks per SM (their shared memory fits: ≤ 102 KiB each)
  // where that costs no spills: it caps a thread at 65536 / (2·threads)
  // registers, no limit for 4 warps (the cap is 255 anyway) and 128 for 8,
  // which only D = 64 with one m-tile fits.
  static constexpr int min_blocks = WARPS == 4 || (D == 64 && MT == 1) ? 2 : 1;
  static_assert(MT == 1 || MT == 2, "one or two m-tiles per warp");
};

// Copies rows [row0, row0 + Rows) of one head (D elements at `base`, rows
// `stride` elements apart, `count` rows valid) into `dst` (pitch D + 8) with
// the block's `Threads` threads. A fixed number of passes, so that the loop
// unrolls instead of carrying its addresses across the kernel's tile loop.
template <typename T, int D, int Rows, int Threads>
__device__ __forceinline__ void load_tile(T* dst, const T* base, size_t stride, int row0, int count) {
  constexpr int kVecs = D / 8;              // 16-byte vectors per row
  constexpr int kStep = Threads / kVecs;    // rows per pass
  static_assert(Threads % kVecs == 0 && Rows % kStep == 0, "whole rows, whole passes");
  const int r0 = threadIdx.x / kVecs, c = (threadIdx.x % kVecs) * 8;
#pragma unroll
  for (int pass = 0; pass < Rows / kStep; ++pass) {
    const int r = r0 + pass * kStep;
    const bool valid = row0 + r < count;
    cp_async16(dst + r * (D + 8) + c, valid ? base + size_t(row0 + r) * stride + c : base, valid);
  }
}

template <typename T, int D, int WARPS, int MT>
__global__ void __launch_bounds__(Config<D, WARPS, MT>::threads, Config<D, WARPS, MT>::min_blocks)
    attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     T* __restrict__ out, int heads, int nq, int nk, float scale_log2) {
  using C = Config<D, WARPS, MT>;
  constexpr int ld = C::ld;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + C::q_elems;           // two buffers
  T* s_v = s_k + 2 * C::kv_elems;      // two buffers

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * C::rows;
  const size_t stride = size_t(heads) * D;
  const T* qb = q + size_t(b) * nq * stride + size_t(h) * D;
  const T* kb = k + size_t(b) * nk * stride + size_t(h) * D;
  const T* vb = v + size_t(b) * nk * stride + size_t(h) * D;
  const int tiles = (nk + kKeys - 1) / kKeys;

  // Commit groups, in order: [Q, K0] [V0], then per tile [K next] [V next]
  // (empty after the last tile, to keep the counting uniform).
  load_tile<T, D, C::rows, C::threads>(s_q, qb, stride, q0, nq);
  load_tile<T, D, kKeys, C::threads>(s_k, kb, stride, 0, nk);
  cp_async_commit();
  load_tile<T, D, kKeys, C::threads>(s_v, vb, stride, 0, nk);
  cp_async_commit();

  // ldmatrix address roles: lane → (matrix lane/8, row lane%8).
  const int mat = lane >> 3, mrow = lane & 7;
  // This warp's rows are block rows [warp·MT·16, +MT·16), m-tile m at +16·m.
  // Q's A fragment of m-tile m, k-chunk kc lies at q_lane + m·16·ld + kc·16:
  // matrices 0..3 = (rows +0, cols +0) (rows +8, cols +0) (rows +0, cols +8)
  // (rows +8, cols +8) = a0a1, a2a3, a4a5, a6a7.
  const T* q_lane = s_q + (warp * MT * 16 + (mat & 1) * 8 + mrow) * ld + (mat >> 1) * 8;
  uint32_t qf[MT][C::q_in_regs ? D / 16 : 1][4];  // read only when q_in_regs
  float o[MT][D / 8][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[m][j][0] = o[m][j][1] = o[m][j][2] = o[m][j][3] = 0.f;
  // Per m-tile, rows g ([0]) and g+8 ([1]): the running max of the raw
  // scores and this thread's share of the running sum.
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    row_max[m][0] = row_max[m][1] = -INFINITY;
    row_sum[m][0] = row_sum[m][1] = 0.f;
  }

  for (int tile = 0; tile < tiles; ++tile) {
    const int buf = tile & 1;
    T* kt = s_k + buf * C::kv_elems;
    T* vt = s_v + buf * C::kv_elems;
    cp_async_wait<1>();  // K of this tile (and Q) landed; its V may be in flight
    __syncthreads();
    if constexpr (C::q_in_regs) {
      if (tile == 0) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
          for (int kc = 0; kc < D / 16; ++kc) ldmatrix_x4(qf[m][kc], q_lane + m * 16 * ld + kc * 16);
      }
    }
    if (tile + 1 < tiles)
      load_tile<T, D, kKeys, C::threads>(s_k + (buf ^ 1) * C::kv_elems, kb, stride, (tile + 1) * kKeys, nk);
    cp_async_commit();

    // S = Q·Kᵀ: per m-tile 16 rows × 64 keys = 8 n-tiles of 8 keys.
    float s[MT][kKeys / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if constexpr (C::q_in_regs) {
#pragma unroll
          for (int r = 0; r < 4; ++r) qa[m][r] = qf[m][kc][r];
        } else {
          ldmatrix_x4(qa[m], q_lane + m * 16 * ld + kc * 16);
        }
      }
#pragma unroll
      for (int j = 0; j < kKeys / 8; j += 2) {
        uint32_t bk[4];  // n-tile j: bk[0], bk[1]; n-tile j+1: bk[2], bk[3]
        ldmatrix_x4(bk, kt + (j * 8 + (mat >> 1) * 8 + mrow) * ld + kc * 16 + (mat & 1) * 8);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          Mma<T>::run(s[m][j], qa[m], bk[0], bk[1]);
          Mma<T>::run(s[m][j + 1], qa[m], bk[2], bk[3]);
        }
      }
    }

    // Online softmax for rows g (elements 0, 1) and g+8 (elements 2, 3) of
    // each m-tile, kept in units of the raw scores: max(s)·c = max(s·c) for
    // c > 0, so exp2(s·c − m·c) is one FFMA and one ex2 per score. P is
    // packed into A fragments at once so that S's f32 registers are free
    // before P·V.
    if ((tile + 1) * kKeys > nk) {  // the ragged last tile: keys ≥ nk weigh nothing
      const int key0 = tile * kKeys + 2 * t4;
#pragma unroll
      for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            if (key0 + j * 8 + e >= nk) s[m][j][e] = s[m][j][2 + e] = -INFINITY;
    }
    uint32_t p[MT][kKeys / 16][4];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        mx0 = fmaxf(mx0, fmaxf(s[m][j][0], s[m][j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[m][j][2], s[m][j][3]));
      }
#pragma unroll
      for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
      }
      // Finite: each tile has a key.
      const float mn0 = fmaxf(row_max[m][0], mx0), mn1 = fmaxf(row_max[m][1], mx1);
      const float a0 = exp2_ftz((row_max[m][0] - mn0) * scale_log2);
      const float a1 = exp2_ftz((row_max[m][1] - mn1) * scale_log2);
      row_max[m][0] = mn0;
      row_max[m][1] = mn1;
      const float ms0 = -mn0 * scale_log2, ms1 = -mn1 * scale_log2;
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int j = 0; j < kKeys / 8; ++j) {
        s[m][j][0] = exp2_ftz(__fmaf_rn(s[m][j][0], scale_log2, ms0));
        s[m][j][1] = exp2_ftz(__fmaf_rn(s[m][j][1], scale_log2, ms0));
        s[m][j][2] = exp2_ftz(__fmaf_rn(s[m][j][2], scale_log2, ms1));
        s[m][j][3] = exp2_ftz(__fmaf_rn(s[m][j][3], scale_log2, ms1));
        sum0 += s[m][j][0] + s[m][j][1];
        sum1 += s[m][j][2] + s[m][j][3];
      }
      row_sum[m][0] = row_sum[m][0] * a0 + sum0;
      row_sum[m][1] = row_sum[m][1] * a1 + sum1;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[m][j][0] *= a0;
        o[m][j][1] *= a0;
        o[m][j][2] *= a1;
        o[m][j][3] *= a1;
      }
      // Keys 16·kk .. +16 = n-tiles 2kk (cols +0) and 2kk+1 (cols +8).
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        p[m][kk][0] = Mma<T>::pack(s[m][2 * kk][0], s[m][2 * kk][1]);
        p[m][kk][1] = Mma<T>::pack(s[m][2 * kk][2], s[m][2 * kk][3]);
        p[m][kk][2] = Mma<T>::pack(s[m][2 * kk + 1][0], s[m][2 * kk + 1][1]);
        p[m][kk][3] = Mma<T>::pack(s[m][2 * kk + 1][2], s[m][2 * kk + 1][3]);
      }
    }

    cp_async_wait<1>();  // V of this tile landed; the next K may be in flight
    __syncthreads();
    if (tile + 1 < tiles)
      load_tile<T, D, kKeys, C::threads>(s_v + (buf ^ 1) * C::kv_elems, vb, stride, (tile + 1) * kKeys, nk);
    cp_async_commit();

    // O += P·V: 4 chunks of 16 keys.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        uint32_t bv[4];  // d-tile j: bv[0], bv[1]; d-tile j+1: bv[2], bv[3]
        ldmatrix_x4_trans(bv, vt + (kk * 16 + (mat & 1) * 8 + mrow) * ld + j * 8 + (mat >> 1) * 8);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          Mma<T>::run(o[m][j], p[m][kk], bv[0], bv[1]);
          Mma<T>::run(o[m][j + 1], p[m][kk], bv[2], bv[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  T* ob = out + size_t(b) * nq * stride + size_t(h) * D + 2 * t4;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    // Row sums are spread over the 4 threads of a quad.
    float l0 = row_sum[m][0], l1 = row_sum[m][1];
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      l0 += __shfl_xor_sync(0xffffffffu, l0, off);
      l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    const int r0 = q0 + warp * MT * 16 + m * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      if (r0 < nq)
        *reinterpret_cast<uint32_t*>(ob + size_t(r0) * stride + j * 8) =
            Mma<T>::pack(o[m][j][0] * inv0, o[m][j][1] * inv0);
      if (r1 < nq)
        *reinterpret_cast<uint32_t*>(ob + size_t(r1) * stride + j * 8) =
            Mma<T>::pack(o[m][j][2] * inv1, o[m][j][3] * inv1);
    }
  }
}

template <typename T, int D, int WARPS, int MT>
cudaError_t launch(const SfAttentionArgs& a, cudaStream_t stream) {
  using C = Config<D, WARPS, MT>;
  auto kernel = attention_kernel<T, D, WARPS, MT>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::smem));
  if (err != cudaSuccess) return err;
  const dim3 grid((a.nq + C::rows - 1) / C::rows, a.heads, a.batch);
  kernel<<<grid, C::threads, C::smem, stream>>>(static_cast<const T*>(a.q), static_cast<const T*>(a.k),
                                                static_cast<const T*>(a.v), static_cast<T*>(a.out), a.heads,
                                                a.nq, a.nk, a.scale * 1.4426950408889634f);
  return cudaGetLastError();
}

// Variant 0's block shape, for both head dims: 4 warps × 32 rows. Its
// 128-row blocks halve the L2 reads of K/V of 64-row ones and each K/V
// fragment feeds two m-tiles, which outweighs re-reading Q from shared memory
// at D = 128. Measured on an H100, bf16, variants 1 / 2 / 3 / 4: 0.99 / 1.14 /
// 0.94 / 1.03 ms at [1, 4608, 24 × 128], 0.21 / 0.22 / 0.21 / 0.28 ms at
// [2, 4096, 5 × 64] (8 warps × 16 rows was 5 % ahead at [2, 4096, 10 × 64]).
constexpr int kDefaultVariant = 3;

template <typename T, int D>
cudaError_t dispatch_variant(const SfAttentionArgs& a, cudaStream_t stream) {
  switch (a.variant == 0 ? kDefaultVariant : a.variant) {
    case 1: return launch<T, D, 4, 1>(a, stream);
    case 2: return launch<T, D, 8, 1>(a, stream);
    case 3: return launch<T, D, 4, 2>(a, stream);
    case 4: return launch<T, D, 8, 2>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t dispatch_dim(const SfAttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 64: return dispatch_variant<T, 64>(a, stream);
    case 128: return dispatch_variant<T, 128>(a, stream);
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
