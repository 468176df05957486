// RMSNorm over hidden size 4096 for CPU bf16 tensors, destination-passing style.
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

void rmsnorm(TensorView hidden_states, TensorView weight, TensorView output) {
  const int64_t rows = checked_rows(hidden_states, "hidden_states", "batch_size", kHidden);
  check_bf16_cpu(weight, "weight", {kHidden});
  check_bf16_cpu(output, "output", {rows, kHidden});
  const uint16_t* x = bf16_data(hidden_states);
  const uint16_t* w = bf16_data(weight);
  uint16_t* y = bf16_data(output);

  std::vector<float> wf(kHidden);
  for (int64_t j = 0; j < kHidden; ++j) wf[j] = bf16_to_float(w[j]);

  parallel_rows(rows, kHidden, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* xr = x + r * kHidden;
      uint16_t* yr = y + r * kHidden;
      float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};  // independent lanes vectorize
      for (int64_t j = 0; j < kHidden; j += 8) {
        for (int k = 0; k < 8; ++k) {
          float v = bf16_to_float(xr[j + k]);
          acc[k] += v * v;
        }
      }
      float sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      float inv_rms = 1.0f / std::sqrt(sum / float(kHidden) + kEps);
      for (int64_t j = 0; j < kHidden; ++j) {
        yr[j] = float_to_bf16(bf16_to_float(xr[j]) * inv_rms * wf[j]);
      }
    }
  });
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(rmsnorm, rmsnorm);
