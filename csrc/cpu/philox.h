// Triton's tl.rand on the CPU: one uniform float in [0, 1) per (seed, 64-bit offset), bit-identical to
// tl.rand(seed, offset) of triton/language/random.py (Philox4x32-10), so the CPU attention kernel drops
// exactly the elements the Triton and CUDA kernels drop for the same seed.
//
// tl.rand(seed, offset) runs Philox on the counter (offset low 32 bits, offset high 32 bits, 0, 0) with the key
// (seed low 32 bits, seed high 32 bits), keeps the first output word c0, reads it as int32 x, folds negatives with
// x -> -x - 1 (= ~x, no overflow at INT32_MIN), and returns float(x) * 4.6566127342e-10f in fp32 (the largest scale
// with INT32_MAX * scale < 1 after rounding).
//
// philox_uniform8 computes eight of them at once (with AVX2 when compiled for it): dropout evaluates one per
// attention probability, and the scalar loop alone cost 5x the whole forward here (B 8, H 12, S 128, 1 thread).
#pragma once

#include <cstdint>

#ifdef CPU_CAPABILITY_AVX2
#include <immintrin.h>
#endif

namespace fastformer::cpu {

namespace philox {
constexpr uint32_t kKeyA = 0x9E3779B9, kKeyB = 0xBB67AE85;      // Weyl increments of the key
constexpr uint32_t kRoundA = 0xD2511F53, kRoundB = 0xCD9E8D57;  // round multipliers
constexpr int kRounds = 10;
constexpr float kUintToUniform = 4.6566127342e-10f;
}  // namespace philox

inline uint32_t mul_high_u32(uint32_t a, uint32_t b) { return static_cast<uint32_t>((uint64_t(a) * b) >> 32); }

inline float philox_uniform(int64_t seed, uint64_t offset) {
  using namespace philox;
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(uint64_t(seed)), k1 = static_cast<uint32_t>(uint64_t(seed) >> 32);
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t prev_c0 = c0, prev_c2 = c2;
    c0 = mul_high_u32(kRoundB, prev_c2) ^ c1 ^ k0;
    c2 = mul_high_u32(kRoundA, prev_c0) ^ c3 ^ k1;
    c1 = kRoundB * prev_c2;
    c3 = kRoundA * prev_c0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  int32_t x = static_cast<int32_t>(c0);
  if (x < 0) x = ~x;
  return static_cast<float>(x) * kUintToUniform;
}

#ifdef CPU_CAPABILITY_AVX2
namespace philox {
// High and low 32 bits of the products of eight uint32 lanes with a constant.
inline void mul_wide(__m256i a, __m256i constant, __m256i& high, __m256i& low) {
  const __m256i even = _mm256_mul_epu32(a, constant);                        // 64-bit products of lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), constant);  // lanes 1, 3, 5, 7
  high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0b10101010);
  low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0b10101010);
}
}  // namespace philox
#endif

// out[l] = philox_uniform(seed, first_offset + l * stride) for l < 8.
inline void philox_uniform8(int64_t seed, uint64_t first_offset, uint64_t stride, float* out) {
#ifdef CPU_CAPABILITY_AVX2
  using namespace philox;
  alignas(32) uint32_t offset_low[8], offset_high[8];
  for (int l = 0; l < 8; ++l) {
    const uint64_t offset = first_offset + l * stride;
    offset_low[l] = static_cast<uint32_t>(offset);
    offset_high[l] = static_cast<uint32_t>(offset >> 32);
  }
  __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(offset_low));
  __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(offset_high));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  __m256i k0 = _mm256_set1_epi32(static_cast<int32_t>(uint64_t(seed)));
  __m256i k1 = _mm256_set1_epi32(static_cast<int32_t>(uint64_t(seed) >> 32));
  const __m256i round_a = _mm256_set1_epi32(static_cast<int32_t>(kRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int32_t>(kRoundB));
  const __m256i key_a = _mm256_set1_epi32(static_cast<int32_t>(kKeyA));
  const __m256i key_b = _mm256_set1_epi32(static_cast<int32_t>(kKeyB));
  for (int round = 0; round < kRounds; ++round) {
    __m256i high_b, low_b, high_a, low_a;
    mul_wide(c2, round_b, high_b, low_b);
    mul_wide(c0, round_a, high_a, low_a);
    c0 = _mm256_xor_si256(_mm256_xor_si256(high_b, c1), k0);
    c2 = _mm256_xor_si256(_mm256_xor_si256(high_a, c3), k1);
    c1 = low_b;
    c3 = low_a;
    k0 = _mm256_add_epi32(k0, key_a);
    k1 = _mm256_add_epi32(k1, key_b);
  }
  const __m256i folded = _mm256_xor_si256(c0, _mm256_srai_epi32(c0, 31));  // x < 0 ? ~x : x
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(folded), _mm256_set1_ps(kUintToUniform)));
#else
  for (int l = 0; l < 8; ++l) out[l] = philox_uniform(seed, first_offset + l * stride);
#endif
}

}  // namespace fastformer::cpu
