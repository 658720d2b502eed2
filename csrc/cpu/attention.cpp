// Attention on CPU, forward and backward, flash-style: scores are computed one block of (query tile x key tile)
// at a time into a thread-local buffer with an online softmax, never as the full [Sq, Sk] matrix. Semantics
// (layouts, lse, masks, T5 bias, dropout) are those of the schema comment in csrc/fastformer.cpp.
//
// A score block is held transposed, st[key j * ld + query i], with queries in the vector lanes:
//   - S^T = K Q^T is a tile GEMM that broadcasts K elements straight from their rows (any row stride, no copy for
//     fp32/fp64) against Q^T, packed once per query tile (scaled by `scale`, zero-padded to ld = whole vectors);
//   - the online softmax's per-query max and sum are elementwise vector ops over the keys (no horizontal reductions);
//   - P V, dS K, P^T dO and dS^T Q read P or dS as the broadcast operand through strides (tile_gemm.h), so no
//     block is ever transposed.
// bf16/fp16 accumulate in fp32 (their K/V/Q/dO tiles are converted into fp32 scratch), fp64 in fp64.
//
// Packed batches (varlen_attention_fwd/bwd): q [Tq, H, D] and k, v [Tk, Hkv, D] hold the sequences one after the
// other (cu_seqlens offsets). The same kernel runs them: every tensor row is addressed as (sequence start, head,
// position) through RowStrides, each sequence b has its own lengths, and the tile loops stop at them, so no padding
// is ever computed. A padded call is the special case start = b, every length = Sq or Sk.
//
// Work split: the forward runs one task per (b, h, query tile). The backward runs one task per (b, kv head)
// that accumulates dQ, dK and dV of its whole head group ("fused") when there are enough such tasks to keep every
// thread busy; otherwise two passes, one task per (b, kv head, key tile) for dK/dV and one per (b, h, query tile)
// for dQ, which recompute the scores once more. No two tasks write the same output rows, and tasks are handed out
// one at a time because padding and causal masking make them unequal.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/philox.h"
#include "cpu/row_io.h"
#include "cpu/tile_gemm.h"

namespace fastformer::cpu {
namespace {

using at::Tensor;

// Tile sizes: a 128-key x 32-query fp32 score block is 16 KB, so the block, Q^T (8 KB at head dim 64) and the K and V
// tiles (32 KB each) stay in L2 while the block is reused by the softmax and the second GEMM. Measured here (1 thread,
// B 8, H 12, D 64, S 128 and 512): 32 x 128 was as fast as 64 x 128 forward and 0-20% faster than 64 x 64, 32 x 64
// or 128 x 64 forward and backward.
constexpr int64_t kQueryTile = 32;
constexpr int64_t kKeyTile = 128;
// The fused backward runs B * Hkv equal tasks; with at least 4 per thread the last round leaves threads idle at most
// ~20% of the time, less than the ~40% of extra work (7 instead of 5 tile GEMMs) that the two-pass split costs.
constexpr int64_t kFusedTasksPerThread = 4;
// The fused backward keeps each task's dQ of its head group in acc_t ([group, Sq, D]); beyond 1M elements (4 MB in
// fp32) per task it uses the two-pass split instead.
constexpr int64_t kMaxFusedDqElements = int64_t(1) << 20;

int64_t round_up(int64_t x, int64_t multiple) { return at::divup(x, multiple) * multiple; }

// A forward call with less work than this many multiply-adds per extra thread runs on fewer threads. KV-cache decode
// (one query row per head: B 1, H 12, Sk ~100, D 64 is ~150K) takes ~30 us on one core, and an OpenMP hand-off costs
// ~1 us on an idle machine but was measured at 9-17 ms per call (a scheduler slice) on the 2-core development
// machine under load, where it made attention half of GPT-2-small's decode time.
constexpr int64_t kMinMultiplyAddsPerWorker = int64_t(1) << 18;

// Runs body(task, workspace) for every task in [0, num_tasks) on at most max_workers intra-op threads, handing tasks
// out one at a time from a shared counter (each worker builds one workspace). Tasks write disjoint outputs, so the
// result does not depend on which thread ran which task.
template <typename MakeWorkspace, typename Body>
void run_tasks(int64_t num_tasks, const MakeWorkspace& make_workspace, const Body& body,
               int64_t max_workers = std::numeric_limits<int64_t>::max()) {
  std::atomic<int64_t> next_task{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), num_tasks, max_workers}));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto workspace = make_workspace();
    for (int64_t task = next_task++; task < num_tasks; task = next_task++) body(task, workspace);
  });
}

// Strides of one tensor argument, as element counts.
template <size_t N>
std::array<int64_t, N> strides_of(const Tensor& t) {
  std::array<int64_t, N> s{};
  for (size_t d = 0; d < N; ++d) s[d] = t.stride(d);
  return s;
}

// Where row (sequence start s, head h, position i) of a tensor lives: s * seq + h * head + i * pos elements from its
// data pointer. Padded [B, H, S, ...]: s = b, strides (0, 1, 2); packed [T, H, ...]: s = cu_seqlens[b], strides
// (0, 1, 0).
struct RowStrides {
  int64_t seq = 0, head = 0, pos = 0;
  int64_t at(int64_t start, int64_t h, int64_t i) const { return start * seq + h * head + i * pos; }
};

RowStrides row_strides(const Tensor& t, bool packed) {
  return {t.stride(0), t.stride(1), t.stride(packed ? 0 : 2)};
}

// A packed batch: sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q and cu_seqlens_k[b]:cu_seqlens_k[b + 1]
// of k and v (int32 CPU tensors, checked by the caller); max_seqlen_q/k number the dropout elements.
struct Packing {
  const Tensor& cu_seqlens_q;
  const Tensor& cu_seqlens_k;
  int64_t max_seqlen_q, max_seqlen_k;
};

// The scalar arguments and optional score terms of one call, shared by the forward and the backward.
struct AttentionOptions {
  const std::optional<Tensor>& attn_bias;
  const std::optional<Tensor>& key_padding_mask;
  const std::optional<Tensor>& rel_table;
  const std::optional<Tensor>& rel_lut;
  bool rel_bidirectional, causal;
  double scale, dropout_p;
  int64_t seed;
};

template <typename scalar_t>
class AttentionKernel {
 public:
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  using IO = RowIO<scalar_t>;
  static constexpr int64_t kV = Vec::size();

  // rel_table_acc is rel_table converted to a contiguous acc_t tensor (it must outlive the kernel). With packing,
  // q, k, v are packed [T, heads, D] and attn_bias and key_padding_mask must be absent.
  AttentionKernel(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                  const Tensor& rel_table_acc, const Packing* packing = nullptr)
      : packed_(packing != nullptr), B_(packed_ ? packing->cu_seqlens_q.size(0) - 1 : q.size(0)), H_(q.size(1)),
        Hkv_(k.size(1)), D_(q.size(q.dim() - 1)),
        q_(q.const_data_ptr<scalar_t>()), k_(k.const_data_ptr<scalar_t>()), v_(v.const_data_ptr<scalar_t>()),
        q_st_(row_strides(q, packed_)), k_st_(row_strides(k, packed_)), v_st_(row_strides(v, packed_)),
        causal_(opt.causal), scale_(acc_t(opt.scale)), dropout_p_(float(opt.dropout_p)),
        keep_scale_(opt.dropout_p < 1 ? acc_t(1) / (acc_t(1) - acc_t(opt.dropout_p)) : acc_t(0)), seed_(opt.seed) {
    if (opt.attn_bias) {
      bias_ = opt.attn_bias->const_data_ptr();
      bias_is_float_ = opt.attn_bias->scalar_type() == at::kFloat;
      bias_st_ = strides_of<4>(*opt.attn_bias);
    }
    if (opt.rel_table) {
      rel_table_ = rel_table_acc.const_data_ptr<acc_t>();
      num_buckets_ = rel_table_acc.size(0);
      rel_lut_ = opt.rel_lut->const_data_ptr<int32_t>();
      lut_len_ = opt.rel_lut->size(0);
      lut_st_ = opt.rel_lut->stride(0);
      bidirectional_ = opt.rel_bidirectional;
    }
    if (packing) {
      const auto offsets = [](const Tensor& cu, std::vector<int64_t>& start, std::vector<int64_t>& len) {
        const Tensor cu_contiguous = cu.contiguous();
        const int32_t* c = cu_contiguous.const_data_ptr<int32_t>();
        for (int64_t b = 0; b + 1 < cu.size(0); ++b) {
          start.push_back(c[b]);
          len.push_back(c[b + 1] - c[b]);
        }
        return len.empty() ? int64_t(0) : *std::max_element(len.begin(), len.end());
      };
      Sq_ = offsets(packing->cu_seqlens_q, q_start_, q_len_);
      Sk_ = offsets(packing->cu_seqlens_k, k_start_, k_len_);
      dropout_sq_ = packing->max_seqlen_q;
      dropout_sk_ = packing->max_seqlen_k;
    } else {
      Sq_ = dropout_sq_ = q.size(2);
      Sk_ = dropout_sk_ = k.size(2);
      for (int64_t b = 0; b < B_; ++b) {
        q_start_.push_back(b);
        k_start_.push_back(b);
      }
      q_len_.assign(B_, Sq_);
      k_len_.assign(B_, Sk_);
    }
    kept_begin_.assign(B_, 0);
    kept_end_ = k_len_;
    if (opt.key_padding_mask) {
      key_mask_ = opt.key_padding_mask->const_data_ptr<bool>();
      key_mask_st_ = strides_of<2>(*opt.key_padding_mask);
      for (int64_t b = 0; b < B_; ++b) {
        int64_t first = Sk_, last = -1;
        for (int64_t j = 0; j < Sk_; ++j) {
          if (key_kept(b, j)) {
            first = std::min(first, j);
            last = j;
          }
        }
        kept_begin_[b] = last < 0 ? 0 : first;
        kept_end_[b] = last + 1;
      }
    }
  }

  void forward(Tensor& out, Tensor& lse) const {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    float* lse_ptr = lse.data_ptr<float>();
    const int64_t num_query_tiles = at::divup(Sq_, kQueryTile);
    const auto make_workspace = [&] { return ForwardWorkspace(D_, std::min(kQueryTile, Sq_)); };
    int64_t score_count = 0;
    for (int64_t b = 0; b < B_; ++b) score_count += q_len_[b] * k_len_[b];
    const int64_t multiply_adds = 2 * H_ * score_count * D_;  // q.k and p.v
    const RowStrides out_st = row_strides(out, packed_), lse_st = row_strides(lse, packed_);
    // Tiles past a shorter sequence's end are empty tasks (a counter increment each).
    run_tasks(B_ * H_ * num_query_tiles, make_workspace, [&](int64_t task, ForwardWorkspace& ws) {
      // Last query tiles first: under causal masking they see the most keys.
      const int64_t bh = task / num_query_tiles, tile = num_query_tiles - 1 - task % num_query_tiles;
      if (tile * kQueryTile < q_len_[bh / H_])
        forward_query_tile(bh / H_, bh % H_, tile * kQueryTile, ws, out_ptr, out_st, lse_ptr, lse_st);
    }, multiply_adds / kMinMultiplyAddsPerWorker);
  }

  // grad_bias (written when it has elements, i.e. bias_needs_grad) and grad_rel_table_f64 (fp64, with rel_table) must
  // come zero-filled, and so must grad_k and grad_v: rows of keys that no query keeps are never written.
  void backward(const Tensor& grad_out, const Tensor& out, const Tensor& lse, Tensor& grad_q, Tensor& grad_k,
                Tensor& grad_v, Tensor& grad_bias, Tensor& grad_rel_table_f64) const {
    BackwardArgs args;
    const Tensor delta = row_dot(grad_out, out, lse);  // like lse, acc_t: rowsum(dO * O)
    args.grad_out = grad_out.const_data_ptr<scalar_t>();
    args.grad_out_st = row_strides(grad_out, packed_);
    args.lse = lse.const_data_ptr<float>();
    args.lse_st = row_strides(lse, packed_);
    args.delta = delta.const_data_ptr<acc_t>();
    args.delta_st = row_strides(delta, packed_);
    args.grad_q = grad_q.data_ptr<scalar_t>();
    args.grad_k = grad_k.data_ptr<scalar_t>();
    args.grad_v = grad_v.data_ptr<scalar_t>();
    args.grad_q_st = row_strides(grad_q, packed_);
    args.grad_k_st = row_strides(grad_k, packed_);
    if (grad_bias.numel() > 0) args.grad_bias = grad_bias.data_ptr();

    const int64_t group = H_ / Hkv_, num_key_tiles = at::divup(Sk_, kKeyTile);
    const bool fused = B_ * Hkv_ >= kFusedTasksPerThread * at::get_num_threads() &&
                       group * Sq_ * D_ <= kMaxFusedDqElements;
    const int64_t key_tasks = fused ? B_ * Hkv_ : B_ * Hkv_ * num_key_tiles;
    // One [group, num_buckets] partial of grad_rel_table per key task, reduced in task order (deterministic).
    // Each grad_rel_table entry sums dS over up to B * Sq * Sk pairs, so partials are fp64 (in fp32, the saturated
    // bucket of a 50 x 130 T5 case was off by 10x the error of PyTorch's fp32 autograd).
    std::vector<double> rel_partials(rel_table_ ? key_tasks * group * num_buckets_ : 0, 0.0);
    const auto make_workspace = [&] { return BackwardWorkspace(D_); };

    run_tasks(key_tasks, make_workspace, [&](int64_t task, BackwardWorkspace& ws) {
      double* rel_partial = rel_table_ ? rel_partials.data() + task * group * num_buckets_ : nullptr;
      if (!fused) {
        const int64_t bkv = task / num_key_tiles;
        key_tile_grads(bkv / Hkv_, bkv % Hkv_, task % num_key_tiles, ws, args, nullptr, rel_partial);
        return;
      }
      const int64_t b = task / Hkv_, kvh = task % Hkv_;
      std::vector<acc_t> dq_acc(group * Sq_ * D_, acc_t(0));  // [group, Sq, D]
      for (int64_t tile = 0; tile < num_key_tiles; ++tile)
        key_tile_grads(b, kvh, tile, ws, args, dq_acc.data(), rel_partial);
      for (int64_t g = 0; g < group; ++g)
        for (int64_t i = 0; i < q_len_[b]; ++i)
          store_row(dq_acc.data() + (g * Sq_ + i) * D_, scale_, grad_q_row(args, b, kvh * group + g, i));
    });
    if (!fused) {
      const int64_t num_query_tiles = at::divup(Sq_, kQueryTile);
      run_tasks(B_ * H_ * num_query_tiles, make_workspace, [&](int64_t task, BackwardWorkspace& ws) {
        const int64_t bh = task / num_query_tiles, tile = num_query_tiles - 1 - task % num_query_tiles;
        if (tile * kQueryTile < q_len_[bh / H_]) query_tile_grads(bh / H_, bh % H_, tile * kQueryTile, ws, args);
      });
    }
    if (rel_table_) {
      double* grad_table = grad_rel_table_f64.data_ptr<double>();  // [num_buckets, H], zero-filled
      for (int64_t task = 0; task < key_tasks; ++task) {
        const int64_t kvh = (fused ? task : task / num_key_tiles) % Hkv_;
        for (int64_t g = 0; g < group; ++g)
          for (int64_t bucket = 0; bucket < num_buckets_; ++bucket)
            grad_table[bucket * H_ + kvh * group + g] += rel_partials[(task * group + g) * num_buckets_ + bucket];
      }
    }
  }

 private:
  // Buffers of one worker thread, sized for query tiles of up to `rows` rows, and with K / V scratch only when their
  // rows need converting to acc_t: a KV-cache decode call (one query row, fp32) allocates and zeroes ~7 KB, not the
  // ~100 KB of full tiles, which took about as long as its attention itself.
  struct ForwardWorkspace {
    static constexpr bool kConvertsKV = !std::is_same_v<scalar_t, acc_t>;
    std::vector<acc_t> qt, q_row, st, out, row_max, row_sum, alpha, k_rows, v_rows, diag;
    ForwardWorkspace(int64_t D, int64_t rows)
        : qt(D * round_up(rows, kV)), q_row(D), st(kKeyTile * round_up(rows, kV)), out(rows * D),
          row_max(round_up(rows, kV)), row_sum(round_up(rows, kV)), alpha(round_up(rows, kV)),
          k_rows(kConvertsKV ? kKeyTile * D : 0), v_rows(kConvertsKV ? kKeyTile * D : 0),
          diag(round_up(rows, kV) + kKeyTile) {}
  };
  struct BackwardWorkspace {
    std::vector<acc_t> qt, dot, q_rows, do_rows, lse, delta, p, ds, dropout_factor, k_rows, v_rows, diag, dk, dv, dq;
    explicit BackwardWorkspace(int64_t D)
        : qt(D * kQueryTile), dot(D * kQueryTile), q_rows(kQueryTile * D), do_rows(kQueryTile * D), lse(kQueryTile),
          delta(kQueryTile), p(kKeyTile * kQueryTile), ds(kKeyTile * kQueryTile),
          dropout_factor(kKeyTile * kQueryTile), k_rows(kKeyTile * D),
          v_rows(kKeyTile * D), diag(kQueryTile + kKeyTile), dk(kKeyTile * D), dv(kKeyTile * D),
          dq(kQueryTile * D) {}
  };
  // What the backward tasks read besides q, k, v, and the gradients they write.
  struct BackwardArgs {
    const scalar_t* grad_out;
    RowStrides grad_out_st;
    const float* lse;
    RowStrides lse_st;
    const acc_t* delta;  // laid out like lse
    RowStrides delta_st;
    scalar_t *grad_q, *grad_k, *grad_v;  // grad_v laid out like grad_k
    RowStrides grad_q_st, grad_k_st;
    void* grad_bias = nullptr;  // [B, H, Sq, Sk] in the dtype of attn_bias
  };
  // One query tile, packed for the score GEMMs. The backward also fills dot, lse, delta and the row views.
  struct QueryTile {
    int64_t b, h, i0, m, ld;  // queries [i0, i0 + m), ld = m rounded up to whole vectors
    const acc_t *q_rows, *do_rows;
    int64_t q_ld, do_ld;
  };
  // Keys [j0, j0 + n) of one (b, kv head), as acc_t rows.
  struct KeyTile {
    int64_t j0, n;
    const acc_t *k_rows, *v_rows;
    int64_t k_ld, v_ld;
  };

  const scalar_t* q_row(int64_t b, int64_t h, int64_t i) const { return q_ + q_st_.at(q_start_[b], h, i); }
  const scalar_t* k_row(int64_t b, int64_t kvh, int64_t j) const { return k_ + k_st_.at(k_start_[b], kvh, j); }
  const scalar_t* v_row(int64_t b, int64_t kvh, int64_t j) const { return v_ + v_st_.at(k_start_[b], kvh, j); }
  const scalar_t* grad_out_row(const BackwardArgs& o, int64_t b, int64_t h, int64_t i) const {
    return o.grad_out + o.grad_out_st.at(q_start_[b], h, i);
  }
  scalar_t* grad_q_row(const BackwardArgs& o, int64_t b, int64_t h, int64_t i) const {
    return o.grad_q + o.grad_q_st.at(q_start_[b], h, i);
  }
  int64_t kv_head(int64_t h) const { return h / (H_ / Hkv_); }
  bool key_kept(int64_t b, int64_t j) const { return key_mask_[b * key_mask_st_[0] + j * key_mask_st_[1]]; }

  // Keys of key tile `tile` inside the batch's kept range [first kept key, last kept key]; empty when none.
  std::pair<int64_t, int64_t> key_span(int64_t b, int64_t tile) const {
    return {std::max(tile * kKeyTile, kept_begin_[b]), std::min({(tile + 1) * kKeyTile, kept_end_[b], Sk_})};
  }
  // One past the last key that a query of [i0, i0 + m) of sequence b keeps under causal masking (bottom-right aligned).
  int64_t causal_key_end(int64_t b, int64_t i0, int64_t m) const {
    return causal_ ? i0 + m + k_len_[b] - q_len_[b] : k_len_[b];
  }

  // ---- row conversions -----------------------------------------------------------------------------------------

  void load_row(const scalar_t* src, acc_t* dst) const {
    for (int64_t c = 0; c < D_; c += IO::kChunk) {
      const int64_t n = std::min(IO::kChunk, D_ - c);
      Vec lo, hi;
      IO::load(src + c, lo, hi, n);
      lo.store(dst + c, std::min(n, kV));
      if (n > kV) hi.store(dst + c + kV, n - kV);
    }
  }

  void store_row(const acc_t* src, acc_t factor, scalar_t* dst) const {
    const Vec f(factor);
    for (int64_t c = 0; c < D_; c += IO::kChunk) {
      const int64_t n = std::min(IO::kChunk, D_ - c);
      const Vec lo = Vec::loadu(src + c, std::min(n, kV)) * f;
      const Vec hi = n > kV ? Vec::loadu(src + c + kV, n - kV) * f : Vec(acc_t(0));
      IO::store(dst + c, lo, hi, n);
    }
  }

  // n input rows as acc_t rows: the input itself when it already is acc_t, else converted into scratch.
  std::pair<const acc_t*, int64_t> rows_as_acc(const scalar_t* src, int64_t row_stride, int64_t n,
                                               acc_t* scratch) const {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return {src, row_stride};
    } else {
      for (int64_t r = 0; r < n; ++r) load_row(src + r * row_stride, scratch + r * D_);
      return {scratch, D_};
    }
  }

  // dst[d * ld + i] = factor * row_i[d] for the m rows; lanes m <= i < ld are zero. fp32 moves whole 8 x 8 blocks
  // through registers (at::vec::transpose_mxn), then scales: element by element, the scattered stores took ~1/6 of
  // the forward's non-GEMM time at B 1, H 12, S 128, D 32 (perf).
  void pack_transposed(const scalar_t* src, int64_t row_stride, int64_t m, int64_t ld, acc_t factor,
                       acc_t* dst) const {
    int64_t i = 0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      constexpr int64_t kBlock = 8;
      if (D_ % kBlock == 0) {
        for (; i + kBlock <= m; i += kBlock)
          for (int64_t d = 0; d < D_; d += kBlock)
            at::vec::transpose_mxn<float, kBlock, kBlock>(src + i * row_stride + d, row_stride, dst + d * ld + i, ld);
        for (int64_t d = 0; d < D_; ++d)
          for (int64_t c = 0; c < i; c += kV) (Vec::loadu(dst + d * ld + c) * Vec(factor)).store(dst + d * ld + c);
      }
    }
    for (; i < m; ++i) {
      const scalar_t* row = src + i * row_stride;
      for (int64_t d = 0; d < D_; ++d) dst[d * ld + i] = factor * acc_t(row[d]);
    }
    for (int64_t d = 0; d < D_; ++d) std::fill(dst + d * ld + m, dst + (d + 1) * ld, acc_t(0));
  }

  // Calls body(key tile) for every key tile that some query of [i0, i0 + m) of batch b keeps, clipped to the kept
  // keys and loaded as acc_t rows of kv head kvh.
  template <typename Body>
  void for_each_key_tile(int64_t b, int64_t kvh, int64_t i0, int64_t m, acc_t* k_scratch, acc_t* v_scratch,
                         const Body& body) const {
    const int64_t key_end = causal_key_end(b, i0, m);
    for (int64_t tile = 0; tile < at::divup(Sk_, kKeyTile); ++tile) {
      auto [j0, j1] = key_span(b, tile);
      j1 = std::min(j1, key_end);
      if (j1 > j0) body(load_key_tile(b, kvh, j0, j1 - j0, k_scratch, v_scratch));
    }
  }

  KeyTile load_key_tile(int64_t b, int64_t kvh, int64_t j0, int64_t n, acc_t* k_scratch, acc_t* v_scratch) const {
    const auto [k_rows, k_ld] = rows_as_acc(k_row(b, kvh, j0), k_st_.pos, n, k_scratch);
    const auto [v_rows, v_ld] = rows_as_acc(v_row(b, kvh, j0), v_st_.pos, n, v_scratch);
    return {j0, n, k_rows, v_rows, k_ld, v_ld};
  }

  // The sub-tile of keys [j0, j0 + n) of a loaded key tile.
  static KeyTile key_subtile(const KeyTile& t, int64_t j0, int64_t n) {
    const int64_t skip = j0 - t.j0;
    return {j0, n, t.k_rows + skip * t.k_ld, t.v_rows + skip * t.v_ld, t.k_ld, t.v_ld};
  }

  // ---- scores -------------------------------------------------------------------------------------------------

  // st[j * ld + i] = score of query i0 + i and key j0 + j (j < n, i < ld): scale * q.k + attn_bias + T5 bias, and
  // -inf where masked. qt is the packed, scaled Q^T; lanes i >= m hold scores of zero padding and are never used.
  // q_scaled_row (a tile of one query, forward only): that row scaled and contiguous, used instead of qt.
  void scores(const QueryTile& qt_tile, const acc_t* qt, const KeyTile& kt, acc_t* st, acc_t* diag,
              const acc_t* q_scaled_row = nullptr) const {
    const int64_t ld = qt_tile.ld, n = kt.n;
    if (q_scaled_row) {
      single_query_scores(q_scaled_row, kt, ld, st);
    } else {
      tile_gemm<acc_t>(n, ld, D_, kt.k_rows, {kt.k_ld, 1}, qt, ld, st, ld, /*accumulate=*/false);
    }
    if (bias_) {
      if (bias_is_float_)
        add_bias(static_cast<const float*>(bias_), qt_tile, kt, st);
      else
        add_bias(static_cast<const scalar_t*>(bias_), qt_tile, kt, st);
    }
    if (rel_table_) {
      relative_bias_diagonals(qt_tile, kt, diag);
      for (int64_t j = 0; j < n; ++j) {
        const acc_t* diag_row = diag + (n - 1 - j);  // lane i reads offset i - j
        acc_t* row = st + j * ld;
        for (int64_t i = 0; i < ld; i += kV) (Vec::loadu(row + i) + Vec::loadu(diag_row + i)).store(row + i);
      }
    }
    apply_masks(qt_tile, kt, st);
  }

  // st[j * ld] = q.k_j, the other ld - 1 lanes 0 (as the GEMM leaves them for zero-padded queries): n dot products
  // over D for one query row, the shape of KV-cache decoding, where the tile GEMM would spend ld - 1 of its ld lanes
  // on padding (8x the multiply-adds with AVX2 fp32). Four keys at a time keep four independent FMA chains in flight.
  void single_query_scores(const acc_t* q, const KeyTile& kt, int64_t ld, acc_t* st) const {
    constexpr int kKeysAtOnce = 4;
    int64_t j = 0;
    for (; j + kKeysAtOnce <= kt.n; j += kKeysAtOnce)
      query_key_dots<kKeysAtOnce>(q, kt.k_rows + j * kt.k_ld, kt.k_ld, st + j * ld, ld);
    for (; j < kt.n; ++j) query_key_dots<1>(q, kt.k_rows + j * kt.k_ld, kt.k_ld, st + j * ld, ld);
  }

  template <int kKeys>
  void query_key_dots(const acc_t* q, const acc_t* k, int64_t k_ld, acc_t* st, int64_t ld) const {
    Vec sum[kKeys];
    for (Vec& s : sum) s = Vec(acc_t(0));
    for (int64_t d = 0; d < D_; d += kV) {
      const int64_t n = std::min(kV, D_ - d);  // partial loads fill the missing lanes with 0
      const Vec qv = Vec::loadu(q + d, n);
      for (int r = 0; r < kKeys; ++r) sum[r] = at::vec::fmadd(qv, Vec::loadu(k + r * k_ld + d, n), sum[r]);
    }
    for (int r = 0; r < kKeys; ++r) {
      acc_t* row = st + r * ld;
      row[0] = at::vec::vec_reduce_all<acc_t>([](Vec a, Vec b) { return a + b; }, sum[r]);
      std::fill(row + 1, row + ld, acc_t(0));
    }
  }

  template <typename bias_t>
  void add_bias(const bias_t* bias, const QueryTile& qt_tile, const KeyTile& kt, acc_t* st) const {
    const int64_t si = bias_st_[2], sj = bias_st_[3];
    const bias_t* base = bias + qt_tile.b * bias_st_[0] + qt_tile.h * bias_st_[1] + qt_tile.i0 * si + kt.j0 * sj;
    for (int64_t j = 0; j < kt.n; ++j) {
      acc_t* row = st + j * qt_tile.ld;
      if (si == 0) {  // the same value for every query (e.g. a [B, 1, 1, Sk] padding bias): one broadcast per key
        const Vec value(acc_t(base[j * sj]));
        for (int64_t i = 0; i < qt_tile.ld; i += kV) (Vec::loadu(row + i) + value).store(row + i);
      } else {
        for (int64_t i = 0; i < qt_tile.m; ++i) row[i] += acc_t(base[i * si + j * sj]);
      }
    }
  }

  int64_t bucket(int64_t rel) const {
    const int64_t dist = bidirectional_ ? std::abs(rel) : std::max<int64_t>(-rel, 0);
    return rel_lut_[std::min(dist, lut_len_ - 1) * lut_st_] + (bidirectional_ && rel > 0 ? num_buckets_ / 2 : 0);
  }
  // rel = j - (i + Sk_b - Sq_b) of the block entry at offset e = i - j (local indices), stored at diag index e + n - 1.
  int64_t diagonal_rel(const QueryTile& qt_tile, const KeyTile& kt, int64_t diag_index) const {
    return kt.j0 - qt_tile.i0 - (k_len_[qt_tile.b] - q_len_[qt_tile.b]) - (diag_index - (kt.n - 1));
  }
  // The T5 bias is constant along each diagonal i - j of a block: diag[e + n - 1] = rel_table[bucket, h] for
  // e in [-(n - 1), ld - 1].
  void relative_bias_diagonals(const QueryTile& qt_tile, const KeyTile& kt, acc_t* diag) const {
    for (int64_t d = 0; d < qt_tile.ld + kt.n - 1; ++d)
      diag[d] = rel_table_[bucket(diagonal_rel(qt_tile, kt, d)) * H_ + qt_tile.h];
  }

  void apply_masks(const QueryTile& qt_tile, const KeyTile& kt, acc_t* st) const {
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    for (int64_t j = 0; j < kt.n; ++j) {
      acc_t* row = st + j * qt_tile.ld;
      if (key_mask_ && !key_kept(qt_tile.b, kt.j0 + j)) {
        std::fill(row, row + qt_tile.ld, kNegInf);
      } else if (causal_) {  // query i keeps key j iff i >= j - (Sk_b - Sq_b)
        const int64_t shift = k_len_[qt_tile.b] - q_len_[qt_tile.b];
        const int64_t masked = std::clamp<int64_t>(kt.j0 + j - shift - qt_tile.i0, 0, qt_tile.m);
        std::fill(row, row + masked, kNegInf);
      }
    }
  }

  // Calls f(j * ld + i, keep) for every element of the block, lanes i >= m included (their probabilities are 0):
  // keep iff philox_uniform(seed, ((b * H + h) * Sq + i0 + i) * Sk + j0 + j) >= dropout_p. Packed: Sq, Sk are
  // max_seqlen_q/k and i, j are shifted to the sequence's left-padded slots (+ max_seqlen - its length).
  template <typename F>
  void for_each_dropout(const QueryTile& qt_tile, const KeyTile& kt, const F& f) const {
    constexpr int64_t kLanes = 8;
    float uniform[kLanes];
    const int64_t ld = qt_tile.ld, b = qt_tile.b;
    const int64_t i_shift = dropout_sq_ - q_len_[b], j_shift = dropout_sk_ - k_len_[b];
    for (int64_t j = 0; j < kt.n; ++j)
      for (int64_t i = 0; i < ld; i += kLanes) {
        const int64_t first =
            ((b * H_ + qt_tile.h) * dropout_sq_ + qt_tile.i0 + i + i_shift) * dropout_sk_ + kt.j0 + j + j_shift;
        philox_uniform8(seed_, uint64_t(first), uint64_t(dropout_sk_), uniform);
        for (int64_t l = 0; l < std::min(kLanes, ld - i); ++l) f(j * ld + i + l, uniform[l] >= dropout_p_);
      }
  }

  // ---- forward ------------------------------------------------------------------------------------------------

  // body(j, j % kChains) for j in [0, n), unrolled kChains keys at a time so that chain c is a register.
  template <int kChains, typename Body>
  static void for_keys_in_chains(int64_t n, const Body& body) {
    int64_t j = 0;
    for (; j + kChains <= n; j += kChains) {
#pragma GCC unroll 4
      for (int c = 0; c < kChains; ++c) body(j + c, c);
    }
    for (; j < n; ++j) body(j, 0);  // a constant chain: an indexed one would keep every chain in memory
  }

  // Online softmax over one block: st becomes exp(s - new max), row_max and row_sum are updated, and alpha gets
  // exp(old max - new max), the factor the output rows must be rescaled by. A row whose max is still -inf (no kept
  // key yet) subtracts 0 instead, so every probability is exp(-inf) = 0 and nothing is NaN.
  void online_softmax(acc_t* st, int64_t ld, int64_t n, acc_t* row_max, acc_t* row_sum, acc_t* alpha) const {
    const Vec neg_inf(-std::numeric_limits<acc_t>::infinity()), zero(acc_t(0));
    // kChains independent maxima and sums over the keys, combined at the end: one chain is bound by the latency of
    // each step (~4 cycles a key for at::vec's NaN-propagating maximum; perf put the two loops at ~1/3 of the
    // forward's non-GEMM time at B 1, H 12, S 128, D 32).
    constexpr int kChains = 4;
    for (int64_t i = 0; i < ld; i += kV) {
      const Vec old_max = Vec::loadu(row_max + i);
      Vec maxima[kChains] = {old_max, old_max, old_max, old_max};
      for_keys_in_chains<kChains>(n, [&](int64_t j, int c) {
        maxima[c] = at::vec::maximum(maxima[c], Vec::loadu(st + j * ld + i));
      });
      const Vec new_max =
          at::vec::maximum(at::vec::maximum(maxima[0], maxima[1]), at::vec::maximum(maxima[2], maxima[3]));
      const Vec shift = Vec::blendv(new_max, zero, new_max == neg_inf);
      const Vec factor = (old_max - shift).exp_u20();
      Vec sums[kChains] = {zero, zero, zero, zero};
      for_keys_in_chains<kChains>(n, [&](int64_t j, int c) {
        const Vec p = (Vec::loadu(st + j * ld + i) - shift).exp_u20();
        p.store(st + j * ld + i);
        sums[c] = sums[c] + p;
      });
      new_max.store(row_max + i);
      at::vec::fmadd(Vec::loadu(row_sum + i), factor, (sums[0] + sums[1]) + (sums[2] + sums[3])).store(row_sum + i);
      factor.store(alpha + i);
    }
  }

  void forward_query_tile(int64_t b, int64_t h, int64_t i0, ForwardWorkspace& ws, scalar_t* out,
                          const RowStrides& out_st, float* lse, const RowStrides& lse_st) const {
    const int64_t m = std::min(kQueryTile, q_len_[b] - i0), ld = round_up(m, kV);
    const QueryTile qt_tile{b, h, i0, m, ld, nullptr, nullptr, 0, 0};
    const acc_t* q_scaled_row = nullptr;
    if (m == 1) {
      load_row(q_row(b, h, i0), ws.q_row.data());
      for (acc_t& x : ws.q_row) x *= scale_;
      q_scaled_row = ws.q_row.data();
    } else {
      pack_transposed(q_row(b, h, i0), q_st_.pos, m, ld, scale_, ws.qt.data());
    }
    std::fill(ws.row_max.begin(), ws.row_max.end(), -std::numeric_limits<acc_t>::infinity());
    std::fill(ws.row_sum.begin(), ws.row_sum.end(), acc_t(0));
    std::fill(ws.out.begin(), ws.out.end(), acc_t(0));
    for_each_key_tile(b, kv_head(h), i0, m, ws.k_rows.data(), ws.v_rows.data(), [&](const KeyTile& kt) {
      scores(qt_tile, ws.qt.data(), kt, ws.st.data(), ws.diag.data(), q_scaled_row);
      online_softmax(ws.st.data(), ld, kt.n, ws.row_max.data(), ws.row_sum.data(), ws.alpha.data());
      for (int64_t i = 0; i < m; ++i) {
        const Vec factor(ws.alpha[i]);
        acc_t* row = ws.out.data() + i * D_;
        for (int64_t d = 0; d < D_; d += kV) {
          const int64_t n = std::min(kV, D_ - d);
          (Vec::loadu(row + d, n) * factor).store(row + d, n);
        }
      }
      if (dropout_p_ > 0) {  // zero dropped probabilities; the 1/(1-p) factor is applied with the 1/sum below
        acc_t* st = ws.st.data();
        for_each_dropout(qt_tile, kt, [st](int64_t e, bool keep) {
          if (!keep) st[e] = 0;
        });
      }
      tile_gemm<acc_t>(m, D_, kt.n, ws.st.data(), {1, ld}, kt.v_rows, kt.v_ld, ws.out.data(), D_, true);
    });
    for (int64_t i = 0; i < m; ++i) {
      const bool empty = ws.row_max[i] == -std::numeric_limits<acc_t>::infinity();
      store_row(ws.out.data() + i * D_, empty ? acc_t(0) : keep_scale_ / ws.row_sum[i],
                out + out_st.at(q_start_[b], h, i0 + i));
      lse[lse_st.at(q_start_[b], h, i0 + i)] = empty ? std::numeric_limits<float>::infinity()
                       : float(ws.row_max[i] + std::log(ws.row_sum[i]));
    }
  }

  // ---- backward -----------------------------------------------------------------------------------------------

  // delta[b, h, i] = sum_d grad_out[b, h, i, d] * out[b, h, i, d] in acc_t, as a contiguous tensor shaped like lse.
  Tensor row_dot(const Tensor& grad_out, const Tensor& out, const Tensor& lse) const {
    Tensor delta = at::empty(lse.sizes(), grad_out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* delta_ptr = delta.data_ptr<acc_t>();
    const scalar_t *go = grad_out.const_data_ptr<scalar_t>(), *o = out.const_data_ptr<scalar_t>();
    const RowStrides go_st = row_strides(grad_out, packed_), o_st = row_strides(out, packed_),
                     delta_st = row_strides(delta, packed_);
    at::parallel_for(0, B_ * H_ * Sq_, rows_per_task(D_), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / (H_ * Sq_), h = row / Sq_ % H_, i = row % Sq_;
        if (i >= q_len_[b]) continue;  // past a shorter packed sequence
        const scalar_t* go_row = go + go_st.at(q_start_[b], h, i);
        const scalar_t* o_row = o + o_st.at(q_start_[b], h, i);
        Vec sum(acc_t(0));
        for (int64_t c = 0; c < D_; c += IO::kChunk) {
          const int64_t n = std::min(IO::kChunk, D_ - c);
          Vec glo, ghi, olo, ohi;
          IO::load(go_row + c, glo, ghi, n);
          IO::load(o_row + c, olo, ohi, n);
          sum = at::vec::fmadd(glo, olo, at::vec::fmadd(ghi, ohi, sum));
        }
        delta_ptr[delta_st.at(q_start_[b], h, i)] = at::vec::vec_reduce_all<acc_t>([](Vec a, Vec b) { return a + b; }, sum);
      }
    });
    return delta;
  }

  // Packs query tile [i0, i0 + m) of head h for the backward: Q^T (scaled), dO^T, lse and delta in lanes (padding
  // lanes get lse = +inf, so their probabilities are 0), and, with rows, Q and dO rows as acc_t.
  QueryTile load_query_tile(const BackwardArgs& o, int64_t b, int64_t h, int64_t i0, bool rows,
                            BackwardWorkspace& ws) const {
    const int64_t m = std::min(kQueryTile, q_len_[b] - i0), ld = round_up(m, kV);
    QueryTile t{b, h, i0, m, ld, nullptr, nullptr, 0, 0};
    pack_transposed(q_row(b, h, i0), q_st_.pos, m, ld, scale_, ws.qt.data());
    pack_transposed(grad_out_row(o, b, h, i0), o.grad_out_st.pos, m, ld, acc_t(1), ws.dot.data());
    for (int64_t i = 0; i < ld; ++i) {
      const bool real = i < m;
      ws.lse[i] = real ? acc_t(o.lse[o.lse_st.at(q_start_[b], h, i0 + i)]) : std::numeric_limits<acc_t>::infinity();
      ws.delta[i] = real ? o.delta[o.delta_st.at(q_start_[b], h, i0 + i)] : acc_t(0);
    }
    if (rows) {
      std::tie(t.q_rows, t.q_ld) = rows_as_acc(q_row(b, h, i0), q_st_.pos, m, ws.q_rows.data());
      std::tie(t.do_rows, t.do_ld) = rows_as_acc(grad_out_row(o, b, h, i0), o.grad_out_st.pos, m, ws.do_rows.data());
    }
    return t;
  }

  // For one block: ws.p = the probabilities as applied to V (dropped ones 0, kept ones scaled by 1/(1-p)) and
  // ws.ds = dS = P * (dP - delta), with dP = dO V^T passed back through the dropout.
  void block_grads(const QueryTile& qt_tile, const KeyTile& kt, BackwardWorkspace& ws) const {
    const int64_t ld = qt_tile.ld, n = kt.n;
    acc_t *p = ws.p.data(), *ds = ws.ds.data();
    scores(qt_tile, ws.qt.data(), kt, p, ws.diag.data());
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < ld; i += kV)
        (Vec::loadu(p + j * ld + i) - Vec::loadu(ws.lse.data() + i)).exp_u20().store(p + j * ld + i);
    tile_gemm<acc_t>(n, ld, D_, kt.v_rows, {kt.v_ld, 1}, ws.dot.data(), ld, ds, ld, /*accumulate=*/false);
    const bool dropout = dropout_p_ > 0;
    acc_t* factor = ws.dropout_factor.data();  // 1/(1-p) where kept, 0 where dropped
    if (dropout) {
      for_each_dropout(qt_tile, kt, [&](int64_t e, bool keep) { factor[e] = keep ? keep_scale_ : acc_t(0); });
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < ld; i += kV) {
        const int64_t e = j * ld + i;
        const Vec prob = Vec::loadu(p + e);
        Vec dprob = Vec::loadu(ds + e);
        if (dropout) {
          const Vec f = Vec::loadu(factor + e);
          dprob = dprob * f;
          (prob * f).store(p + e);
        }
        (prob * (dprob - Vec::loadu(ws.delta.data() + i))).store(ds + e);
      }
  }

  // dK and dV rows of key tile `tile` of (b, kv head), over every query tile of every head of the group; with
  // dq_acc ([group, Sq, D]) also accumulates dS K for dQ. Writes grad_k, grad_v and grad_bias, and adds into
  // rel_partial ([group, num_buckets]).
  void key_tile_grads(int64_t b, int64_t kvh, int64_t tile, BackwardWorkspace& ws, const BackwardArgs& o,
                      acc_t* dq_acc, double* rel_partial) const {
    const auto [span_begin, span_end] = key_span(b, tile);
    if (span_end <= span_begin) return;
    const int64_t group = H_ / Hkv_;
    const KeyTile span = load_key_tile(b, kvh, span_begin, span_end - span_begin, ws.k_rows.data(), ws.v_rows.data());
    std::fill(ws.dk.begin(), ws.dk.end(), acc_t(0));
    std::fill(ws.dv.begin(), ws.dv.end(), acc_t(0));
    for (int64_t g = 0; g < group; ++g) {
      const int64_t h = kvh * group + g;
      for (int64_t i0 = 0; i0 < q_len_[b]; i0 += kQueryTile) {
        const int64_t m = std::min(kQueryTile, q_len_[b] - i0);
        const int64_t j1 = std::min(span_end, causal_key_end(b, i0, m));
        if (j1 <= span_begin) continue;
        const QueryTile qt_tile = load_query_tile(o, b, h, i0, /*rows=*/true, ws);
        const KeyTile kt = key_subtile(span, span_begin, j1 - span_begin);
        block_grads(qt_tile, kt, ws);
        const int64_t ld = qt_tile.ld;
        tile_gemm<acc_t>(kt.n, D_, m, ws.p.data(), {ld, 1}, qt_tile.do_rows, qt_tile.do_ld, ws.dv.data(), D_, true);
        tile_gemm<acc_t>(kt.n, D_, m, ws.ds.data(), {ld, 1}, qt_tile.q_rows, qt_tile.q_ld, ws.dk.data(), D_, true);
        if (dq_acc)
          tile_gemm<acc_t>(m, D_, kt.n, ws.ds.data(), {1, ld}, kt.k_rows, kt.k_ld, dq_acc + (g * Sq_ + i0) * D_, D_,
                           true);
        if (o.grad_bias) {
          if (bias_is_float_)
            write_grad_bias(static_cast<float*>(o.grad_bias), qt_tile, kt, ws.ds.data());
          else
            write_grad_bias(static_cast<scalar_t*>(o.grad_bias), qt_tile, kt, ws.ds.data());
        }
        if (rel_partial) add_rel_table_grad(qt_tile, kt, ws.ds.data(), ws.diag.data(), rel_partial + g * num_buckets_);
      }
    }
    for (int64_t j = 0; j < span.n; ++j) {
      const int64_t row = o.grad_k_st.at(k_start_[b], kvh, span.j0 + j);
      store_row(ws.dk.data() + j * D_, scale_, o.grad_k + row);
      store_row(ws.dv.data() + j * D_, acc_t(1), o.grad_v + row);
    }
  }

  // dQ rows of query tile [i0, i0 + kQueryTile) of (b, h): the second pass of the split backward.
  void query_tile_grads(int64_t b, int64_t h, int64_t i0, BackwardWorkspace& ws, const BackwardArgs& o) const {
    const QueryTile qt_tile = load_query_tile(o, b, h, i0, /*rows=*/false, ws);
    const int64_t m = qt_tile.m;
    std::fill(ws.dq.begin(), ws.dq.end(), acc_t(0));
    for_each_key_tile(b, kv_head(h), i0, m, ws.k_rows.data(), ws.v_rows.data(), [&](const KeyTile& kt) {
      block_grads(qt_tile, kt, ws);
      tile_gemm<acc_t>(m, D_, kt.n, ws.ds.data(), {1, qt_tile.ld}, kt.k_rows, kt.k_ld, ws.dq.data(), D_, true);
    });
    for (int64_t i = 0; i < m; ++i) store_row(ws.dq.data() + i * D_, scale_, grad_q_row(o, b, h, i0 + i));
  }

  // Writes dS of the block into grad_bias, contiguous [B, H, Sq, Sk] in the dtype of attn_bias.
  template <typename bias_t>
  void write_grad_bias(bias_t* grad_bias, const QueryTile& qt_tile, const KeyTile& kt, const acc_t* ds) const {
    bias_t* base = grad_bias + ((qt_tile.b * H_ + qt_tile.h) * Sq_ + qt_tile.i0) * Sk_ + kt.j0;
    for (int64_t i = 0; i < qt_tile.m; ++i)
      for (int64_t j = 0; j < kt.n; ++j) base[i * Sk_ + j] = bias_t(ds[j * qt_tile.ld + i]);
  }

  // Adds dS of the block into partial[bucket], the grad_rel_table column of the block's head. The bucket depends
  // only on the diagonal i - j, so dS is first summed along diagonals (padding lanes of dS are exactly 0).
  void add_rel_table_grad(const QueryTile& qt_tile, const KeyTile& kt, const acc_t* ds, acc_t* diag,
                          double* partial) const {
    const int64_t n = kt.n, ld = qt_tile.ld, num_diagonals = ld + n - 1;
    std::fill(diag, diag + num_diagonals, acc_t(0));
    for (int64_t j = 0; j < n; ++j) {
      acc_t* diag_row = diag + (n - 1 - j);
      for (int64_t i = 0; i < ld; i += kV)
        (Vec::loadu(diag_row + i) + Vec::loadu(ds + j * ld + i)).store(diag_row + i);
    }
    for (int64_t d = 0; d < num_diagonals; ++d) partial[bucket(diagonal_rel(qt_tile, kt, d))] += diag[d];
  }

  bool packed_;
  int64_t B_, H_, Hkv_, D_;
  int64_t Sq_ = 0, Sk_ = 0;  // the longest sequence lengths (padded: the dims)
  // Sequence b: queries i < q_len_[b] at (q_start_[b], h, i), keys j < k_len_[b] at (k_start_[b], kvh, j).
  std::vector<int64_t> q_start_, k_start_, q_len_, k_len_;
  int64_t dropout_sq_ = 0, dropout_sk_ = 0;  // Sq and Sk of the dropout element numbering
  const scalar_t *q_, *k_, *v_;
  RowStrides q_st_, k_st_, v_st_;  // the head dim is contiguous
  const void* bias_ = nullptr;                 // attn_bias expanded to [B, H, Sq, Sk], q's dtype or float32
  bool bias_is_float_ = false;
  std::array<int64_t, 4> bias_st_{};
  const bool* key_mask_ = nullptr;
  std::array<int64_t, 2> key_mask_st_{};
  std::vector<int64_t> kept_begin_, kept_end_;  // per batch: first kept key, one past the last kept key
  const acc_t* rel_table_ = nullptr;            // [num_buckets, H]
  const int32_t* rel_lut_ = nullptr;
  int64_t num_buckets_ = 0, lut_len_ = 0, lut_st_ = 0;
  bool bidirectional_ = false;
  bool causal_;
  acc_t scale_;
  float dropout_p_;
  acc_t keep_scale_;
  int64_t seed_;
};

// layout: "[B, heads, S, D]" (padded) or "[T, heads, D]" (packed); its rank is its comma count + 1.
void check_qkv(const Tensor& t, const char* name, const char* layout = "[B, heads, S, D]") {
  const int64_t rank = std::count(layout, layout + std::char_traits<char>::length(layout), ',') + 1;
  TORCH_CHECK(t.dim() == rank, name, " must be ", rank, "-D ", layout, ", got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got device ", t.device());
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name, " must have a contiguous last dimension, got strides ",
              t.strides());
}

void check_qkv_dtypes(const Tensor& q, const Tensor& k, const Tensor& v) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "q must be float32, float64, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, "k and v must have the dtype of q (", dtype,
              "), got ", k.scalar_type(), " and ", v.scalar_type());
}

// rel_table / rel_lut (T5 bias) against H query heads, and dropout_p.
void check_rel_and_dropout(const AttentionOptions& opt, int64_t H) {
  TORCH_CHECK(opt.rel_table.has_value() == opt.rel_lut.has_value(),
              "rel_table and rel_lut must be given together (T5 relative bias)");
  if (opt.rel_table) {
    const Tensor &table = *opt.rel_table, &lut = *opt.rel_lut;
    TORCH_CHECK(table.device().is_cpu() && lut.device().is_cpu(), "rel_table and rel_lut must be CPU tensors");
    TORCH_CHECK(table.dim() == 2 && table.size(0) > 0 && table.size(1) == H,
                "rel_table must have shape [num_buckets, H=", H, "], got ", table.sizes());
    TORCH_CHECK(at::isFloatingType(table.scalar_type()), "rel_table must be floating point, got ", table.scalar_type());
    TORCH_CHECK(lut.dim() == 1 && lut.size(0) > 0, "rel_lut must be a non-empty 1-D tensor, got shape ", lut.sizes());
    TORCH_CHECK(lut.scalar_type() == at::kInt, "rel_lut must be int32, got ", lut.scalar_type());
    // Every bucket the kernel can form must index a row of rel_table.
    const int64_t num_buckets = table.size(0), offset = opt.rel_bidirectional ? num_buckets / 2 : 0;
    const int32_t* lut_ptr = lut.const_data_ptr<int32_t>();
    for (int64_t n = 0; n < lut.size(0); ++n) {
      const int64_t value = lut_ptr[n * lut.stride(0)];
      TORCH_CHECK(value >= 0 && value + offset < num_buckets, "rel_lut[", n, "] = ", value,
                  " is not a valid bucket for rel_table with ", num_buckets, " buckets",
                  opt.rel_bidirectional ? " (bidirectional: values must be < num_buckets / 2)" : "");
    }
  }
  TORCH_CHECK(opt.dropout_p >= 0 && opt.dropout_p <= 1, "dropout_p must be in [0, 1], got ", opt.dropout_p);
}

void check_like_q(const Tensor& t, const char* name, const Tensor& q, const char* layout = "[B, heads, S, D]") {
  check_qkv(t, name, layout);
  TORCH_CHECK(t.sizes() == q.sizes(), name, " must have the shape of q ", q.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " must have the dtype of q (", q.scalar_type(), "), got ",
              t.scalar_type());
}

void check_attention_args(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  check_qkv(q, "q");
  check_qkv(k, "k");
  check_qkv(v, "v");
  check_qkv_dtypes(q, k, v);
  const auto dtype = q.scalar_type();
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Hkv = k.size(1), Sk = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D, "k must have shape [B=", B, ", Hkv, Sk, D=", D, "], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(Hkv > 0 ? H % Hkv == 0 : H == 0, "the number of query heads (", H,
              ") must be a multiple of the number of kv heads (", Hkv, ")");
  if (opt.attn_bias) {
    const Tensor& bias = *opt.attn_bias;
    TORCH_CHECK(bias.device().is_cpu(), "attn_bias must be a CPU tensor, got device ", bias.device());
    TORCH_CHECK(bias.dim() == 4 && bias.sizes() == at::IntArrayRef({B, H, Sq, Sk}),
                "attn_bias must be expanded to [B, H, Sq, Sk] = [", B, ", ", H, ", ", Sq, ", ", Sk, "], got ",
                bias.sizes());
    TORCH_CHECK(bias.scalar_type() == dtype || bias.scalar_type() == at::kFloat,
                "attn_bias must have the dtype of q (", dtype, ") or float32, got ", bias.scalar_type());
  }
  if (opt.key_padding_mask) {
    const Tensor& mask = *opt.key_padding_mask;
    TORCH_CHECK(mask.device().is_cpu(), "key_padding_mask must be a CPU tensor, got device ", mask.device());
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == Sk, "key_padding_mask must have shape [B, Sk] = [",
                B, ", ", Sk, "], got ", mask.sizes());
    TORCH_CHECK(mask.scalar_type() == at::kBool, "key_padding_mask must be bool (True = attend), got ",
                mask.scalar_type());
  }
  check_rel_and_dropout(opt, H);
}

// rel_table as a contiguous tensor of the accumulation type (it holds num_buckets x H values).
Tensor rel_table_as_acc(const std::optional<Tensor>& rel_table, at::ScalarType acc_dtype) {
  return rel_table ? rel_table->to(acc_dtype).contiguous() : Tensor();
}

#define FASTFORMER_ATTENTION_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fastformer_attention", __VA_ARGS__)

// (grad_q, grad_k, grad_v, grad_rel_table) of a checked call, padded or packed; grad_bias (written when it has
// elements) must come zero-filled.
std::tuple<Tensor, Tensor, Tensor, Tensor> backward_grads(const Tensor& grad_out, const Tensor& q, const Tensor& k,
                                                          const Tensor& v, const Tensor& out, const Tensor& lse,
                                                          const AttentionOptions& opt, Tensor& grad_bias,
                                                          const Packing* packing) {
  Tensor grad_q = at::empty(q.sizes(), q.options());  // every row written
  Tensor grad_k = at::zeros(k.sizes(), k.options());  // masked keys stay 0
  Tensor grad_v = at::zeros(v.sizes(), v.options());
  Tensor grad_table_f64 = opt.rel_table ? at::zeros(opt.rel_table->sizes(), q.options().dtype(at::kDouble))
                                        : at::empty({0}, q.options());  // [num_buckets, H]
  if (lse.numel() > 0) {
    const Tensor table = rel_table_as_acc(opt.rel_table, at::toOpMathType(q.scalar_type()));
    FASTFORMER_ATTENTION_DISPATCH(q.scalar_type(), [&] {
      AttentionKernel<scalar_t>(q, k, v, opt, table, packing)
          .backward(grad_out, out, lse, grad_q, grad_k, grad_v, grad_bias, grad_table_f64);
    });
  } else {
    grad_q.zero_();
  }
  Tensor grad_rel_table = opt.rel_table ? grad_table_f64.to(opt.rel_table->scalar_type()) : grad_table_f64;
  return {grad_q, grad_k, grad_v, grad_rel_table};
}

std::tuple<Tensor, Tensor> attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                         const std::optional<Tensor>& attn_bias,
                                         const std::optional<Tensor>& key_padding_mask,
                                         const std::optional<Tensor>& rel_table, const std::optional<Tensor>& rel_lut,
                                         bool rel_bidirectional, bool causal, double scale, double dropout_p,
                                         int64_t seed) {
  const AttentionOptions opt{attn_bias, key_padding_mask, rel_table, rel_lut, rel_bidirectional,
                         causal,    scale,            dropout_p, seed};
  check_attention_args(q, k, v, opt);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
  Tensor out = at::empty({B, H, Sq, D}, q.options());               // [B, H, Sq, D]
  Tensor lse = at::empty({B, H, Sq}, q.options().dtype(at::kFloat));  // [B, H, Sq]
  if (lse.numel() == 0) return {out, lse};
  const Tensor table = rel_table_as_acc(rel_table, at::toOpMathType(q.scalar_type()));
  FASTFORMER_ATTENTION_DISPATCH(q.scalar_type(), [&] { AttentionKernel<scalar_t>(q, k, v, opt, table).forward(out, lse); });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> attention_bwd(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
    const std::optional<Tensor>& attn_bias, const std::optional<Tensor>& key_padding_mask,
    const std::optional<Tensor>& rel_table, const std::optional<Tensor>& rel_lut, bool rel_bidirectional, bool causal,
    double scale, double dropout_p, int64_t seed, bool bias_needs_grad) {
  const AttentionOptions opt{attn_bias, key_padding_mask, rel_table, rel_lut, rel_bidirectional,
                         causal,    scale,            dropout_p, seed};
  check_attention_args(q, k, v, opt);
  check_like_q(grad_out, "grad_out", q);
  check_like_q(out, "out", q);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2);
  TORCH_CHECK(lse.device().is_cpu() && lse.dim() == 3 && lse.sizes() == at::IntArrayRef({B, H, Sq}),
              "lse must be a CPU tensor of shape [B, H, Sq] = [", B, ", ", H, ", ", Sq, "], got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lse must be float32, got ", lse.scalar_type());
  TORCH_CHECK(!bias_needs_grad || attn_bias, "bias_needs_grad requires attn_bias");

  Tensor grad_bias = bias_needs_grad ? at::zeros({B, H, Sq, k.size(2)}, q.options().dtype(attn_bias->scalar_type()))
                                     : at::empty({0}, q.options());  // [B, H, Sq, Sk]
  auto [grad_q, grad_k, grad_v, grad_rel_table] = backward_grads(grad_out, q, k, v, out, lse, opt, grad_bias, nullptr);
  return {grad_q, grad_k, grad_v, grad_bias, grad_rel_table};
}

// ---- packed (varlen) ----------------------------------------------------------------------------------------

constexpr const char* kPackedQ = "[Tq, H, D]";
constexpr const char* kPackedKV = "[Tk, Hkv, D]";

// cu_seqlens: int32 CPU [B + 1] from 0, non-decreasing, ending at `total` rows, no sequence longer than max_seqlen
// (the dropout numbering and the tile loops rely on these).
void check_cu_seqlens(const Tensor& cu, const char* name, int64_t total, const char* rows_of, int64_t max_seqlen,
                      const char* max_name) {
  TORCH_CHECK(cu.device().is_cpu(), name, " must be a CPU tensor, got device ", cu.device());
  TORCH_CHECK(cu.scalar_type() == at::kInt, name, " must be int32, got ", cu.scalar_type());
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 1, name, " must be 1-D [B + 1], got shape ", cu.sizes());
  const Tensor c = cu.contiguous();
  const int32_t* p = c.const_data_ptr<int32_t>();
  TORCH_CHECK(p[0] == 0, name, "[0] must be 0, got ", p[0]);
  for (int64_t b = 0; b + 1 < c.size(0); ++b) {
    TORCH_CHECK(p[b + 1] >= p[b], name, " must be non-decreasing, got ", name, "[", b, "] = ", p[b], " > ", name, "[",
                b + 1, "] = ", p[b + 1]);
    TORCH_CHECK(p[b + 1] - p[b] <= max_seqlen, name, " has a sequence of ", p[b + 1] - p[b], " rows, longer than ",
                max_name, " = ", max_seqlen);
  }
  TORCH_CHECK(p[c.size(0) - 1] == total, name, "[-1] = ", p[c.size(0) - 1], " must equal the rows of ", rows_of, " (",
              total, ")");
}

void check_varlen_args(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens_q,
                       const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
                       const AttentionOptions& opt) {
  check_qkv(q, "q", kPackedQ);
  check_qkv(k, "k", kPackedKV);
  check_qkv(v, "v", kPackedKV);
  check_qkv_dtypes(q, k, v);
  const int64_t H = q.size(1), D = q.size(2), Hkv = k.size(1);
  TORCH_CHECK(k.size(2) == D, "k must have shape [Tk, Hkv, D=", D, "], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(Hkv > 0 ? H % Hkv == 0 : H == 0, "the number of query heads (", H,
              ") must be a multiple of the number of kv heads (", Hkv, ")");
  TORCH_CHECK(cu_seqlens_q.sizes() == cu_seqlens_k.sizes(), "cu_seqlens_q and cu_seqlens_k must have the same shape, got ",
              cu_seqlens_q.sizes(), " and ", cu_seqlens_k.sizes());
  check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.size(0), "q", max_seqlen_q, "max_seqlen_q");
  check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.size(0), "k", max_seqlen_k, "max_seqlen_k");
  check_rel_and_dropout(opt, H);
}

std::tuple<Tensor, Tensor> varlen_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k,
                                                int64_t max_seqlen_q, int64_t max_seqlen_k,
                                                const std::optional<Tensor>& rel_table,
                                                const std::optional<Tensor>& rel_lut, bool rel_bidirectional,
                                                bool causal, double scale, double dropout_p, int64_t seed) {
  const std::optional<Tensor> none;
  const AttentionOptions opt{none, none, rel_table, rel_lut, rel_bidirectional, causal, scale, dropout_p, seed};
  check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opt);
  Tensor out = at::empty(q.sizes(), q.options());                              // [Tq, H, D]
  Tensor lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));  // [Tq, H]
  if (lse.numel() == 0) return {out, lse};
  const Packing packing{cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k};
  const Tensor table = rel_table_as_acc(rel_table, at::toOpMathType(q.scalar_type()));
  FASTFORMER_ATTENTION_DISPATCH(q.scalar_type(),
                                [&] { AttentionKernel<scalar_t>(q, k, v, opt, table, &packing).forward(out, lse); });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> varlen_attention_bwd(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
    const Tensor& cu_seqlens_q, const Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    const std::optional<Tensor>& rel_table, const std::optional<Tensor>& rel_lut, bool rel_bidirectional, bool causal,
    double scale, double dropout_p, int64_t seed) {
  const std::optional<Tensor> none;
  const AttentionOptions opt{none, none, rel_table, rel_lut, rel_bidirectional, causal, scale, dropout_p, seed};
  check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, opt);
  check_like_q(grad_out, "grad_out", q, kPackedQ);
  check_like_q(out, "out", q, kPackedQ);
  TORCH_CHECK(lse.device().is_cpu() && lse.dim() == 2 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1),
              "lse must be a CPU tensor of shape [Tq, H] = [", q.size(0), ", ", q.size(1), "], got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lse must be float32, got ", lse.scalar_type());
  Tensor no_bias_grad = at::empty({0}, q.options());
  const Packing packing{cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k};
  return backward_grads(grad_out, q, k, v, out, lse, opt, no_bias_grad, &packing);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
  m.impl("varlen_attention_fwd", &varlen_attention_fwd);
  m.impl("varlen_attention_bwd", &varlen_attention_bwd);
}

}  // namespace fastformer::cpu
