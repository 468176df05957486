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

// out = bf16((x * inv_rms) * w), the reference's order of fp32 operations.
__device__ __forceinline__ uint4 scale(const uint4& x, const uint4& w, float inv_rms) {
  const __nv_bfloat162* xh = reinterpret_cast<const __nv_bfloat162*>(&x);
  const __nv_bfloat162* wh = reinterpret_cast<const __nv_bfloat162*>(&w);
  uint4 r;
  __nv_bfloat162* rh = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 xf = __bfloat1622float2(xh[i]);
    float2 wf = __bfloat1622float2(wh[i]);
    rh[i] = __floats2bfloat162_rn(xf.x * inv_rms * wf.x, xf.y * inv_rms * wf.y);
  }
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

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

  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) ss += sum_squares(xv[i]);
  ss = warp_sum(ss);
  if (kWarps > 1) {
    if ((tid & 31) == 0) partial[tid >> 5] = ss;
    __syncthreads();
    // Every warp sums the partials itself: no second barrier, no broadcast.
    ss = (tid & 31) < kWarps ? partial[tid & 31] : 0.f;
    ss = warp_sum(ss);
  }
  const float inv_rms = rsqrtf(ss * (1.f / kHidden) + kEps);

#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) out[base + tid + i * kThreads] = scale(xv[i], wv[i], inv_rms);
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
  cudaStream_t stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(dev.device_type, dev.device_id));
  DeviceGuard device_guard(dev.device_id);
  rmsnorm_row_per_block_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      data_of<const uint4>(hidden_states), data_of<const uint4>(weight), data_of<uint4>(output));
  cudaError_t err = cudaGetLastError();
  TVM_FFI_CHECK(err == cudaSuccess, RuntimeError) << "rmsnorm launch failed: " << cudaGetErrorString(err);
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(rmsnorm, rmsnorm);
