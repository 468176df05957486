// RMSNorm over hidden size 4096, bf16 in/out, fp32 accumulation: one warp per row.
//
// Each lane holds 16 16-byte vectors of its row (128 values) in registers, all loads issued
// before the first use; the sum of squares needs only warp shuffles (no shared memory, no
// barrier). The weight is read per lane through the read-only cache in the second pass, so
// it costs no registers. Several rows per block; with many independent loads in flight per
// warp this suits large batches. The compiler keeps the row both packed and unpacked (about
// 230 registers, 8 resident warps per SM): still 64 KiB of loads in flight per SM, more
// than the memory system needs to stay busy; a 128-register cap spills instead.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "bf16_rows.cuh"

#ifndef RMSNORM_WARPS
#define RMSNORM_WARPS 4  // warps (= rows) per block
#endif

namespace {

constexpr int kHidden = 4096;
constexpr int kVecElems = 8;                      // bf16 values in one 16-byte vector
constexpr int kVecsPerRow = kHidden / kVecElems;  // 512
constexpr int kWarps = RMSNORM_WARPS;
constexpr int kThreads = kWarps * 32;
constexpr int kVecsPerLane = kVecsPerRow / 32;  // 16
constexpr float kEps = 1e-5f;
static_assert(kWarps >= 1 && kWarps <= 16, "RMSNORM_WARPS must be in [1, 16]");

__global__ void __launch_bounds__(kThreads)
rmsnorm_warp_per_row_kernel(const uint4* __restrict__ x, const uint4* __restrict__ w,
                            uint4* __restrict__ out, int rows) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t base = static_cast<int64_t>(row) * kVecsPerRow + lane;

  // Lane l holds vectors l, l + 32, ...: each warp-wide load covers 512 contiguous bytes.
  uint4 xv[kVecsPerLane];
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) xv[i] = __ldcs(x + base + i * 32);

  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) ss += sum_squares(xv[i]);
  const float inv_rms = rsqrtf(warp_sum(ss) * (1.f / kHidden) + kEps);
#pragma unroll
  for (int i = 0; i < kVecsPerLane; ++i) out[base + i * 32] = scale(xv[i], __ldg(w + lane + i * 32), inv_rms);
}

// rmsnorm(hidden_states [B, 4096] bf16, weight [4096] bf16, output [B, 4096] bf16): DPS.
void rmsnorm(tvm::ffi::TensorView hidden_states, tvm::ffi::TensorView weight,
             tvm::ffi::TensorView output) {
  const int64_t rows = checked_rmsnorm_rows(hidden_states, weight, output, kHidden);
  if (rows == 0) return;
  const DLDevice dev = hidden_states.device();
  cudaStream_t stream = env_stream(dev);
  DeviceGuard device_guard(dev.device_id);
  const unsigned blocks = static_cast<unsigned>((rows + kWarps - 1) / kWarps);
  rmsnorm_warp_per_row_kernel<<<blocks, kThreads, 0, stream>>>(
      data_of<const uint4>(hidden_states), data_of<const uint4>(weight), data_of<uint4>(output),
      static_cast<int>(rows));
  check_launch("rmsnorm");
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(rmsnorm, rmsnorm);
