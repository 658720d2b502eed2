// LayerNorm and RMSNorm on CUDA, forward and backward, with the optional fused residual add.
//
// One template serves both ops: RMSNorm is LayerNorm without the mean (kRms) and without bias.
// Rows are spread over row groups of threads (cuda/row_group.cuh). A row of up to 16384 columns
// (forward) or 8192 (backward) is read once into registers as fp32 and normalized with two-pass
// statistics (mean, then the sum of squared deviations), like the CPU kernels; longer rows are
// re-read chunk by chunk (from L2 for rows of that size). Loads and stores move 16 bytes per access
// when every row is 16-byte aligned, else one element.
//
// Backward: each row group owns one fp32 partial row of grad_weight / grad_bias (its threads always
// own the same columns, so they accumulate without atomics), and a second kernel sums the partial
// rows in a fixed order: the result does not depend on scheduling.
#include "cuda/norm.h"

#include <algorithm>

#include "cuda/row_group.cuh"
#include "cuda/row_io.cuh"

namespace fastformer::cuda {
namespace {

// fp32 values each thread holds per chunk. Forward: 16 (1024 threads x 16 = 16384 columns in
// registers). Backward holds two such arrays plus two gradient accumulators, and 1024-thread
// blocks cap a thread at 64 registers, so 8.
constexpr int kFwdElems = 16;
constexpr int kBwdElems = 8;

template <typename T, int V, int kPerThread, bool kRms>
__global__ void __launch_bounds__(kMaxBlockThreads) norm_fwd_kernel(NormFwdArgs a, int64_t chunks) {
  __shared__ float scratch[kMaxWarps];
  const RowGroup group = RowGroup::of_this_thread(scratch);
  const int64_t packs = a.cols / V;
  const float inv_cols = 1.f / static_cast<float>(a.cols);
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  const int64_t row_step = int64_t{gridDim.x} * blockDim.y;

  for (int64_t first = int64_t{blockIdx.x} * blockDim.y; first < a.rows; first += row_step) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < a.rows;
    const T* x = static_cast<const T*>(a.x) + row * a.x_row_stride;
    const T* residual = a.residual ? static_cast<const T*>(a.residual) + row * a.residual_row_stride : nullptr;
    T* residual_out = a.residual_out ? static_cast<T*>(a.residual_out) + row * a.cols : nullptr;
    T* out = static_cast<T*>(a.out) + row * a.cols;

    const RowPacks<kPerThread> row_packs{group, packs, valid};
    float s[kPerThread][V];  // x + residual of this thread's packs of the current chunk; 0 past the row
    const auto load_chunk = [&](int64_t chunk, bool store_sum) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t p = row_packs.pack(chunk, i);
        if (!row_packs.in_row(p)) {
#pragma unroll
          for (int k = 0; k < V; ++k) s[i][k] = 0.f;
          continue;
        }
        load_floats<T, V>(x + p * V, s[i]);
        if (residual) {
          add_floats<T, V>(residual + p * V, s[i]);
          // s rounded to T, as stored in residual_out, which the backward re-reads: a mean of the
          // unrounded s would leave (s - mean) * rstd off by an ulp of s times rstd there (inf in fp16
          // for a constant row at eps 1e-12). Also PyTorch's add then LayerNorm.
#pragma unroll
          for (int k = 0; k < V; ++k) s[i][k] = to_float(from_float<T>(s[i][k]));
          if (store_sum) store_floats<T, V>(residual_out + p * V, s[i]);
        }
      }
    };

    if (chunks == 1) load_chunk(0, true);
    float moment = 0.f;  // sum of s (LayerNorm) or of s^2 (RMSNorm)
    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c, true);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) moment += kRms ? s[i][k] * s[i][k] : s[i][k];
    }
    moment = group.sum(moment) * inv_cols;
    float mean = 0.f, var = moment;
    if constexpr (!kRms) {
      mean = moment;
      float squares = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        if (chunks > 1) load_chunk(c, false);
        row_packs.for_each(c, [&](int i, int64_t) {
#pragma unroll
          for (int k = 0; k < V; ++k) squares += (s[i][k] - mean) * (s[i][k] - mean);
        });
      }
      var = group.sum(squares) * inv_cols;
    }
    const float rstd = rsqrtf(var + a.eps);
    if (valid && group.tid == 0) {
      if constexpr (!kRms) a.mean[row] = mean;
      a.rstd[row] = rstd;
    }

    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c, false);
      row_packs.for_each(c, [&](int i, int64_t p) {
        float y[V];
#pragma unroll
        for (int k = 0; k < V; ++k) y[k] = (s[i][k] - mean) * rstd;
        if (weight) mul_floats<T, V>(weight + p * V, y);
        if (bias) add_floats<T, V>(bias + p * V, y);
        store_floats<T, V>(out + p * V, y);
      });
    }
  }
}

// kOneChunk: compiled for rows of one chunk (fewer registers: without it ptxas spills the packed
// variants at the 64-register cap of 1024-thread blocks).
template <typename T, int V, int kPerThread, bool kRms, bool kOneChunk>
__global__ void __launch_bounds__(kMaxBlockThreads)
    norm_bwd_kernel(NormBwdArgs a, int64_t num_chunks, int64_t partial_rows) {
  const int64_t chunks = kOneChunk ? 1 : num_chunks;
  __shared__ float scratch[kMaxWarps];
  const RowGroup group = RowGroup::of_this_thread(scratch);
  const int64_t packs = a.cols / V;
  const float inv_cols = 1.f / static_cast<float>(a.cols);
  const T* weight = static_cast<const T*>(a.weight);
  const int64_t slot = int64_t{blockIdx.x} * blockDim.y + threadIdx.y;  // this row group's partial row
  float* dw_partial = a.grad_weight ? a.partials + slot * a.cols : nullptr;
  float* db_partial = a.grad_bias ? a.partials + ((a.grad_weight ? partial_rows : 0) + slot) * a.cols : nullptr;
  // grad_weight / grad_bias of this thread's columns over its rows, when a row is a single chunk
  // (longer rows accumulate in dw_partial / db_partial directly).
  float dw[kPerThread][V] = {}, db[kPerThread][V] = {};
  const int64_t row_step = int64_t{gridDim.x} * blockDim.y;

  for (int64_t first = int64_t{blockIdx.x} * blockDim.y; first < a.rows; first += row_step) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < a.rows;
    const int64_t offset = row * a.cols;
    const T* dy_row = static_cast<const T*>(a.grad_out) + offset;
    const T* s_row = static_cast<const T*>(a.input) + offset;
    const T* dres_row = a.grad_residual_out ? static_cast<const T*>(a.grad_residual_out) + offset : nullptr;
    T* dx_row = static_cast<T*>(a.grad_x) + offset;
    const float mean = kRms || !valid ? 0.f : a.mean[row];
    const float rstd = valid ? a.rstd[row] : 0.f;

    const RowPacks<kPerThread> row_packs{group, packs, valid};
    float xhat[kPerThread][V], g[kPerThread][V];  // g = grad_out * weight; both 0 past the row
    // Loads a chunk; with accumulate, also adds its grad_out * xhat and grad_out to the parameter
    // gradients (done on exactly one of the loads of each chunk).
    const auto load_chunk = [&](int64_t chunk, bool accumulate) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t p = row_packs.pack(chunk, i);
        if (!row_packs.in_row(p)) {
#pragma unroll
          for (int k = 0; k < V; ++k) xhat[i][k] = g[i][k] = 0.f;
          continue;
        }
        float dy[V];
        load_floats<T, V>(dy_row + p * V, dy);
        load_floats<T, V>(s_row + p * V, xhat[i]);
#pragma unroll
        for (int k = 0; k < V; ++k) xhat[i][k] = (xhat[i][k] - mean) * rstd;
#pragma unroll
        for (int k = 0; k < V; ++k) g[i][k] = dy[k];
        if (weight) mul_floats<T, V>(weight + p * V, g[i]);
        if (!accumulate) continue;
        if (chunks == 1) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            dw[i][k] += dy[k] * xhat[i][k];
            db[i][k] += dy[k];
          }
          continue;
        }
        float sums[V];
        if (dw_partial) {
          load_floats<float, V>(dw_partial + p * V, sums);
#pragma unroll
          for (int k = 0; k < V; ++k) sums[k] += dy[k] * xhat[i][k];
          store_floats<float, V>(dw_partial + p * V, sums);
        }
        if (db_partial) {
          load_floats<float, V>(db_partial + p * V, sums);
#pragma unroll
          for (int k = 0; k < V; ++k) sums[k] += dy[k];
          store_floats<float, V>(db_partial + p * V, sums);
        }
      }
    };

    if (chunks == 1) load_chunk(0, true);
    float dot = 0.f, gsum = 0.f;
    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c, false);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) {
          dot += g[i][k] * xhat[i][k];
          gsum += g[i][k];
        }
    }
    const float c1 = group.sum(dot) * inv_cols;
    const float c2 = kRms ? 0.f : group.sum(gsum) * inv_cols;

    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c, true);
      row_packs.for_each(c, [&](int i, int64_t p) {
        float dx[V];
#pragma unroll
        for (int k = 0; k < V; ++k) dx[k] = (g[i][k] - xhat[i][k] * c1 - c2) * rstd;
        if (dres_row) add_floats<T, V>(dres_row + p * V, dx);
        store_floats<T, V>(dx_row + p * V, dx);
      });
    }
  }

  if (chunks == 1) {
    RowPacks<kPerThread>{group, packs, true}.for_each(0, [&](int i, int64_t p) {
      if (dw_partial) store_floats<float, V>(dw_partial + p * V, dw[i]);
      if (db_partial) store_floats<float, V>(db_partial + p * V, db[i]);
    });
  }
}

// grad[c] = sum of partials[p, c] over p = 0 .. partial_rows - 1, in a fixed order. Block: 32
// columns x kSumLanes lanes; lane l sums rows l, l + kSumLanes, ...; lane sums are then added in order.
constexpr int kSumLanes = 8;

template <typename T>
__global__ void sum_partials_kernel(const float* partials, int64_t partial_rows, int64_t cols, T* grad) {
  __shared__ float lane_sums[kSumLanes][33];  // 33: no bank conflicts on the column-wise read
  const int64_t col = int64_t{blockIdx.x} * 32 + threadIdx.x;
  float acc = 0.f;
  if (col < cols)
    for (int64_t p = threadIdx.y; p < partial_rows; p += kSumLanes) acc += partials[p * cols + col];
  lane_sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || col >= cols) return;
  float total = 0.f;
#pragma unroll
  for (int lane = 0; lane < kSumLanes; ++lane) total += lane_sums[lane][threadIdx.x];
  grad[col] = from_float<T>(total);
}

template <typename T, bool kRms>
cudaError_t launch_fwd(const NormFwdArgs& a, cudaStream_t stream) {
  constexpr int V = kPack16<T>;
  const RowPlan plan = plan_rows(a.rows, a.cols, kFwdElems);
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(plan.blocks), plan.block(), 0, stream>>>(a, plan.chunks);
  };
  if (packs_fit(V, sizeof(T), {a.x, a.residual, a.weight, a.bias, a.out, a.residual_out},
                {a.cols, a.x_row_stride, a.residual ? a.residual_row_stride : 0})) {
    launch(norm_fwd_kernel<T, V, kFwdElems / V, kRms>);
  } else {
    launch(norm_fwd_kernel<T, 1, kFwdElems, kRms>);
  }
  return cudaGetLastError();
}

// Backward grid: one partial row per row group, so no more groups than run at once (2048 threads
// per SM on sm_80 / sm_90) and at least 4 rows per group: the partial rows then cost a few percent
// of the traffic of grad_out, input and grad_x.
constexpr int kMaxThreadsPerSm = 2048;
constexpr int64_t kMinRowsPerGroup = 4;

RowPlan plan_bwd(const NormBwdArgs& a) {
  RowPlan plan = plan_rows(a.rows, a.cols, kBwdElems);
  const int64_t block_threads = int64_t{plan.threads_per_row} * plan.rows_per_block;
  const int64_t resident = int64_t{std::max(a.sm_count, 1)} * std::max<int64_t>(1, kMaxThreadsPerSm / block_threads);
  const int64_t rows_per_block = kMinRowsPerGroup * plan.rows_per_block;
  plan.blocks = std::max<int64_t>(1, std::min({plan.blocks, resident, (a.rows + rows_per_block - 1) / rows_per_block}));
  return plan;
}

template <typename T, bool kRms>
cudaError_t launch_bwd(const NormBwdArgs& a, cudaStream_t stream) {
  constexpr int V = kPack16<T>;
  const RowPlan plan = plan_bwd(a);
  const int64_t partial_rows = plan.blocks * plan.rows_per_block;
  const int64_t param_grads = (a.grad_weight ? 1 : 0) + (a.grad_bias ? 1 : 0);
  if (plan.chunks > 1 && param_grads > 0) {
    // Long rows accumulate straight into the partial rows (one chunk stays in registers otherwise).
    const cudaError_t err =
        cudaMemsetAsync(a.partials, 0, sizeof(float) * param_grads * partial_rows * a.cols, stream);
    if (err != cudaSuccess) return err;
  }
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(plan.blocks), plan.block(), 0, stream>>>(a, plan.chunks, partial_rows);
  };
  if (!packs_fit(V, sizeof(T), {a.grad_out, a.grad_residual_out, a.input, a.weight, a.grad_x}, {a.cols}) ||
      !packs_fit(V, sizeof(float), {a.partials}, {})) {
    launch(norm_bwd_kernel<T, 1, kBwdElems, kRms, false>);
  } else if (plan.chunks == 1) {
    launch(norm_bwd_kernel<T, V, kBwdElems / V, kRms, true>);
  } else {
    launch(norm_bwd_kernel<T, V, kBwdElems / V, kRms, false>);
  }
  const dim3 sum_grid(static_cast<unsigned>((a.cols + 31) / 32)), sum_block(32, kSumLanes);
  if (a.grad_weight)
    sum_partials_kernel<T><<<sum_grid, sum_block, 0, stream>>>(a.partials, partial_rows, a.cols,
                                                                 static_cast<T*>(a.grad_weight));
  if (a.grad_bias)
    sum_partials_kernel<T><<<sum_grid, sum_block, 0, stream>>>(
        a.partials + (a.grad_weight ? partial_rows * a.cols : 0), partial_rows, a.cols, static_cast<T*>(a.grad_bias));
  return cudaGetLastError();
}

}  // namespace

cudaError_t norm_fwd(const NormFwdArgs& args, bool rms, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return rms ? launch_fwd<T, true>(args, stream) : launch_fwd<T, false>(args, stream);
  });
}

int64_t norm_bwd_partial_rows(const NormBwdArgs& args) {
  const RowPlan plan = plan_bwd(args);
  return plan.blocks * plan.rows_per_block;
}

cudaError_t norm_bwd(const NormBwdArgs& args, bool rms, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return rms ? launch_bwd<T, true>(args, stream) : launch_bwd<T, false>(args, stream);
  });
}

}  // namespace fastformer::cuda
