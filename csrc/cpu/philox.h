// Triton's tl.rand on the CPU: one uniform float in [0, 1) per (seed, 64-bit offset), bit-identical to
// tl.rand(seed, offset) of triton/language/random.py (Philox4x32-10), so the CPU attention kernel drops
// exactly the elements the Triton and CUDA kernels drop for the same seed.
//
// tl.rand(seed, offset) runs Philox on the counter (offset low 32 bits, offset high 32 bits, 0, 0) with the key
// (seed low 32 bits, seed high 32 bits), keeps the first output word c0, reads it as int32 x, folds negatives with
// x -> -x - 1 (= ~x, no overflow at INT32_MIN), and returns float(x) * 4.6566127342e-10f in fp32 (the largest scale
// with INT32_MAX * scale < 1 after rounding).
#pragma once

#include <cstdint>

namespace fastformer::cpu {

inline uint32_t mul_high_u32(uint32_t a, uint32_t b) { return static_cast<uint32_t>((uint64_t(a) * b) >> 32); }

inline float philox_uniform(int64_t seed, uint64_t offset) {
  constexpr uint32_t kKeyA = 0x9E3779B9, kKeyB = 0xBB67AE85;      // Weyl increments of the key
  constexpr uint32_t kRoundA = 0xD2511F53, kRoundB = 0xCD9E8D57;  // round multipliers
  constexpr int kRounds = 10;
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
  return static_cast<float>(x) * 4.6566127342e-10f;
}

}  // namespace fastformer::cpu
