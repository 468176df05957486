// Fused residual add + RMSNorm over hidden size 4096 for CPU bf16 tensors, in place:
// residual <- bf16(hidden_states + residual); hidden_states <- rmsnorm(residual) * weight.
// bf16 is handled as uint16 bits; all math is fp32. Large batches split rows over threads.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <thread>
#include <vector>

namespace {

using tvm::ffi::TensorView;

constexpr int64_t kHidden = 4096;
constexpr float kEps = 1e-5f;
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

void fused_add_rmsnorm(TensorView hidden_states, TensorView residual, TensorView weight) {
  TVM_FFI_CHECK(hidden_states.ndim() == 2, ValueError)
      << "hidden_states must be [batch_size, 4096], got " << hidden_states.ndim() << " dimensions";
  const int64_t rows = hidden_states.size(0);
  check_bf16_cpu(hidden_states, "hidden_states", {rows, kHidden});
  check_bf16_cpu(residual, "residual", {rows, kHidden});
  check_bf16_cpu(weight, "weight", {kHidden});
  TVM_FFI_CHECK(bf16_data(hidden_states) != bf16_data(residual), ValueError)
      << "hidden_states and residual must be distinct tensors";
  uint16_t* h = bf16_data(hidden_states);
  uint16_t* res = bf16_data(residual);
  const uint16_t* w = bf16_data(weight);

  std::vector<float> wf(kHidden);
  for (int64_t j = 0; j < kHidden; ++j) wf[j] = bf16_to_float(w[j]);

  parallel_rows(rows, kHidden, [&](int64_t begin, int64_t end) {
    std::vector<float> sum_row(kHidden);
    for (int64_t r = begin; r < end; ++r) {
      uint16_t* hr = h + r * kHidden;
      uint16_t* rr = res + r * kHidden;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // independent lanes vectorize
      for (int64_t j = 0; j < kHidden; j += 8) {
        for (int k = 0; k < 8; ++k) {
          // The sum is rounded to bf16 first: the stored residual is what gets normalized.
          uint16_t s = float_to_bf16(bf16_to_float(hr[j + k]) + bf16_to_float(rr[j + k]));
          rr[j + k] = s;
          float v = bf16_to_float(s);
          sum_row[j + k] = v;
          acc[k] += v * v;
        }
      }
      float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      float inv_rms = 1.0f / std::sqrt(sum / float(kHidden) + kEps);
      for (int64_t j = 0; j < kHidden; ++j) {
        hr[j] = float_to_bf16(sum_row[j] * inv_rms * wf[j]);
      }
    }
  });
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(fused_add_rmsnorm, fused_add_rmsnorm);
