// The CUDA runtime calls the Rust side needs and cudarc's driver bindings do
// not give: the message of a runtime error code (what every kernel launcher
// of the workspace returns) and the default memory pool's release threshold.
#include <cstdint>
#include <cuda_runtime.h>

extern "C" const char* sfc_error_string(int err) { return cudaGetErrorString((cudaError_t)err); }

extern "C" int sfc_keep_pool_memory(int device) {
  cudaMemPool_t pool;
  cudaError_t e = cudaDeviceGetDefaultMemPool(&pool, device);
  if (e != cudaSuccess) return (int)e;
  uint64_t threshold = UINT64_MAX;
  return (int)cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
}
