// Device-side typed IO for the row kernels (norms, softmax): element <-> float conversion, packs of
// V consecutive elements moved with one aligned access (16 bytes for V = 16 / sizeof(T)), and the
// DType -> element type dispatch of the launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "cuda/common.h"

namespace fastformer::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// V consecutive elements, aligned to their total size so one copy is one vector load/store.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Elements per 16-byte pack: the widest global access a thread can issue.
template <typename T>
inline constexpr int kPack16 = 16 / static_cast<int>(sizeof(T));

template <typename T, int V>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_float(pack.v[k]);
}

template <typename T, int V>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int k = 0; k < V; ++k) pack.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// acc[k] += p[k] and acc[k] *= p[k] over the pack at p.
template <typename T, int V>
__device__ __forceinline__ void add_floats(const T* p, float (&acc)[V]) {
  float v[V];
  load_floats<T, V>(p, v);
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] += v[k];
}

template <typename T, int V>
__device__ __forceinline__ void mul_floats(const T* p, float (&acc)[V]) {
  float v[V];
  load_floats<T, V>(p, v);
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] *= v[k];
}

// Whether rows can be moved in packs of V elements of `elem_bytes` each: every extent (column count,
// row strides) divisible by V and every non-null pointer aligned to the pack size.
inline bool packs_fit(int V, int elem_bytes, std::initializer_list<const void*> pointers,
                      std::initializer_list<int64_t> extents) {
  for (const int64_t e : extents)
    if (e % V != 0) return false;
  for (const void* p : pointers)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % (int64_t{V} * elem_bytes) != 0) return false;
  return true;
}

// Calls f(T{}) with T the element type of `dtype` (float, __half or __nv_bfloat16).
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return std::forward<F>(f)(float{});
    case DType::kFloat16: return std::forward<F>(f)(__half{});
    case DType::kBFloat16: return std::forward<F>(f)(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastformer::cuda
