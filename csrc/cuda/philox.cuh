// Triton's tl.rand(seed, offset) for one element: Philox4x32-10 to a uniform float32 in [0, 1).
//
// Attention dropout keeps element (b, h, i, j) iff philox_uniform(seed, ((b*H + h)*Sq + i)*Sk + j) >= p
// on every backend (csrc/fastformer.cpp), so this must match triton/language/random.py bit for bit:
//   counter (c0, c1, c2, c3) = (low, high 32 bits of the int64 offset, 0, 0),
//   key (k0, k1) = (low, high 32 bits of the seed as uint64), ten rounds of
//     c0' = umulhi(B, c2) ^ c1 ^ k0,  c2' = umulhi(A, c0) ^ c3 ^ k1,  c1' = B * c2,  c3' = A * c0,
//     k0 += KEY_A, k1 += KEY_B   (all mod 2^32);
//   c0 read as int32 x, folded to x < 0 ? -x - 1 : x, returned as float32(x) * 4.6566127342e-10f.
// Host and device: the host build lets a plain C++ program check it against tl.rand without a GPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTFORMER_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTFORMER_HOST_DEVICE inline
#endif

namespace fastformer::cuda {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
// The largest float scale with float32(0x7FFFFFFF) * scale < 1 (Triton's uint_to_uniform_float).
constexpr float kUint31ToUniform = 4.6566127342e-10f;

FASTFORMER_HOST_DEVICE uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// First output word of Philox4x32-10 (tl.randint).
FASTFORMER_HOST_DEVICE uint32_t philox_randint(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t prev_c0 = c0, prev_c2 = c2;
    c0 = mul_hi_u32(kPhiloxRoundB, prev_c2) ^ c1 ^ k0;
    c2 = mul_hi_u32(kPhiloxRoundA, prev_c0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * prev_c2;
    c3 = kPhiloxRoundA * prev_c0;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return c0;
}

FASTFORMER_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset) {
  const int32_t x = static_cast<int32_t>(philox_randint(seed, offset));
  const int32_t folded = x < 0 ? ~x : x;  // ~x == -x - 1, without overflowing at INT32_MIN
  return static_cast<float>(folded) * kUint31ToUniform;
}

}  // namespace fastformer::cuda
