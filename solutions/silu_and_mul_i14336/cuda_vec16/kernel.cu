// SwiGLU: out = bf16(silu(gate) * up) with x = [gate | up], intermediate size 14336, bf16.
//
// Purely elementwise and memory-bound: each thread reads one 16-byte vector of gate and one
// of up and writes one of out (8 values), computing in fp32. A row's 1792 output vectors are
// exactly 7 blocks of 256 threads, so the grid is 7 blocks per token with no bounds checks,
// and even one token spreads over 7 SMs.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "bf16_rows.cuh"

namespace {

constexpr int kInter = 14336;
constexpr int kVecElems = 8;                     // bf16 values in one 16-byte vector
constexpr int kVecsPerOutRow = kInter / kVecElems;  // 1792
constexpr int kThreads = 256;
constexpr int kBlocksPerRow = kVecsPerOutRow / kThreads;  // 7
static_assert(kVecsPerOutRow % kThreads == 0, "a row must split into whole blocks");

__device__ __forceinline__ float silu(float g) { return g / (1.f + __expf(-g)); }

__global__ void __launch_bounds__(kThreads)
silu_and_mul_kernel(const uint4* __restrict__ x, uint4* __restrict__ out) {
  const int64_t row = blockIdx.x / kBlocksPerRow;
  const int col = (blockIdx.x % kBlocksPerRow) * kThreads + threadIdx.x;
  const uint4* xr = x + row * (2 * kVecsPerOutRow);
  const uint4 g = __ldcs(xr + col);
  const uint4 u = __ldcs(xr + kVecsPerOutRow + col);
  const uint4 r = map_pairs(g, u, [](float gf, float uf) { return silu(gf) * uf; });
  out[row * kVecsPerOutRow + col] = r;
}

// silu_and_mul(x [T, 28672] bf16, out [T, 14336] bf16): DPS.
void silu_and_mul(tvm::ffi::TensorView x, tvm::ffi::TensorView out) {
  TVM_FFI_CHECK(x.ndim() == 2 && x.size(1) == 2 * kInter, ValueError)
      << "x must have shape [num_tokens, 28672]";
  TVM_FFI_CHECK(out.ndim() == 2 && out.size(0) == x.size(0) && out.size(1) == kInter, ValueError)
      << "out must have shape [num_tokens, 14336]";
  TVM_FFI_CHECK(is_bf16(x.dtype()) && is_bf16(out.dtype()), ValueError) << "x and out must be bfloat16";
  const DLDevice dev = x.device();
  TVM_FFI_CHECK(dev.device_type == kDLCUDA, ValueError) << "x must be a CUDA tensor";
  TVM_FFI_CHECK(out.device().device_type == kDLCUDA && out.device().device_id == dev.device_id, ValueError)
      << "out must be on the device of x";
  TVM_FFI_CHECK(x.IsContiguous() && out.IsContiguous(), ValueError) << "x and out must be contiguous";
  TVM_FFI_CHECK(aligned16(x) && aligned16(out), ValueError) << "x and out must be 16-byte aligned";

  const int64_t rows = x.size(0);
  if (rows == 0) return;
  TVM_FFI_CHECK(rows <= 0x7fffffff / kBlocksPerRow, ValueError) << "num_tokens too large: " << rows;
  cudaStream_t stream = env_stream(dev);
  DeviceGuard device_guard(dev.device_id);
  silu_and_mul_kernel<<<static_cast<unsigned>(rows * kBlocksPerRow), kThreads, 0, stream>>>(
      data_of<const uint4>(x), data_of<uint4>(out));
  check_launch("silu_and_mul");
}

}  // namespace

TVM_FFI_DLL_EXPORT_TYPED_FUNC(silu_and_mul, silu_and_mul);
