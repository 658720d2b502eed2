// LayerNorm and RMSNorm on CPU, forward and backward, with the optional fused residual add.
//
// One template serves both ops: RMSNorm is LayerNorm without the mean (kRms) and without bias.
// Each row is read from memory once and normalized with two-pass statistics (mean, then sum of
// squared deviations) from L1/L2 (see norm_fwd_kernel), more accurate than one-pass Welford.
// Rows are split across threads with at::parallel_for; backward reduces grad_weight/grad_bias from
// one partial row per task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/row_io.h"
#include "norm_binding.h"

namespace fastformer::cpu {
namespace {

using at::Tensor;
using at::vec::Vectorized;

// Forward, one row at a time (rows split across threads):
//   1. s = x (+ residual), summed (LayerNorm) or square-summed (RMSNorm). s goes to residual_out when
//      there is a residual (rounded to the input dtype, as used from then on), and to an acc_t row
//      buffer for fp16/bf16, so passes 2-3 re-read it in acc_t from L1/L2 (a 1024-column row is 4 KB);
//      fp32 without a residual re-reads x itself.
//   2. LayerNorm: the sum of squared deviations from the mean (two-pass: more accurate than one-pass).
//   3. y = (s - mean) * rstd * weight + bias.
// Every reduction keeps two independent vector accumulators (the lo / hi halves of a chunk): with
// one chained accumulator the loops were add-latency bound and the op ran ~25% slower than ATen's
// LayerNorm at 1024x768 fp32 on one thread.
template <typename scalar_t, bool kRms>
void norm_fwd_kernel(const Tensor& x, const std::optional<Tensor>& residual, const std::optional<Tensor>& weight,
                     const std::optional<Tensor>& bias, double eps, Tensor& out, Tensor& residual_out, Tensor& mean,
                     Tensor& rstd) {
  using IO = RowIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  const int64_t rows = x.size(0), cols = x.size(1);
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  const scalar_t* r_ptr = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* w_ptr = weight ? weight->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* b_ptr = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  const int64_t x_stride = x.stride(0), r_stride = residual ? residual->stride(0) : 0;
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  scalar_t* res_out_ptr = residual ? residual_out.data_ptr<scalar_t>() : nullptr;
  acc_t* mean_ptr = kRms ? nullptr : mean.data_ptr<acc_t>();
  acc_t* rstd_ptr = rstd.data_ptr<acc_t>();
  const auto add = [](Vec a, Vec b) { return a + b; };

  at::parallel_for(0, rows, rows_per_task(cols), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(IO::kReduced ? cols : 0);  // s of the current row in acc_t (fp16/bf16 only)
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xr = x_ptr + row * x_stride;
      const scalar_t* rr = r_ptr ? r_ptr + row * r_stride : nullptr;
      scalar_t* sr = res_out_ptr ? res_out_ptr + row * cols : nullptr;
      Vec sum_lo(0), sum_hi(0);
      for (int64_t c = 0; c < cols; c += IO::kChunk) {
        const int64_t n = std::min(IO::kChunk, cols - c);
        Vec lo, hi;
        IO::load(xr + c, lo, hi, n);
        if (rr) {
          Vec rlo, rhi;
          IO::load(rr + c, rlo, rhi, n);
          lo = lo + rlo;
          hi = hi + rhi;
          IO::store(sr + c, lo, hi, n);
          // Normalize s as stored (rounded to fp16/bf16), like PyTorch's add then LayerNorm: the backward
          // re-reads the stored s, and a mean of the unrounded s would leave (s - mean) * rstd off by an
          // ulp of s times rstd (inf in fp16 for a constant row at eps 1e-12).
          if constexpr (IO::kReduced) IO::load(sr + c, lo, hi, n);
        }
        if constexpr (kRms) {
          sum_lo = at::vec::fmadd(lo, lo, sum_lo);
          sum_hi = at::vec::fmadd(hi, hi, sum_hi);
        } else {
          sum_lo = sum_lo + lo;
          sum_hi = sum_hi + hi;
        }
        if constexpr (IO::kReduced) {
          lo.store(buf.data() + c, std::min(n, IO::kVec));
          if (n > IO::kVec) hi.store(buf.data() + c + IO::kVec, n - IO::kVec);
        }
      }
      const acc_t* s;
      if constexpr (IO::kReduced) {
        s = buf.data();
      } else {
        s = sr ? sr : xr;
      }
      const acc_t first_moment = at::vec::vec_reduce_all<acc_t>(add, sum_lo + sum_hi) / cols;
      acc_t mu = 0, var;
      if constexpr (kRms) {
        var = first_moment;  // mean of squares
      } else {
        mu = first_moment;
        const Vec mu_v(mu);
        Vec sq_lo(0), sq_hi(0);
        int64_t c = 0;
        for (; c + IO::kChunk <= cols; c += IO::kChunk) {
          const Vec d_lo = Vec::loadu(s + c) - mu_v, d_hi = Vec::loadu(s + c + IO::kVec) - mu_v;
          sq_lo = at::vec::fmadd(d_lo, d_lo, sq_lo);
          sq_hi = at::vec::fmadd(d_hi, d_hi, sq_hi);
        }
        acc_t sq = at::vec::vec_reduce_all<acc_t>(add, sq_lo + sq_hi);
        for (; c < cols; ++c) sq += (s[c] - mu) * (s[c] - mu);
        var = sq / cols;
      }
      const acc_t rs = acc_t(1) / std::sqrt(var + acc_t(eps));
      if (mean_ptr) mean_ptr[row] = mu;
      rstd_ptr[row] = rs;
      const Vec mu_v(mu), rs_v(rs);
      scalar_t* yr = out_ptr + row * cols;
      for (int64_t c = 0; c < cols; c += IO::kChunk) {
        const int64_t n = std::min(IO::kChunk, cols - c);
        Vec lo = (Vec::loadu(s + c, std::min(n, IO::kVec)) - mu_v) * rs_v;
        Vec hi = n > IO::kVec ? (Vec::loadu(s + c + IO::kVec, n - IO::kVec) - mu_v) * rs_v : Vec(0);
        Vec wlo(1), whi(1), blo(0), bhi(0);
        if (w_ptr) IO::load(w_ptr + c, wlo, whi, n);
        if (b_ptr) IO::load(b_ptr + c, blo, bhi, n);
        IO::store(yr + c, at::vec::fmadd(lo, wlo, blo), at::vec::fmadd(hi, whi, bhi), n);
      }
    }
  });
}

// grad_x = rstd * (g - xhat * mean(g * xhat) - mean(g)) with g = grad_out * weight (RMS: no mean(g)).
template <typename scalar_t, bool kRms>
void norm_bwd_kernel(const Tensor& grad_out, const std::optional<Tensor>& grad_residual_out, const Tensor& input,
                     const std::optional<Tensor>& weight, const Tensor& mean, const Tensor& rstd, bool need_grad_bias,
                     Tensor& grad_x, Tensor& grad_weight, Tensor& grad_bias) {
  using IO = RowIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  const int64_t rows = input.size(0), cols = input.size(1);
  const scalar_t* dy_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* dres_ptr = grad_residual_out ? grad_residual_out->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* s_ptr = input.const_data_ptr<scalar_t>();
  const scalar_t* w_ptr = weight ? weight->const_data_ptr<scalar_t>() : nullptr;
  const acc_t* mean_ptr = kRms ? nullptr : mean.const_data_ptr<acc_t>();
  const acc_t* rstd_ptr = rstd.const_data_ptr<acc_t>();
  scalar_t* dx_ptr = grad_x.data_ptr<scalar_t>();
  const bool need_dw = weight.has_value(), need_db = need_grad_bias;

  // One partial grad_weight / grad_bias row per task, reduced in order afterwards (deterministic).
  const int64_t grain = rows_per_task(cols);
  const int64_t num_tasks = at::divup(rows, grain);
  std::vector<acc_t> dw_partial(need_dw ? num_tasks * cols : 0, acc_t(0));
  std::vector<acc_t> db_partial(need_db ? num_tasks * cols : 0, acc_t(0));

  at::parallel_for(0, num_tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    std::vector<acc_t> xhat(cols), g(cols);
    for (int64_t task = task_begin; task < task_end; ++task) {
      acc_t* dw_acc = need_dw ? dw_partial.data() + task * cols : nullptr;
      acc_t* db_acc = need_db ? db_partial.data() + task * cols : nullptr;
      for (int64_t row = task * grain; row < std::min(rows, (task + 1) * grain); ++row) {
        const scalar_t* dyr = dy_ptr + row * cols;
        const scalar_t* sr = s_ptr + row * cols;
        const acc_t mu = kRms ? acc_t(0) : mean_ptr[row], rs = rstd_ptr[row];
        const Vec mu_v(mu), rs_v(rs);
        Vec dot_v(0), gsum_v(0);
        for (int64_t c = 0; c < cols; c += IO::kChunk) {
          const int64_t n = std::min(IO::kChunk, cols - c);
          Vec slo, shi, dlo, dhi;
          IO::load(sr + c, slo, shi, n);
          IO::load(dyr + c, dlo, dhi, n);
          const Vec xlo = (slo - mu_v) * rs_v, xhi = (shi - mu_v) * rs_v;
          Vec glo = dlo, ghi = dhi;
          if (w_ptr) {
            Vec wlo, whi;
            IO::load(w_ptr + c, wlo, whi, n);
            glo = glo * wlo;
            ghi = ghi * whi;
          }
          if (dw_acc) {
            at::vec::fmadd(dlo, xlo, Vec::loadu(dw_acc + c, std::min(n, IO::kVec))).store(dw_acc + c, std::min(n, IO::kVec));
            if (n > IO::kVec)
              at::vec::fmadd(dhi, xhi, Vec::loadu(dw_acc + c + IO::kVec, n - IO::kVec)).store(dw_acc + c + IO::kVec, n - IO::kVec);
          }
          if (db_acc) {
            (dlo + Vec::loadu(db_acc + c, std::min(n, IO::kVec))).store(db_acc + c, std::min(n, IO::kVec));
            if (n > IO::kVec) (dhi + Vec::loadu(db_acc + c + IO::kVec, n - IO::kVec)).store(db_acc + c + IO::kVec, n - IO::kVec);
          }
          // Padding lanes past n hold zeros (load pads with 0), so they add nothing below.
          dot_v = at::vec::fmadd(glo, xlo, at::vec::fmadd(ghi, xhi, dot_v));
          gsum_v = gsum_v + glo + ghi;
          xlo.store(xhat.data() + c, std::min(n, IO::kVec));
          glo.store(g.data() + c, std::min(n, IO::kVec));
          if (n > IO::kVec) {
            xhi.store(xhat.data() + c + IO::kVec, n - IO::kVec);
            ghi.store(g.data() + c + IO::kVec, n - IO::kVec);
          }
        }
        const auto add = [](Vec a, Vec b) { return a + b; };
        const acc_t c1 = at::vec::vec_reduce_all<acc_t>(add, dot_v) / cols;
        const acc_t c2 = kRms ? acc_t(0) : at::vec::vec_reduce_all<acc_t>(add, gsum_v) / cols;
        const Vec c1_v(c1), c2_v(c2);
        scalar_t* dxr = dx_ptr + row * cols;
        const scalar_t* dresr = dres_ptr ? dres_ptr + row * cols : nullptr;
        for (int64_t c = 0; c < cols; c += IO::kChunk) {
          const int64_t n = std::min(IO::kChunk, cols - c);
          const int64_t nlo = std::min(n, IO::kVec);
          Vec lo = rs_v * (Vec::loadu(g.data() + c, nlo) - Vec::loadu(xhat.data() + c, nlo) * c1_v - c2_v);
          Vec hi = n > IO::kVec ? rs_v * (Vec::loadu(g.data() + c + IO::kVec, n - IO::kVec) -
                                          Vec::loadu(xhat.data() + c + IO::kVec, n - IO::kVec) * c1_v - c2_v)
                                : Vec(0);
          if (dresr) {
            Vec rlo, rhi;
            IO::load(dresr + c, rlo, rhi, n);
            lo = lo + rlo;
            hi = hi + rhi;
          }
          IO::store(dxr + c, lo, hi, n);
        }
      }
    }
  });

  const auto reduce_partials = [&](const std::vector<acc_t>& partial, Tensor& result) {
    Tensor acc = at::zeros({cols}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* a = acc.data_ptr<acc_t>();
    for (int64_t t = 0; t < num_tasks; ++t)
      for (int64_t c = 0; c < cols; ++c) a[c] += partial[t * cols + c];
    result = acc.to(input.scalar_type());
  };
  if (need_dw) reduce_partials(dw_partial, grad_weight);
  if (need_db) reduce_partials(db_partial, grad_bias);
}

#define FASTFORMER_NORM_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fastformer_norm", __VA_ARGS__)

template <bool kRms>
NormFwdResult norm_fwd(const Tensor& x, const std::optional<Tensor>& residual, const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& bias, double eps) {
  Tensor out, residual_out, mean, rstd;
  std::tie(out, residual_out, mean, rstd) = norm_fwd_outputs(x, residual, weight, bias, eps, kRms);
  if (x.numel() > 0) {
    FASTFORMER_NORM_DISPATCH(x.scalar_type(), [&] {
      norm_fwd_kernel<scalar_t, kRms>(x, residual, weight, bias, eps, out, residual_out, mean, rstd);
    });
  }
  return {out, residual_out, mean, rstd};
}

template <bool kRms>
NormBwdResult norm_bwd(const Tensor& grad_out, const std::optional<Tensor>& grad_residual_out, const Tensor& input,
                       const std::optional<Tensor>& weight, const Tensor& mean, const Tensor& rstd, bool has_bias) {
  Tensor grad_x, grad_weight, grad_bias;
  std::tie(grad_x, grad_weight, grad_bias) =
      norm_bwd_outputs(grad_out, grad_residual_out, input, weight, mean, rstd, has_bias, kRms);
  if (input.numel() > 0) {
    FASTFORMER_NORM_DISPATCH(input.scalar_type(), [&] {
      norm_bwd_kernel<scalar_t, kRms>(grad_out, grad_residual_out, input, weight, mean, rstd, has_bias, grad_x,
                                      grad_weight, grad_bias);
    });
  }
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("layer_norm_fwd", &norm_fwd<false>);
  m.impl("layer_norm_bwd", &norm_bwd<false>);
  m.impl("rms_norm_fwd", &rms_norm_fwd_adapter<&norm_fwd<true>>);
  m.impl("rms_norm_bwd", &rms_norm_bwd_adapter<&norm_bwd<true>>);
}

}  // namespace fastformer::cpu
