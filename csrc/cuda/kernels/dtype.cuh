// Device-side dtype plumbing shared by the CUDA kernel families: accumulation types, conversions
// and the DType -> template dispatch of the torch-free launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/kernels/measures.cuh"  // DType

namespace lqk::cuda {

// float32 accumulation for half, bfloat16 and float; double stays double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

// Calls Launch<T>::run(args...) with T the element type of `dtype`.
template <template <typename> class Launch, typename... Args>
cudaError_t dispatch(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kHalf: return Launch<__half>::run(args...);
    case DType::kBFloat16: return Launch<__nv_bfloat16>::run(args...);
    case DType::kFloat: return Launch<float>::run(args...);
    case DType::kDouble: return Launch<double>::run(args...);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lqk::cuda
