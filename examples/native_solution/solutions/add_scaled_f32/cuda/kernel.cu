// out = x + 2 * y for float32 CUDA tensors, launched on the caller's stream: fibuild calls the
// kernel with torch tensors, and TVMFFIEnvGetStream returns torch's current stream for their
// device, so the launch is ordered with the caller's other work (and CUDA-graph capturable).
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include <cstdint>

namespace {

using tvm::ffi::TensorView;

__global__ void add_scaled_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                  float* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i] + 2.0f * y[i];
}

void check_f32_vector(const TensorView& t, const char* name, int64_t n, DLDevice dev) {
  DLDataType dt = t.dtype();
  TVM_FFI_CHECK(dt.code == kDLFloat && dt.bits == 32 && dt.lanes == 1, ValueError) << name << " must be float32";
  TVM_FFI_CHECK(t.device().device_type == kDLCUDA && t.device().device_id == dev.device_id, ValueError)
      << name << " must be on the CUDA device of x";
  TVM_FFI_CHECK(t.ndim() == 1 && t.size(0) == n, ValueError) << name << " must have shape [" << n << "]";
  TVM_FFI_CHECK(t.IsContiguous(), ValueError) << name << " must be contiguous";
}

template <typename T>
T* data(const TensorView& t) {
  return reinterpret_cast<T*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}

void add_scaled(TensorView x, TensorView y, TensorView out) {
  const DLDevice dev = x.device();
  TVM_FFI_CHECK(dev.device_type == kDLCUDA, ValueError) << "x must be a CUDA tensor";
  const int64_t n = x.ndim() == 1 ? x.size(0) : -1;
  check_f32_vector(x, "x", n, dev);
  check_f32_vector(y, "y", n, dev);
  check_f32_vector(out, "out", n, dev);
  if (n == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(dev.device_type, dev.device_id));
  int previous = dev.device_id;  // launch with the tensors' device current, then restore the caller's
  cudaGetDevice(&previous);
  if (previous != dev.device_id) cudaSetDevice(dev.device_id);
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  add_scaled_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      data<const float>(x), data<const float>(y), data<float>(out), n);
  cudaError_t err = cudaGetLastError();
  if (previous != dev.device_id) cudaSetDevice(previous);
  TVM_FFI_CHECK(err == cudaSuccess, RuntimeError) << "add_scaled launch failed: " << cudaGetErrorString(err);
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(add_scaled, add_scaled);
