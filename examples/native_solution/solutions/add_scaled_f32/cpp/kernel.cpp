// out = x + 2 * y for float32 CPU tensors. fibuild passes the inputs, then the outputs it
// allocated (destination-passing style), as tvm::ffi::TensorView: a view of the caller's torch
// tensors, no copy. Check what the kernel relies on; a failed check reaches Python as ValueError.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include <cstdint>

namespace {

using tvm::ffi::TensorView;

void check_f32_cpu_vector(const TensorView& t, const char* name, int64_t n) {
  DLDataType dt = t.dtype();
  TVM_FFI_CHECK(dt.code == kDLFloat && dt.bits == 32 && dt.lanes == 1, ValueError) << name << " must be float32";
  TVM_FFI_CHECK(t.device().device_type == kDLCPU, ValueError) << name << " must be a CPU tensor";
  TVM_FFI_CHECK(t.ndim() == 1 && t.size(0) == n, ValueError) << name << " must have shape [" << n << "]";
  TVM_FFI_CHECK(t.IsContiguous(), ValueError) << name << " must be contiguous";
}

const float* data(const TensorView& t) {
  return reinterpret_cast<const float*>(static_cast<const char*>(t.data_ptr()) + t.byte_offset());
}

void add_scaled(TensorView x, TensorView y, TensorView out) {
  const int64_t n = x.ndim() == 1 ? x.size(0) : -1;
  check_f32_cpu_vector(x, "x", n);
  check_f32_cpu_vector(y, "y", n);
  check_f32_cpu_vector(out, "out", n);
  const float* xs = data(x);
  const float* ys = data(y);
  float* os = const_cast<float*>(data(out));
  for (int64_t i = 0; i < n; ++i) os[i] = xs[i] + 2.0f * ys[i];
}

}  // namespace

// The entry point's name in solution.yaml (kernel.cpp::add_scaled) is the exported name.
TVM_FFI_DLL_EXPORT_TYPED_FUNC(add_scaled, add_scaled);
