// SiLU-and-mul for CPU bf16 tensors, destination-passing style:
// out[:, j] = silu(x[:, j]) * x[:, 14336 + j], fp32 math, one rounding to bf16.
// bf16 is handled as uint16 bits. Large inputs split rows over threads.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

#include "bf16_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kIntermediate = 14336;

void silu_and_mul(TensorView x, TensorView out) {
  const int64_t rows = checked_rows(x, "x", "num_tokens", 2 * kIntermediate);
  check_bf16_cpu(out, "out", {rows, kIntermediate});
  const uint16_t* in = bf16_data(x);
  uint16_t* o = bf16_data(out);

  parallel_rows(rows, 2 * kIntermediate, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const uint16_t* gate = in + r * 2 * kIntermediate;
      const uint16_t* up = gate + kIntermediate;
      uint16_t* orow = o + r * kIntermediate;
      for (int64_t j = 0; j < kIntermediate; ++j) {
        float g = bf16_to_float(gate[j]);
        orow[j] = float_to_bf16(g / (1.0f + std::exp(-g)) * bf16_to_float(up[j]));
      }
    }
  });
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(silu_and_mul, silu_and_mul);
