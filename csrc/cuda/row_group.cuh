// How the row kernels (norms, softmax) map threads to rows, and their row-wide reductions.
//
// A block of blockDim = (threads_per_row, rows_per_block) works on rows_per_block rows at a time:
// threadIdx.x indexes a thread inside its row group, threadIdx.y the row. Threads per row is a power
// of two up to 32 (several rows share a warp: short rows, e.g. 97 or 128 columns, keep every lane
// busy) or a multiple of 32 up to 1024. Each thread owns kPerThread packs of V elements per chunk of
// threads_per_row * kPerThread packs (RowPacks). A row that fits in one chunk stays in registers;
// longer rows are processed chunk by chunk and re-read.
//
// Every thread of a block runs the same number of row iterations (rows past the end are computed
// on padding and not stored), so the __syncthreads() in the reductions are reached by all threads.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace fastformer::cuda {

// Shared memory a block's reductions need: one float per warp (at most 1024 / 32).
inline constexpr int kMaxWarps = 32;

struct RowGroup {
  float* scratch;  // this row group's warp slots in a __shared__ float[kMaxWarps]
  int tid;         // threadIdx.x
  int threads;     // blockDim.x

  __device__ static RowGroup of_this_thread(float* block_scratch) {
    const int threads = blockDim.x;  // groups of up to 32 threads reduce with shuffles only
    return {threads <= 32 ? block_scratch : block_scratch + threadIdx.y * (threads / 32),
            static_cast<int>(threadIdx.x), threads};
  }

  // Every thread of the group gets the same result (the xor butterfly gives each lane the same
  // sum; the cross-warp step reads the warp partials in a fixed order).
  template <typename Op>
  __device__ float reduce(float v, Op op) const {
    const int width = threads < 32 ? threads : 32;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2)
      if (offset < width) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    if (threads <= 32) return v;
    if (tid % 32 == 0) scratch[tid / 32] = v;
    __syncthreads();
    float total = scratch[0];
    for (int w = 1; w < threads / 32; ++w) total = op(total, scratch[w]);
    __syncthreads();  // the slots are reused by the next reduction
    return total;
  }

  __device__ float sum(float v) const {
    return reduce(v, [](float a, float b) { return a + b; });
  }
  __device__ float max(float v) const {
    return reduce(v, [](float a, float b) { return fmaxf(a, b); });
  }
};

// This thread's packs of one row: kPerThread per chunk, at pack = (chunk * kPerThread + i) *
// threads + tid (a warp's accesses are contiguous). Rows past the end (valid = false) have none.
template <int kPerThread>
struct RowPacks {
  const RowGroup& group;
  int64_t packs;  // packs in the row
  bool valid;

  __device__ int64_t pack(int64_t chunk, int i) const { return (chunk * kPerThread + i) * group.threads + group.tid; }
  __device__ bool in_row(int64_t pack) const { return valid && pack < packs; }

  // fn(i, pack) for each slot i of `chunk` whose pack lies in the row (unrolled: i is a constant, so
  // per-slot register arrays stay in registers).
  template <typename Fn>
  __device__ void for_each(int64_t chunk, Fn&& fn) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t p = pack(chunk, i);
      if (in_row(p)) fn(i, p);
    }
  }
};

// Launch shape of a row kernel.
struct RowPlan {
  int threads_per_row;  // blockDim.x
  int rows_per_block;   // blockDim.y
  int64_t chunks;       // chunks per row (1: the row stays in registers)
  int64_t blocks;       // gridDim.x; blocks loop over rows with a stride of blocks * rows_per_block

  dim3 block() const { return dim3(threads_per_row, rows_per_block); }
};

// Blocks of ~256 threads: enough warps per block to hide latency, small enough for 8 blocks per SM.
inline constexpr int kTargetBlockThreads = 256;
inline constexpr int kMaxBlockThreads = 1024;
// gridDim.x is limited to 2^31 - 1; blocks loop over rows, so any cap works.
inline constexpr int64_t kMaxBlocks = int64_t{1} << 30;

// Plan for rows of `cols` elements when each thread holds `elems_per_thread` elements per chunk.
inline RowPlan plan_rows(int64_t rows, int64_t cols, int elems_per_thread) {
  const int64_t needed = (cols + elems_per_thread - 1) / elems_per_thread;  // threads for one chunk
  int threads = 1;
  if (needed <= 32) {
    while (threads < needed) threads *= 2;
  } else {
    threads = static_cast<int>(std::min<int64_t>(kMaxBlockThreads, (needed + 31) / 32 * 32));
  }
  const int64_t per_chunk = int64_t{threads} * elems_per_thread;
  const int rows_per_block = std::max(1, kTargetBlockThreads / threads);
  const int64_t blocks = std::min(kMaxBlocks, std::max<int64_t>(1, (rows + rows_per_block - 1) / rows_per_block));
  return {threads, rows_per_block, (cols + per_chunk - 1) / per_chunk, blocks};
}

}  // namespace fastformer::cuda
