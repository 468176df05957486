// Fused residual add + RMSNorm over hidden size 4096 for CPU bf16 tensors, in place:
// residual <- bf16(hidden_states + residual); hidden_states <- rmsnorm(residual) * weight.
// bf16 is handled as uint16 bits; all math is fp32. Large batches split rows over threads.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include "bf16_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kHidden = 4096;
constexpr float kEps = 1e-5f;

void fused_add_rmsnorm(TensorView hidden_states, TensorView residual, TensorView weight) {
  const int64_t rows = checked_rows(hidden_states, "hidden_states", "batch_size", kHidden);
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
