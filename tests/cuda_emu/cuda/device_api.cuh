// Host emulation of csrc/cuda/device_api.cuh, so the real attention kernels run on a CPU.
//
// tests/cuda_emu/build.py compiles csrc/cuda/attention.cu with g++ and `-I tests/cuda_emu` ahead of
// `-I csrc`, so `#include "cuda/device_api.cuh"` finds this file. Each CUDA thread of a CTA is a
// fiber (emu_runtime.cpp); CTAs run one after another. Warp operations (__shfl_xor_sync, mma.sync)
// exchange values through per-warp slots at a warp barrier, mma.sync recomputes each lane's
// accumulator from the PTX fragment layout, ldmatrix reads the rows whose addresses the lanes gave, and cp.async copies either at issue ("early") or at the
// matching cp.async.wait_group ("late"), the two extremes of when the hardware may land them. The
// scheduling policy decides how far warps drift apart between barriers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

namespace emu {

const uint3& thread_idx();
const uint3& block_idx();
void syncthreads();
// A warp operation's data exchange: publishes this lane's `count` words, waits until all 32 lanes of
// the warp have, and returns the warp's table [32 lanes][kSlotWords]. Consecutive operations use
// two tables in turn, so one barrier suffices: a lane can only overwrite a table after every lane
// has reached the next operation, i.e. has finished reading it.
constexpr int kSlotWords = 8;
const uint32_t* warp_exchange(const uint32_t* words, int count);
unsigned char* dynamic_smem();
// Runs body() as `threads` fibers for each of grid_ctas CTAs, with smem_bytes of dynamic shared
// memory filled with 0xFF (NaN as fp16/bf16/fp32) so reading unwritten shared memory shows.
void run_grid(int64_t grid_ctas, int threads, size_t smem_bytes, const std::function<void()>& body);
// cp.async of the calling thread: issue (copy now in early mode, queue in late mode), commit, wait.
void cp_async(void* dst, const void* src, int src_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
// How the next run_grid behaves (emu_runtime.cpp): cp.async landing at the wait (late) or at issue,
// and which runnable thread the scheduler resumes next.
enum class SchedulePolicy : int { kRoundRobin = 0, kLowFirst = 1, kHighFirst = 2 };
void configure(bool late_copies, SchedulePolicy policy);

inline unsigned lane() { return thread_idx().x % 32; }

template <typename V>
V shfl_xor(V value, int lane_mask) {
  static_assert(sizeof(V) == 4, "32-bit shuffles only");
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t* table = warp_exchange(&bits, 1);
  V result;
  std::memcpy(&result, &table[(lane() ^ static_cast<unsigned>(lane_mask)) * kSlotWords], 4);
  return result;
}

template <typename T>
float half_to_float(uint16_t bits) {
  if constexpr (std::is_same_v<T, __half>) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
  } else {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
}

}  // namespace emu

using std::max;
using std::min;

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define __syncthreads() ::emu::syncthreads()
#define __shfl_xor_sync(mask, value, lane_mask) ::emu::shfl_xor(value, lane_mask)
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static

namespace fastformer::cuda {

template <typename T>
void mma_16816(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  const uint32_t* slots = emu::warp_exchange(mine, 6);
  // Element (row, col) of A and (k, n) of B, read back from the lane and register that hold it.
  const auto a_at = [&](int row, int col) {
    const int holder = (row % 8) * 4 + (col % 8) / 2, reg = row / 8 + 2 * (col / 8);
    const uint32_t word = slots[holder * emu::kSlotWords + reg];
    return emu::half_to_float<T>(static_cast<uint16_t>(col % 2 ? word >> 16 : word & 0xFFFF));
  };
  const auto b_at = [&](int k, int n) {
    const int holder = n * 4 + (k % 8) / 2, reg = 4 + k / 8;
    const uint32_t word = slots[holder * emu::kSlotWords + reg];
    return emu::half_to_float<T>(static_cast<uint16_t>(k % 2 ? word >> 16 : word & 0xFFFF));
  };
  const int g = static_cast<int>(emu::lane()) / 4, t = static_cast<int>(emu::lane()) % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    for (int k = 0; k < 16; ++k) acc[i] += a_at(row, k) * b_at(k, col);
  }
}

template <bool kTranspose>
void ldmatrix_x4(uint32_t (&reg)[4], const void* smem_row) {
  uint32_t address_words[2];
  std::memcpy(address_words, &smem_row, sizeof(smem_row));
  const uint32_t* slots = emu::warp_exchange(address_words, 2);
  const auto element = [&](int matrix, int row, int col) {
    const uint16_t* row_start;
    std::memcpy(&row_start, &slots[(matrix * 8 + row) * emu::kSlotWords], sizeof(row_start));
    return static_cast<uint32_t>(row_start[col]);
  };
  const int lane = static_cast<int>(emu::lane());
  for (int m = 0; m < 4; ++m) {
    if constexpr (kTranspose) {
      reg[m] = element(m, 2 * (lane % 4), lane / 4) | (element(m, 2 * (lane % 4) + 1, lane / 4) << 16);
    } else {
      reg[m] = element(m, lane / 4, 2 * (lane % 4)) | (element(m, lane / 4, 2 * (lane % 4) + 1) << 16);
    }
  }
}

inline void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
  emu::cp_async(smem_dst, gmem_src, src_bytes);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int kPendingGroups>
void cp_async_wait() {
  emu::cp_async_wait(kPendingGroups);
}

inline unsigned char* dynamic_smem() { return emu::dynamic_smem(); }

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t grid_ctas, int threads, size_t smem_bytes,
                          cudaStream_t /*stream*/, Args&&... args) {
  emu::run_grid(grid_ctas, threads, smem_bytes, [&] { kernel(args...); });
  return cudaSuccess;
}

}  // namespace fastformer::cuda
