// Helpers shared by the bf16 row kernels (RMSNorm, fused add + RMSNorm, SiLU-and-mul):
// 16-byte vectors of 8 bf16 values, warp reductions, and the host side's tensor checks and
// device guard. Included by each kernel's translation unit (everything here is internal to it).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>

namespace {

__device__ __forceinline__ float sum_squares(const uint4& v) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    s = fmaf(f.x, f.x, s);
    s = fmaf(f.y, f.y, s);
  }
  return s;
}

// bf16(f(a_i, b_i)) over the 8 bf16 pairs of two 16-byte vectors, f taking and giving fp32.
template <typename F>
__device__ __forceinline__ uint4 map_pairs(const uint4& a, const uint4& b, F f) {
  const __nv_bfloat162* ah = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* bh = reinterpret_cast<const __nv_bfloat162*>(&b);
  uint4 r;
  __nv_bfloat162* rh = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 af = __bfloat1622float2(ah[i]);
    float2 bf = __bfloat1622float2(bh[i]);
    rh[i] = __floats2bfloat162_rn(f(af.x, bf.x), f(af.y, bf.y));
  }
  return r;
}

// out = bf16((x * inv_rms) * w), the reference's order of fp32 operations.
__device__ __forceinline__ uint4 scale(const uint4& x, const uint4& w, float inv_rms) {
  return map_pairs(x, w, [inv_rms](float xf, float wf) { return xf * inv_rms * wf; });
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Makes the tensors' device current for the launch and restores the caller's afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device && cudaSetDevice(device) == cudaSuccess) {
      restore_ = true;
    }
  }
  ~DeviceGuard() {
    if (restore_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
  bool restore_ = false;
};

bool is_bf16(DLDataType t) { return t.code == kDLBfloat && t.bits == 16 && t.lanes == 1; }

bool aligned16(const tvm::ffi::TensorView& t) {
  return (reinterpret_cast<uintptr_t>(t.data_ptr()) + t.byte_offset()) % 16 == 0;
}

template <typename T>
T* data_of(const tvm::ffi::TensorView& t) {
  return reinterpret_cast<T*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}


// The rows of an RMSNorm call after checking its arguments: hidden_states [B, hidden], weight
// [hidden], output of hidden_states' shape; bfloat16, contiguous, 16-byte aligned, on one CUDA
// device. ValueError naming the argument otherwise.
inline int64_t checked_rmsnorm_rows(const tvm::ffi::TensorView& hidden_states,
                                    const tvm::ffi::TensorView& weight,
                                    const tvm::ffi::TensorView& output, int64_t hidden) {
  TVM_FFI_CHECK(hidden_states.ndim() == 2 && hidden_states.size(1) == hidden, ValueError)
      << "hidden_states must have shape [batch_size, " << hidden << "]";
  TVM_FFI_CHECK(weight.ndim() == 1 && weight.size(0) == hidden, ValueError)
      << "weight must have shape [" << hidden << "]";
  TVM_FFI_CHECK(output.ndim() == 2 && output.size(0) == hidden_states.size(0) &&
                    output.size(1) == hidden, ValueError)
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
  TVM_FFI_CHECK(rows <= 0x7fffffff, ValueError) << "batch_size too large: " << rows;
  return rows;
}

// The stream TVM-FFI's caller set for the tensors' device (torch's current stream).
inline cudaStream_t env_stream(DLDevice dev) {
  return static_cast<cudaStream_t>(TVMFFIEnvGetStream(dev.device_type, dev.device_id));
}

// RuntimeError naming the kernel when its launch failed.
inline void check_launch(const char* kernel) {
  cudaError_t err = cudaGetLastError();
  TVM_FFI_CHECK(err == cudaSuccess, RuntimeError) << kernel << " launch failed: " << cudaGetErrorString(err);
}

}  // namespace
