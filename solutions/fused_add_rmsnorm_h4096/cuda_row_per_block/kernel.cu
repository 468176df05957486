// Residual add + RMSNorm over hidden size 4096, bf16, both in place: one thread block per row.
//
// residual <- bf16(hidden_states + residual); hidden_states <- normalized residual (the
// bf16-rounded sum, in fp32) * weight. Each row of both inputs is read once with 16-byte
// vector loads and held in registers, written once; the sum of squares is reduced with warp
// shuffles, then across warps through shared memory (one barrier).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "bf16_rows.cuh"
#include "rmsnorm_block.cuh"

namespace {

// Returns bf16(a + b), the sum computed in fp32 and rounded once.
__device__ __forceinline__ uint4 add_round(const uint4& a, const uint4& b) {
  return map_pairs(a, b, [](float af, float bf) { return af + bf; });
}

__global__ void __launch_bounds__(kThreads)
fused_add_rmsnorm_kernel(uint4* __restrict__ hidden, uint4* __restrict__ residual,
                         const uint4* __restrict__ w) {
  __shared__ float partial[kWarps];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kVecsPerRow;
  const int tid = threadIdx.x;

  uint4 sv[kVecsPerThread];
  uint4 wv[kVecsPerThread];
  {
    uint4 hv[kVecsPerThread];
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) hv[i] = hidden[base + tid + i * kThreads];
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) sv[i] = residual[base + tid + i * kThreads];
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) wv[i] = __ldg(w + tid + i * kThreads);
#pragma unroll
    for (int i = 0; i < kVecsPerThread; ++i) {
      sv[i] = add_round(hv[i], sv[i]);
      residual[base + tid + i * kThreads] = sv[i];
    }
  }
  store_normalized_row(sv, wv, hidden, base, partial, tid);
}

bool same_device(const tvm::ffi::TensorView& t, DLDevice dev) {
  return t.device().device_type == dev.device_type && t.device().device_id == dev.device_id;
}

// fused_add_rmsnorm(hidden_states [B, 4096] bf16, residual [B, 4096] bf16, weight [4096] bf16):
// both outputs in place, nothing returned.
void fused_add_rmsnorm(tvm::ffi::TensorView hidden_states, tvm::ffi::TensorView residual,
                       tvm::ffi::TensorView weight) {
  TVM_FFI_CHECK(hidden_states.ndim() == 2 && hidden_states.size(1) == kHidden, ValueError)
      << "hidden_states must have shape [batch_size, 4096]";
  TVM_FFI_CHECK(residual.ndim() == 2 && residual.size(0) == hidden_states.size(0) &&
                    residual.size(1) == kHidden, ValueError)
      << "residual must have the shape of hidden_states";
  TVM_FFI_CHECK(weight.ndim() == 1 && weight.size(0) == kHidden, ValueError)
      << "weight must have shape [4096]";
  TVM_FFI_CHECK(is_bf16(hidden_states.dtype()) && is_bf16(residual.dtype()) && is_bf16(weight.dtype()),
                ValueError)
      << "hidden_states, residual and weight must be bfloat16";
  const DLDevice dev = hidden_states.device();
  TVM_FFI_CHECK(dev.device_type == kDLCUDA, ValueError) << "hidden_states must be a CUDA tensor";
  TVM_FFI_CHECK(same_device(residual, dev) && same_device(weight, dev), ValueError)
      << "residual and weight must be on the device of hidden_states";
  TVM_FFI_CHECK(hidden_states.IsContiguous() && residual.IsContiguous() && weight.IsContiguous(), ValueError)
      << "hidden_states, residual and weight must be contiguous";
  TVM_FFI_CHECK(aligned16(hidden_states) && aligned16(residual) && aligned16(weight), ValueError)
      << "hidden_states, residual and weight must be 16-byte aligned";

  const int64_t rows = hidden_states.size(0);
  if (rows == 0) return;
  TVM_FFI_CHECK(rows <= 0x7fffffff, ValueError) << "batch_size too large: " << rows;
  cudaStream_t stream = env_stream(dev);
  DeviceGuard device_guard(dev.device_id);
  fused_add_rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      data_of<uint4>(hidden_states), data_of<uint4>(residual), data_of<const uint4>(weight));
  check_launch("fused_add_rmsnorm");
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(fused_add_rmsnorm, fused_add_rmsnorm);
