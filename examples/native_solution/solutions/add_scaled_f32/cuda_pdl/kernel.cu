// out = x + 2 * y for float32 CUDA tensors, with programmatic dependent launch (PDL).
//
// The pattern for a CUDA solution that declares `launch: {pdl: true}`:
// - the kernel may read what no kernel before it writes (weights), then executes
//   `griddepcontrol.wait` before it reads its predecessor's output and before it writes
//   anything (the wait returns once the previous kernel has finished and its writes are
//   visible; without the launch attribute it returns at once);
// - it may execute `griddepcontrol.launch_dependents` as early as it likes: the next kernel,
//   if launched with the attribute, may then start its own prologue;
// - the host launches with cudaLaunchKernelEx and
//   cudaLaunchAttributeProgrammaticStreamSerialization = 1. fibuild compiles the source with
//   -DFIBUILD_LAUNCH_PDL=1 when the manifest declares it and FIBUILD_PDL is not 0; without the
//   define the launch is a plain one. Captured in a CUDA graph, the launch keeps its
//   programmatic edge.
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include <cstdint>

#ifndef FIBUILD_LAUNCH_PDL
#define FIBUILD_LAUNCH_PDL 0
#endif

namespace {

using tvm::ffi::TensorView;

__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_next_kernel_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

__global__ void add_scaled_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                  float* __restrict__ out, int64_t n) {
  let_next_kernel_launch();
  wait_for_previous_kernel();  // x and y may be the previous kernel's output
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
  int previous = dev.device_id;
  cudaGetDevice(&previous);
  if (previous != dev.device_id) cudaSetDevice(dev.device_id);
  constexpr int kThreads = 256;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>((n + kThreads - 1) / kThreads));
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = FIBUILD_LAUNCH_PDL;
  config.attrs = attribute;
  config.numAttrs = 1;
  cudaError_t err = cudaLaunchKernelEx(&config, add_scaled_kernel, data<const float>(x), data<const float>(y),
                                       data<float>(out), n);
  if (previous != dev.device_id) cudaSetDevice(previous);
  TVM_FFI_CHECK(err == cudaSuccess, RuntimeError) << "add_scaled launch failed: " << cudaGetErrorString(err);
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(add_scaled, add_scaled);
