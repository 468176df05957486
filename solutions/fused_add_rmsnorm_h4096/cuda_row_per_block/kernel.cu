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

// Returns bf16(a + b), the sum computed in fp32 and rounded once.
__device__ __forceinline__ uint4 add_round(const uint4& a, const uint4& b) {
  const __nv_bfloat162* ah = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* bh = reinterpret_cast<const __nv_bfloat162*>(&b);
  uint4 r;
  __nv_bfloat162* rh = reinterpret_cast<__nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 af = __bfloat1622float2(ah[i]);
    float2 bf = __bfloat1622float2(bh[i]);
    rh[i] = __floats2bfloat162_rn(af.x + bf.x, af.y + bf.y);
  }
  return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
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

  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kVecsPerThread; ++i) ss += sum_squares(sv[i]);
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
  for (int i = 0; i < kVecsPerThread; ++i) hidden[base + tid + i * kThreads] = scale(sv[i], wv[i], inv_rms);
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
  cudaStream_t stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(dev.device_type, dev.device_id));
  DeviceGuard device_guard(dev.device_id);
  fused_add_rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      data_of<uint4>(hidden_states), data_of<uint4>(residual), data_of<const uint4>(weight));
  cudaError_t err = cudaGetLastError();
  TVM_FFI_CHECK(err == cudaSuccess, RuntimeError)
      << "fused_add_rmsnorm launch failed: " << cudaGetErrorString(err);
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(fused_add_rmsnorm, fused_add_rmsnorm);
