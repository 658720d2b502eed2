// CUDA attention forward: a tensor-core kernel for prefill/encoder shapes (fp16/bf16) and a split-KV
// SIMT kernel plus combine for decode shapes and fp32 (see attention.h for when each runs).
//
// Scores live in log2 units inside the kernels (x = (scale * q.k + bias) * log2(e)) so probabilities
// are exp2(x - max); lse is converted back to natural log on output. A row whose keys are all masked
// keeps max = -inf and sum = 0 and is written as out = 0, lse = +inf; every exp2 uses a finite
// reference (0 while the max is still -inf), so no -inf - -inf ever makes a NaN.
//
// Inline PTX, dynamic shared memory and launches go through device_api.cuh only, so the same code
// runs on a CPU under tests/cuda_emu/ (tests/ops/test_attention_cuda_emu.py) where there is no GPU.
#include <algorithm>
#include <iterator>
#include <type_traits>

#include "cuda/attention.h"
#include "cuda/device_api.cuh"
#include "cuda/philox.cuh"
#include "cuda/row_io.cuh"

namespace fastformer::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kPosInf = __builtin_huge_valf();

// ---------------------------------------------------------------------------------------------
// Scalar loads (to_float / from_float come from cuda/row_io.cuh)

// Bias and relative-bias tables come as float32 or the dtype of q, chosen at run time (warp-uniform).
__device__ __forceinline__ float load_as_float(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(base)[index]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

// ---------------------------------------------------------------------------------------------
// Score terms shared by both kernels

// T5 relative position bias of (h, i, j) (schema comment in csrc/fastformer.cpp). The bucket is
// clamped so a malformed LUT reads a wrong bias instead of faulting.
__device__ __forceinline__ float t5_bias(const AttentionFwdParams& p, int64_t h, int64_t i, int64_t j) {
  const int64_t rel = j - (i + p.seqlen_k - p.seqlen_q);
  const int64_t distance = p.rel_bidirectional ? (rel < 0 ? -rel : rel) : (rel < 0 ? -rel : 0);
  int64_t bucket = p.rel_lut[min(distance, p.rel_lut_len - 1) * p.rel_lut_stride];
  if (p.rel_bidirectional && rel > 0) bucket += p.num_buckets / 2;
  bucket = max(int64_t{0}, min(bucket, p.num_buckets - 1));
  return load_as_float(p.rel_table, p.rel_table_dtype, bucket * p.rel_table_stride[0] + h * p.rel_table_stride[1]);
}

// Score of query i and key j in log2 units from the raw dot product q.k, or -inf when masked.
// Needs i < Sq and j < Sk (callers mask out-of-range rows and keys themselves).
__device__ __forceinline__ float score_log2(const AttentionFwdParams& p, float qk, int64_t b, int64_t h, int64_t i,
                                            int64_t j) {
  if (p.causal && j > i + p.seqlen_k - p.seqlen_q) return kNegInf;
  if (p.key_padding_mask != nullptr &&
      !p.key_padding_mask[b * p.key_padding_mask_stride[0] + j * p.key_padding_mask_stride[1]]) {
    return kNegInf;
  }
  float additive = 0.0f;
  if (p.bias != nullptr) {
    additive += load_as_float(p.bias, p.bias_dtype,
                              b * p.bias_stride[0] + h * p.bias_stride[1] + i * p.bias_stride[2] + j * p.bias_stride[3]);
  }
  if (p.rel_lut != nullptr) additive += t5_bias(p, h, i, j);
  return (qk * p.scale + additive) * kLog2e;
}

// Probability after dropout: prob / (1 - p) if element (b, h, i, j) is kept, else 0.
__device__ __forceinline__ float apply_dropout(const AttentionFwdParams& p, float prob, int64_t b, int64_t h, int64_t i,
                                               int64_t j) {
  const uint64_t offset = static_cast<uint64_t>(((b * p.heads + h) * p.seqlen_q + i) * p.seqlen_k + j);
  return philox_uniform(p.seed, offset) >= p.dropout_p ? prob / (1.0f - p.dropout_p) : 0.0f;
}

// Reference point for exp2 when the running max may still be -inf (nothing kept yet).
__device__ __forceinline__ float finite_or_zero(float running_max) {
  return running_max == kNegInf ? 0.0f : running_max;
}

// lse (natural log) of a row with running max `row_max` (log2 units) and denominator `sum`.
__device__ __forceinline__ float lse_of(float row_max, float sum) {
  return sum > 0.0f ? (row_max + log2f(sum)) * kLn2 : kPosInf;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (fp16 / bf16)

// CTA shape per head dim: `warps` warps of 16 query rows each, `block_n` keys per K/V tile, two K/V
// stages. Shared memory = (16 warps + 4 block_n) * (D + 8) * 2 bytes; the largest (D = 256) is
// 101376 bytes, the opt-in limit of sm_86/sm_89 (sm_80: 163 KB, sm_90: 227 KB). Two CTAs per SM for
// head dims <= 64 caps registers at 128 per thread (-Xptxas -v, sm_80: 123-127, no spills); larger
// head dims need 155-242 registers and run one CTA per SM.
struct PrefillConfig {
  int warps, block_n, min_ctas_per_sm;
};
constexpr PrefillConfig prefill_config(int head_dim) {
  if (head_dim <= 64) return {8, 64, 2};
  if (head_dim <= 96) return {8, 64, 1};
  if (head_dim <= 128) return {8, 32, 1};
  return {4, 32, 1};
}

template <int D>
struct PrefillShape {
  static constexpr int kWarps = prefill_config(D).warps;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kBlockM = kWarps * 16;
  static constexpr int kBlockN = prefill_config(D).block_n;
  static constexpr int kMinCtasPerSm = prefill_config(D).min_ctas_per_sm;
  static constexpr int kStages = 2;
  // +8 elements (16 bytes) per shared row: rows stay 16-byte aligned for cp.async and ldmatrix, and
  // the 8 rows x 16 bytes of one ldmatrix matrix fall in 32 distinct banks.
  static constexpr int kRowStride = D + 8;
  static constexpr size_t kSmemBytes = size_t(kBlockM + 2 * kStages * kBlockN) * kRowStride * 2;
  static_assert(D % 16 == 0, "head dim must be a multiple of the mma k (16)");
  static_assert(kBlockN % 16 == 0, "key tile must be a multiple of the mma k (16)");
};

// Copies rows [row0, row0 + kRows) of a [rows_total, D] matrix (row stride `stride` elements) into
// shared [kRows][kRowStride], zero-filling rows >= rows_total so they contribute nothing (not NaN).
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, int64_t stride, int64_t row0, int64_t rows_total,
                                          bool vectorized) {
  using Shape = PrefillShape<D>;
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  for (int c = threadIdx.x; c < kRows * kChunksPerRow; c += Shape::kThreads) {
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    T* dst = smem + r * Shape::kRowStride + col;
    const int64_t row = row0 + r;
    const bool in_range = row < rows_total;
    if (vectorized) {
      // src-size 0 zero-fills the 16 bytes without reading; the source must still be a valid address.
      cp_async_16(dst, in_range ? gmem + row * stride + col : gmem, in_range ? 16 : 0);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[e] = in_range ? gmem[row * stride + col + e] : from_float<T>(0.0f);
    }
  }
}

// acc0 += A * B0 and acc1 += A * B1 for two adjacent 8-column tiles whose B fragments are the four
// matrices of one ldmatrix_x4 (b_lane_row: this lane's row address) in the order b0(B0), b1(B0),
// b0(B1), b1(B1).
template <typename T, bool kTranspose>
__device__ __forceinline__ void mma_two_n_tiles(float (&acc0)[4], float (&acc1)[4], const uint32_t (&a)[4],
                                                const T* b_lane_row) {
  uint32_t b[4];
  ldmatrix_x4<kTranspose>(b, b_lane_row);
  mma_16816<T>(acc0, a, b[0], b[1]);
  mma_16816<T>(acc1, a, b[2], b[3]);
}

template <typename T>
__device__ __forceinline__ uint32_t pack_float2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack_float2<__half>(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack_float2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// One CTA per (query tile of kBlockM rows, b*h): blockIdx.x = bh * num_q_tiles + (num_q_tiles - 1 - tile),
// so CTAs that share K/V run next to each other. Warp w owns query rows m0 + 16w .. m0 + 16w + 15; lane (g, t)
// holds rows g and g + 8 of that slab (index r = 0, 1 below) in the mma accumulator layout
// (mma_16816 in device_api.cuh).
template <typename T, int D>
__global__ void __launch_bounds__(PrefillShape<D>::kThreads, PrefillShape<D>::kMinCtasPerSm)
    attention_prefill_kernel(const __grid_constant__ AttentionFwdParams p, int64_t num_q_tiles) {
  using Shape = PrefillShape<D>;
  constexpr int kBlockM = Shape::kBlockM, kBlockN = Shape::kBlockN, kRowStride = Shape::kRowStride;
  constexpr int kKeyTiles8 = kBlockN / 8;  // 8-key column tiles of the score accumulator
  constexpr int kDimTiles8 = D / 8;        // 8-column tiles of the output accumulator

  T* q_smem = reinterpret_cast<T*>(dynamic_smem());                // [kBlockM][kRowStride]
  T* k_smem = q_smem + kBlockM * kRowStride;                  // [kStages][kBlockN][kRowStride]
  T* v_smem = k_smem + Shape::kStages * kBlockN * kRowStride;  // [kStages][kBlockN][kRowStride]

  // Last query tiles first: under causal they see the most keys, and starting them early shortens the
  // tail of the grid.
  const int64_t tile = num_q_tiles - 1 - blockIdx.x % num_q_tiles, bh = blockIdx.x / num_q_tiles;
  const int64_t b = bh / p.heads, h = bh % p.heads, h_kv = h / (p.heads / p.kv_heads);
  const int64_t Sq = p.seqlen_q, Sk = p.seqlen_k;
  const int64_t m0 = tile * kBlockM;
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h_kv * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h_kv * p.v_stride[1];

  // Causal: the tile's last real row keeps keys up to last_row + Sk - Sq; later key tiles are skipped.
  int64_t key_end = Sk;
  if (p.causal) {
    const int64_t last_row = min(m0 + kBlockM, Sq) - 1;
    key_end = max(int64_t{0}, min(Sk, last_row + Sk - Sq + 1));
  }
  const int64_t num_kv_tiles = (key_end + kBlockN - 1) / kBlockN;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t rows[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  const bool has_per_key_terms = p.key_padding_mask != nullptr || p.bias != nullptr || p.rel_lut != nullptr;
  const float scale_log2 = p.scale * kLog2e;

  float out_acc[kDimTiles8][4];
#pragma unroll
  for (int dt = 0; dt < kDimTiles8; ++dt) out_acc[dt][0] = out_acc[dt][1] = out_acc[dt][2] = out_acc[dt][3] = 0.0f;
  float row_max[2] = {kNegInf, kNegInf};  // log2 units
  float row_sum[2] = {0.0f, 0.0f};        // this thread's share; the 4 lanes of a row add up at the end

  if (num_kv_tiles > 0) {
    load_tile<T, D, kBlockM>(q_smem, q, p.q_stride[2], m0, Sq, p.qkv_16b_aligned);
    load_tile<T, D, kBlockN>(k_smem, k, p.k_stride[2], 0, Sk, p.qkv_16b_aligned);
    load_tile<T, D, kBlockN>(v_smem, v, p.v_stride[2], 0, Sk, p.qkv_16b_aligned);
    cp_async_commit();
  }

  for (int64_t kv_tile = 0; kv_tile < num_kv_tiles; ++kv_tile) {
    // Prefetch the next K/V tile into the other stage while this one is computed. That stage was
    // last read in the previous iteration, which ended with __syncthreads.
    if (kv_tile + 1 < num_kv_tiles) {
      const int next = (kv_tile + 1) % Shape::kStages;
      const int64_t next_key0 = (kv_tile + 1) * kBlockN;
      load_tile<T, D, kBlockN>(k_smem + next * kBlockN * kRowStride, k, p.k_stride[2], next_key0, Sk,
                               p.qkv_16b_aligned);
      load_tile<T, D, kBlockN>(v_smem + next * kBlockN * kRowStride, v, p.v_stride[2], next_key0, Sk,
                               p.qkv_16b_aligned);
      cp_async_commit();
      cp_async_wait<1>();  // everything but the prefetch has landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    const int stage = kv_tile % Shape::kStages;
    const T* k_tile = k_smem + stage * kBlockN * kRowStride;
    const T* v_tile = v_smem + stage * kBlockN * kRowStride;
    const int64_t key0 = kv_tile * kBlockN;

    // S = Q K^T for this warp's 16 rows x kBlockN keys. ldmatrix_x4 addresses (lane l gives row l % 8
    // of matrix l / 8): Q's 16x16 A tile is matrices (rows 0-7 | 8-15) x (dims 0-7 | 8-15), rows
    // fastest; two key tiles' B fragments are K[keys nt*8.. | (nt+1)*8..][dims 0-7 | 8-15], dims fastest.
    float scores[kKeyTiles8][4];
#pragma unroll
    for (int nt = 0; nt < kKeyTiles8; ++nt) scores[nt][0] = scores[nt][1] = scores[nt][2] = scores[nt][3] = 0.0f;
    const T* q_lane_row = q_smem + (warp * 16 + (lane / 8 % 2) * 8 + lane % 8) * kRowStride + (lane / 16) * 8;
    const T* k_lane_row = k_tile + ((lane / 16) * 8 + lane % 8) * kRowStride + (lane / 8 % 2) * 8;
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      uint32_t a[4];
      ldmatrix_x4<false>(a, q_lane_row + kc * 16);
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; nt += 2) {
        mma_two_n_tiles<T, false>(scores[nt], scores[nt + 1], a, k_lane_row + nt * 8 * kRowStride + kc * 16);
      }
    }

    // Scale, bias, masks. Most tiles need only the scale: every key in range and, under causal, visible
    // from the warp's first row (so from all 16). Rows >= Sq there have zero q and finite scores;
    // nothing of them is written. Element e of tile nt is row rows[e / 2], key key0 + 8 nt + 2t + e % 2.
    const bool plain_tile = !has_per_key_terms && key0 + kBlockN <= Sk &&
                            (!p.causal || key0 + kBlockN - 1 <= m0 + warp * 16 + Sk - Sq);
    if (plain_tile) {
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) scores[nt][e] *= scale_log2;
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = rows[e / 2], j = key0 + nt * 8 + 2 * t + e % 2;
          scores[nt][e] = (i < Sq && j < Sk) ? score_log2(p, scores[nt][e], b, h, i, j) : kNegInf;
        }
      }
    }

    // Online softmax: new running max per row over the 4 lanes that share it, rescale the old sum and
    // output by exp2(old max - new max), turn scores into probabilities.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float tile_max = kNegInf;
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) tile_max = fmaxf(tile_max, fmaxf(scores[nt][2 * r], scores[nt][2 * r + 1]));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[r], tile_max);
      const float reference = finite_or_zero(new_max);
      const float rescale = exp2f(row_max[r] - reference);
      row_max[r] = new_max;
      row_sum[r] *= rescale;
#pragma unroll
      for (int dt = 0; dt < kDimTiles8; ++dt) {
        out_acc[dt][2 * r] *= rescale;
        out_acc[dt][2 * r + 1] *= rescale;
      }
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          scores[nt][e] = exp2f(scores[nt][e] - reference);
          row_sum[r] += scores[nt][e];
        }
      }
    }

    // Dropout acts on the probabilities after the denominator has counted them.
    if (p.dropout_p > 0.0f) {
#pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t i = rows[e / 2], j = key0 + nt * 8 + 2 * t + e % 2;
          if (i < Sq && j < Sk) scores[nt][e] = apply_dropout(p, scores[nt][e], b, h, i, j);
        }
      }
    }

    // O += P V. The score accumulator of key tiles 2kc and 2kc+1 is exactly the mma A fragment of
    // P[16 rows][16 keys kc]. B fragments of two 8-dim tiles come transposed from the row-major V
    // tile: matrices V[keys 0-7 | 8-15][dims dt*8.. | (dt+1)*8..], keys fastest.
    const T* v_lane_row = v_tile + ((lane / 8 % 2) * 8 + lane % 8) * kRowStride + (lane / 16) * 8;
#pragma unroll
    for (int kc = 0; kc < kBlockN / 16; ++kc) {
      const uint32_t a[4] = {pack_float2<T>(scores[2 * kc][0], scores[2 * kc][1]),
                             pack_float2<T>(scores[2 * kc][2], scores[2 * kc][3]),
                             pack_float2<T>(scores[2 * kc + 1][0], scores[2 * kc + 1][1]),
                             pack_float2<T>(scores[2 * kc + 1][2], scores[2 * kc + 1][3])};
#pragma unroll
      for (int dt = 0; dt < kDimTiles8; dt += 2) {
        mma_two_n_tiles<T, true>(out_acc[dt], out_acc[dt + 1], a, v_lane_row + kc * 16 * kRowStride + dt * 8);
      }
    }
    __syncthreads();  // all warps are done with this stage before the next prefetch overwrites it
  }

  // Epilogue: full row sums (reduced before any lane-dependent branch), normalize, write out and lse.
  T* out = static_cast<T*>(p.out) + bh * Sq * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int64_t i = rows[r];
    if (i >= Sq) continue;
    const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;
    T* out_row = out + i * D;
#pragma unroll
    for (int dt = 0; dt < kDimTiles8; ++dt) {
      const int col = dt * 8 + 2 * t;
      out_row[col] = from_float<T>(out_acc[dt][2 * r] * inv_sum);
      out_row[col + 1] = from_float<T>(out_acc[dt][2 * r + 1] * inv_sum);
    }
    if (t == 0) p.lse[bh * Sq + i] = lse_of(row_max[r], sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Split-KV kernel (decode shapes, fp32) and combine

constexpr int kSplitWarps = 4;
constexpr int kSplitThreads = kSplitWarps * 32;
constexpr int kSplitRows = static_cast<int>(kSplitKvMaxQueryRows);  // query rows per CTA
constexpr int kSplitUnroll = 4;  // keys a warp loads before using them, to keep several loads in flight
constexpr int kSplitKeysPerStep = kSplitWarps * kSplitUnroll;
constexpr int64_t kMinKeysPerSplit = 128;  // below this a CTA spends more on setup than on keys
constexpr int kCombineWarps = 4;

// Partial results of the split-KV kernel, per split s and output row n = bh * Sq + i (R = B*H*Sq rows):
// out[(s * R + n) * D + d] = sum over the chunk's keys of exp2(x - max) (after dropout) * v,
// max[s * R + n] (log2 units, -inf if the chunk kept nothing), sum[s * R + n] = sum of exp2(x - max).
struct SplitWorkspace {
  float* out;
  float* max;
  float* sum;
};

// Grid: blockIdx.x = (bh * num_row_blocks + row_block) * num_splits + split. Warp w takes keys
// chunk_begin + (w + kSplitWarps * step) * kSplitUnroll + u; lane l holds head dims l, l + 32, ...
// Each warp keeps its own online softmax; the warps merge through shared memory at the end.
template <typename T, int D>
__global__ void __launch_bounds__(kSplitThreads)
    attention_split_kv_kernel(const __grid_constant__ AttentionFwdParams p, SplitWorkspace ws, int64_t num_splits,
                              int64_t chunk_keys, int64_t num_row_blocks) {
  constexpr int kPerLane = (D + 31) / 32;
  __shared__ float warp_max_smem[kSplitWarps][kSplitRows];
  __shared__ float warp_sum_smem[kSplitWarps][kSplitRows];
  __shared__ float warp_out_smem[kSplitWarps][kSplitRows][D];

  const int64_t split = blockIdx.x % num_splits;
  const int64_t row_block = (blockIdx.x / num_splits) % num_row_blocks;
  const int64_t bh = blockIdx.x / num_splits / num_row_blocks;
  const int64_t b = bh / p.heads, h = bh % p.heads, h_kv = h / (p.heads / p.kv_heads);
  const int64_t Sq = p.seqlen_q, Sk = p.seqlen_k;
  const int64_t row0 = row_block * kSplitRows;
  const int num_rows = static_cast<int>(min(int64_t{kSplitRows}, Sq - row0));
  const int64_t key_begin = split * chunk_keys;
  int64_t key_end = min(key_begin + chunk_keys, Sk);
  if (p.causal) key_end = min(key_end, row0 + num_rows - 1 + Sk - Sq + 1);

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h_kv * p.k_stride[1];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h_kv * p.v_stride[1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  float q_reg[kSplitRows][kPerLane];
#pragma unroll
  for (int r = 0; r < kSplitRows; ++r) {
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + 32 * c;
      q_reg[r][c] = (r < num_rows && d < D) ? to_float(q[(row0 + r) * p.q_stride[2] + d]) : 0.0f;
    }
  }
  float row_max[kSplitRows], row_sum[kSplitRows], out_acc[kSplitRows][kPerLane];
#pragma unroll
  for (int r = 0; r < kSplitRows; ++r) {
    row_max[r] = kNegInf;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) out_acc[r][c] = 0.0f;
  }

  for (int64_t key_base = key_begin + warp * kSplitUnroll; key_base < key_end; key_base += kSplitKeysPerStep) {
    float k_reg[kSplitUnroll][kPerLane], v_reg[kSplitUnroll][kPerLane];
#pragma unroll
    for (int u = 0; u < kSplitUnroll; ++u) {
      const int64_t j = key_base + u;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int d = lane + 32 * c;
        const bool in_range = j < key_end && d < D;
        k_reg[u][c] = in_range ? to_float(k[j * p.k_stride[2] + d]) : 0.0f;
        v_reg[u][c] = in_range ? to_float(v[j * p.v_stride[2] + d]) : 0.0f;
      }
    }
    // j and num_rows are the same on every lane, so these branches are warp-uniform.
#pragma unroll
    for (int u = 0; u < kSplitUnroll; ++u) {
      const int64_t j = key_base + u;
      if (j >= key_end) break;
#pragma unroll
      for (int r = 0; r < kSplitRows; ++r) {
        if (r >= num_rows) break;
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) dot += q_reg[r][c] * k_reg[u][c];
        dot = warp_sum(dot);  // bitwise identical on every lane: the butterfly adds the same pairs
        const float x = score_log2(p, dot, b, h, row0 + r, j);
        const float new_max = fmaxf(row_max[r], x);
        const float reference = finite_or_zero(new_max);
        const float rescale = exp2f(row_max[r] - reference);
        const float prob = exp2f(x - reference);
        row_max[r] = new_max;
        row_sum[r] = row_sum[r] * rescale + prob;
        const float weight = p.dropout_p > 0.0f ? apply_dropout(p, prob, b, h, row0 + r, j) : prob;
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) out_acc[r][c] = out_acc[r][c] * rescale + weight * v_reg[u][c];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kSplitRows; ++r) {
    if (lane == 0) {
      warp_max_smem[warp][r] = row_max[r];
      warp_sum_smem[warp][r] = row_sum[r];
    }
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < D) warp_out_smem[warp][r][d] = out_acc[r][c];
    }
  }
  __syncthreads();

  const int64_t total_rows = p.batch * p.heads * Sq;
  for (int idx = threadIdx.x; idx < num_rows * D; idx += kSplitThreads) {
    const int r = idx / D, d = idx % D;
    float chunk_max = kNegInf;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) chunk_max = fmaxf(chunk_max, warp_max_smem[w][r]);
    float chunk_sum = 0.0f, chunk_out = 0.0f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) {
      const float warp_row_max = warp_max_smem[w][r];
      if (warp_row_max == kNegInf) continue;  // that warp kept no key of this row
      const float weight = exp2f(warp_row_max - chunk_max);
      chunk_sum += weight * warp_sum_smem[w][r];
      chunk_out += weight * warp_out_smem[w][r][d];
    }
    const int64_t n = split * total_rows + bh * Sq + row0 + r;
    ws.out[n * D + d] = chunk_out;
    if (d == 0) {
      ws.max[n] = chunk_max;
      ws.sum[n] = chunk_sum;
    }
  }
}

// One warp per output row n = bh * Sq + i: merges the splits' partials into out and lse.
template <typename T>
__global__ void __launch_bounds__(kCombineWarps * 32)
    attention_combine_kernel(SplitWorkspace ws, T* out, float* lse, int64_t total_rows, int64_t num_splits,
                             int head_dim) {
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (n >= total_rows) return;  // whole warp: no block-level synchronization below

  float row_max = kNegInf;
  for (int64_t s = lane; s < num_splits; s += 32) row_max = fmaxf(row_max, ws.max[s * total_rows + n]);
  row_max = warp_max(row_max);
  float sum = 0.0f;
  for (int64_t s = lane; s < num_splits; s += 32) {
    const float split_max = ws.max[s * total_rows + n];
    if (split_max != kNegInf) sum += exp2f(split_max - row_max) * ws.sum[s * total_rows + n];
  }
  sum = warp_sum(sum);
  const float inv_sum = sum > 0.0f ? 1.0f / sum : 0.0f;

  for (int d = lane; d < head_dim; d += 32) {
    float acc = 0.0f;
    for (int64_t s = 0; s < num_splits; ++s) {
      const float split_max = ws.max[s * total_rows + n];
      if (split_max != kNegInf) acc += exp2f(split_max - row_max) * ws.out[(s * total_rows + n) * head_dim + d];
    }
    out[n * head_dim + d] = from_float<T>(acc * inv_sum);
  }
  if (lane == 0) lse[n] = lse_of(row_max, sum);
}

// ---------------------------------------------------------------------------------------------
// Launchers

constexpr int kHeadDims[] = {32, 64, 80, 96, 128, 256};

// Calls fn(std::integral_constant<int, D>{}) for the supported head dim equal to head_dim.
template <typename Fn>
cudaError_t dispatch_head_dim(int64_t head_dim, Fn&& fn) {
  switch (head_dim) {
    case 32: return fn(std::integral_constant<int, 32>{});
    case 64: return fn(std::integral_constant<int, 64>{});
    case 80: return fn(std::integral_constant<int, 80>{});
    case 96: return fn(std::integral_constant<int, 96>{});
    case 128: return fn(std::integral_constant<int, 128>{});
    case 256: return fn(std::integral_constant<int, 256>{});
    default: return cudaErrorInvalidValue;
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t prefill_block_m(int64_t head_dim) {
  int64_t block_m = 0;
  dispatch_head_dim(head_dim, [&](auto d) {
    block_m = PrefillShape<decltype(d)::value>::kBlockM;
    return cudaSuccess;
  });
  return block_m;
}

template <typename T, int D>
cudaError_t launch_prefill(const AttentionFwdParams& p, const AttentionFwdPlan& plan, cudaStream_t stream) {
  using Shape = PrefillShape<D>;
  const int64_t num_q_tiles = ceil_div(p.seqlen_q, Shape::kBlockM);
  return launch_kernel(attention_prefill_kernel<T, D>, plan.grid_ctas, Shape::kThreads, Shape::kSmemBytes, stream, p,
                       num_q_tiles);
}

template <typename T, int D>
cudaError_t launch_split_kv(const AttentionFwdParams& p, const AttentionFwdPlan& plan, float* workspace,
                            cudaStream_t stream) {
  const int64_t total_rows = p.batch * p.heads * p.seqlen_q;
  const SplitWorkspace ws{workspace, workspace + plan.num_splits * total_rows * D,
                          workspace + plan.num_splits * total_rows * (D + 1)};
  const int64_t num_row_blocks = ceil_div(p.seqlen_q, kSplitRows);
  const cudaError_t err = launch_kernel(attention_split_kv_kernel<T, D>, plan.grid_ctas, kSplitThreads, 0, stream, p,
                                        ws, plan.num_splits, plan.chunk_keys, num_row_blocks);
  if (err != cudaSuccess) return err;
  return launch_kernel(attention_combine_kernel<T>, ceil_div(total_rows, kCombineWarps), kCombineWarps * 32, 0, stream,
                       ws, static_cast<T*>(p.out), p.lse, total_rows, plan.num_splits, D);
}

}  // namespace

bool attention_head_dim_supported(int64_t head_dim) {
  return std::find(std::begin(kHeadDims), std::end(kHeadDims), head_dim) != std::end(kHeadDims);
}

AttentionFwdPlan plan_attention_fwd(const AttentionFwdParams& p, int sm_count) {
  AttentionFwdPlan plan{};
  const int64_t bh = p.batch * p.heads;
  plan.split_kv = p.dtype == DType::kFloat32 || p.seqlen_q <= kSplitKvMaxQueryRows;
  if (!plan.split_kv) {
    plan.grid_ctas = bh * ceil_div(p.seqlen_q, prefill_block_m(p.head_dim));
    return plan;
  }
  // Enough chunks that the grid covers the GPU about twice, but at least kMinKeysPerSplit keys each;
  // chunks are whole steps of kSplitKeysPerStep keys, and no chunk is empty.
  const int64_t base_ctas = bh * ceil_div(p.seqlen_q, kSplitRows);
  const int64_t target_ctas = 2 * static_cast<int64_t>(std::max(sm_count, 1));
  int64_t splits = ceil_div(target_ctas, base_ctas);
  splits = std::max(int64_t{1}, std::min(splits, p.seqlen_k / kMinKeysPerSplit));
  plan.chunk_keys = ceil_div(ceil_div(p.seqlen_k, splits), kSplitKeysPerStep) * kSplitKeysPerStep;
  plan.num_splits = ceil_div(p.seqlen_k, plan.chunk_keys);
  plan.grid_ctas = base_ctas * plan.num_splits;
  plan.workspace_floats = plan.num_splits * bh * p.seqlen_q * (p.head_dim + 2);
  return plan;
}

cudaError_t attention_fwd(const AttentionFwdParams& p, const AttentionFwdPlan& plan, float* workspace,
                          cudaStream_t stream) {
  return dispatch_dtype(p.dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return dispatch_head_dim(p.head_dim, [&](auto d) {
      constexpr int D = decltype(d)::value;
      if (plan.split_kv) return launch_split_kv<T, D>(p, plan, workspace, stream);
      if constexpr (std::is_same_v<T, float>) {
        return cudaErrorInvalidValue;  // fp32 always plans split_kv
      } else {
        return launch_prefill<T, D>(p, plan, stream);
      }
    });
  });
}

}  // namespace fastformer::cuda
