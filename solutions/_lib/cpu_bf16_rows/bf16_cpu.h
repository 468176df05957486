// Helpers shared by the CPU bf16 row kernels: bf16 <-> fp32 as uint16 bits (rounding to
// nearest even, as torch does), the tensor checks, and rows split over threads. Included by
// each kernel's translation unit (everything here is internal to it).
#pragma once

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

namespace {

using tvm::ffi::TensorView;

// Below this many elements per thread, thread start-up costs more than it saves.
constexpr int64_t kMinElemsPerThread = int64_t(1) << 18;

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40u);  // keep NaN a NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even, as torch does
  return uint16_t(bits >> 16);
}

void check_bf16_cpu(const TensorView& t, const char* name, std::initializer_list<int64_t> shape) {
  DLDataType dt = t.dtype();
  TVM_FFI_CHECK(dt.code == kDLBfloat && dt.bits == 16 && dt.lanes == 1, ValueError)
      << name << " must be bfloat16";
  TVM_FFI_CHECK(t.device().device_type == kDLCPU, ValueError) << name << " must be a CPU tensor";
  TVM_FFI_CHECK(t.ndim() == static_cast<int32_t>(shape.size()), ValueError)
      << name << " must have " << shape.size() << " dimensions, got " << t.ndim();
  int32_t dim = 0;
  for (int64_t want : shape) {
    TVM_FFI_CHECK(t.size(dim) == want, ValueError)
        << name << " dimension " << dim << " must be " << want << ", got " << t.size(dim);
    ++dim;
  }
  TVM_FFI_CHECK(t.IsContiguous(), ValueError) << name << " must be contiguous";
}

// The rows of ``t``, a contiguous [rows, cols] bf16 CPU tensor (ValueError otherwise;
// ``rows_name`` names the first dimension in the message).
inline int64_t checked_rows(const TensorView& t, const char* name, const char* rows_name, int64_t cols) {
  TVM_FFI_CHECK(t.ndim() == 2, ValueError)
      << name << " must be [" << rows_name << ", " << cols << "], got " << t.ndim() << " dimensions";
  check_bf16_cpu(t, name, {t.size(0), cols});
  return t.size(0);
}

inline uint16_t* bf16_data(const TensorView& t) {
  return reinterpret_cast<uint16_t*>(static_cast<char*>(t.data_ptr()) + t.byte_offset());
}

template <typename Fn>
void parallel_rows(int64_t rows, int64_t elems_per_row, Fn fn) {
  int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  int64_t by_work = std::max<int64_t>(1, rows * elems_per_row / kMinElemsPerThread);
  int64_t n = std::min({hw, rows, by_work});
  if (n <= 1) {
    fn(int64_t(0), rows);
    return;
  }
  int64_t chunk = (rows + n - 1) / n;
  std::vector<std::thread> workers;
  for (int64_t begin = chunk; begin < rows; begin += chunk) {
    workers.emplace_back(fn, begin, std::min(rows, begin + chunk));
  }
  fn(int64_t(0), std::min(rows, chunk));
  for (std::thread& w : workers) w.join();
}

}  // namespace
