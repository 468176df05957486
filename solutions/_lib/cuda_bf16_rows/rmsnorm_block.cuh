// The launch shape of the one-block-per-row RMSNorm kernels over hidden size 4096 (RMSNorm
// and fused add + RMSNorm): a row is 512 16-byte vectors spread over RMSNORM_THREADS threads.
#pragma once

#include "bf16_rows.cuh"

#ifndef RMSNORM_THREADS
#define RMSNORM_THREADS 256  // threads per block (= per row); 512 / RMSNORM_THREADS vectors each
#endif

namespace {

constexpr int kHidden = 4096;
constexpr int kVecElems = 8;                      // bf16 values in one 16-byte vector
constexpr int kVecsPerRow = kHidden / kVecElems;  // 512
constexpr int kThreads = RMSNORM_THREADS;
constexpr int kVecsPerThread = kVecsPerRow / kThreads;
constexpr int kWarps = kThreads / 32;
constexpr float kEps = 1e-5f;
static_assert(kVecsPerRow % kThreads == 0, "RMSNORM_THREADS must divide 512");
static_assert(kThreads % 32 == 0 && kThreads >= 32, "RMSNORM_THREADS must be a multiple of 32");

// 1 / rms of the block's row from each thread's sum of squares ``ss``: warp shuffles, then
// across the block's warps through ``partial`` (kWarps floats of shared memory, one barrier).
__device__ __forceinline__ float block_inv_rms(float ss, float* partial, int tid) {
  ss = warp_sum(ss);
  if (kWarps > 1) {
    if ((tid & 31) == 0) partial[tid >> 5] = ss;
    __syncthreads();
    // Every warp sums the partials itself: no second barrier, no broadcast.
    ss = (tid & 31) < kWarps ? partial[tid & 31] : 0.f;
    ss = warp_sum(ss);
  }
  return rsqrtf(ss * (1.f / kHidden) + kEps);
}

// Normalizes the block's row held in registers (``v``, this thread's vectors) by the weight
// ``w`` and stores it at ``dst + base``: the sum of squares, block_inv_rms, then scale.
__device__ __forceinline__ void store_normalized_row(const uint4 (&v)[kVecsPerThread],
                                                     const uint4 (&w)[kVecsPerThread], uint4* dst,
                                                     int64_t base, float* partial, int tid) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) ss += sum_squares(v[i]);
  const float inv_rms = block_inv_rms(ss, partial, tid);
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) dst[base + tid + i * kThreads] = scale(v[i], w[i], inv_rms);
}

}  // namespace
