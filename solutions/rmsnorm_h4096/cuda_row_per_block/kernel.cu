// RMSNorm over hidden size 4096, bf16 in/out, fp32 accumulation: one thread block per row.
//
// A row (8 KiB) is loaded once with 16-byte vector loads and held in registers; the sum of
// squares is reduced with warp shuffles, then across the block's warps through shared memory
// (one barrier). The weight is read through the read-only cache. Many rows in flight across
// the whole chip suit mid-sized batches, where one block per row spreads the rows over every SM.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "bf16_rows.cuh"
#include "rmsnorm_block.cuh"

namespace {

__global__ void __launch_bounds__(kThreads)
rmsnorm_row_per_block_kernel(const uint4* __restrict__ x, const uint4* __restrict__ w,
                             uint4* __restrict__ out) {
  __shared__ float partial[kWarps];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kVecsPerRow;
  const int tid = threadIdx.x;

  uint4 xv[kVecsPerThread];
  uint4 wv[kVecsPerThread];
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) xv[i] = __ldcs(x + base + tid + i * kThreads);
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) wv[i] = __ldg(w + tid + i * kThreads);
  store_normalized_row(xv, wv, out, base, partial, tid);
}

// rmsnorm(hidden_states [B, 4096] bf16, weight [4096] bf16, output [B, 4096] bf16): DPS.
void rmsnorm(tvm::ffi::TensorView hidden_states, tvm::ffi::TensorView weight,
             tvm::ffi::TensorView output) {
  const int64_t rows = checked_rmsnorm_rows(hidden_states, weight, output, kHidden);
  if (rows == 0) return;
  const DLDevice dev = hidden_states.device();
  cudaStream_t stream = env_stream(dev);
  DeviceGuard device_guard(dev.device_id);
  rmsnorm_row_per_block_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      data_of<const uint4>(hidden_states), data_of<const uint4>(weight), data_of<uint4>(output));
  check_launch("rmsnorm");
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(rmsnorm, rmsnorm);
