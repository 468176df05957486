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
  TVM_FFI_CHECK(hidden_states.ndim() == 2 && hidden_states.size(1) == kHidden, ValueError)
      << "hidden_states must have shape [batch_size, 4096]";
  TVM_FFI_CHECK(weight.ndim() == 1 && weight.size(0) == kHidden, ValueError)
      << "weight must have shape [4096]";
  TVM_FFI_CHECK(output.ndim() == 2 && output.size(0) == hidden_states.size(0) &&
                    output.size(1) == kHidden, ValueError)
      << "output must have the shape of hidden_states";
  TVM_FFI_CHECK(is_bf16(hidden_states.dtype()) && is_bf16(weight.dtype()) && is_bf16(output.dtype()),
                ValueError)
      << "hidden_states, weight and output must be bfloat16";
  const DLDevice dev = hidden_states.device();
  TVM_FFI_CHECK(dev.device_type == kDLCUDA, ValueError) << "hidden_states must be a CUDA tensor";
  TVM_FFI_CHECK(weight.device().device_type == kDLCUDA && weight.device().device_id == dev.device_id &&
                    output.device().device_type == kDLCUDA && output.device().device_id == dev.device_id,
                ValueError)
      << "weight and output must be on the device of hidden_states";
  TVM_FFI_CHECK(hidden_states.IsContiguous() && weight.IsContiguous() && output.IsContiguous(), ValueError)
      << "hidden_states, weight and output must be contiguous";
  TVM_FFI_CHECK(aligned16(hidden_states) && aligned16(weight) && aligned16(output), ValueError)
      << "hidden_states, weight and output must be 16-byte aligned";

  const int64_t rows = hidden_states.size(0);
  if (rows == 0) return;
  TVM_FFI_CHECK(rows <= 0x7fffffff, ValueError) << "batch_size too large: " << rows;
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
