"""Per-row int8 quantization around torch._int_mm (CPU), the element-wise halves of fastformer.nn.Int8Linear.

quantize_rows_int8(x [M, K] fp32, max_crest) -> (q [M + R, K] int8, scale [M + R] fp32, refined [R] int64):
  rows 0..M-1 symmetric per row, q = round(x / scale), scale = max(max|x row|, 1e-12) / 127 (round half to
  even, as torch.round); then, for the R rows whose crest factor max|x| / rms(x) exceeds max_crest (in
  increasing order, listed in `refined`), their residual x - q * scale quantized the same way.
dequantize_rows_int32(acc [M + R, N] int32, row_scale [M + R], col_scale [N], bias [N] or None, refined [R] or
  None) -> fp32 [M, N]: acc * row_scale[:, None] * col_scale (+ bias), residual row j added to row refined[j].
So dequantize(q @ W_q.T, ...) is x's product with two int8 passes where one step of the first pass is a coarse
share of the row (its rounding noise is crest / 440 of the row), one pass elsewhere. Both run the C++ kernels
of csrc/cpu/int8_rows.cpp; the *_ref functions are the same arithmetic as ATen ops and the documented semantics.
"""
import math

import torch

import fastformer._C  # noqa: F401  (registers torch.ops.fastformer)

LEVELS = 127.0  # symmetric int8: -127..127 (-128 unused, so negation never overflows)
TINY = 1e-12  # an all-zero row gets this scale and quantizes to zeros


def _quantize_each_row(x):
    scale = x.abs().amax(dim=-1).clamp_min(TINY) / LEVELS  # [M]
    return torch.round(x / scale[:, None]).to(torch.int8), scale


def quantize_rows_int8_ref(x, max_crest=math.inf):
    q, scale = _quantize_each_row(x)
    crest_sq = x.abs().amax(dim=-1).double() ** 2 * x.shape[-1]
    refined = torch.nonzero(crest_sq > max_crest ** 2 * x.double().pow(2).sum(-1)).flatten()  # [R]
    residual = x[refined] - q[refined].to(torch.float32) * scale[refined, None]  # [R, K]
    q2, scale2 = _quantize_each_row(residual)
    return torch.cat([q, q2]), torch.cat([scale, scale2]), refined


def dequantize_rows_int32_ref(acc, row_scale, col_scale, bias=None, refined=None):
    products = acc.to(row_scale.dtype) * row_scale[:, None] * col_scale  # [M + R, N]
    rows = acc.shape[0] - (0 if refined is None else refined.numel())
    out = products[:rows].index_add(0, refined, products[rows:]) if refined is not None else products
    return out + bias if bias is not None else out


def quantize_rows_int8(x, max_crest=math.inf):
    return torch.ops.fastformer.quantize_rows_int8(x, max_crest)


def dequantize_rows_int32(acc, row_scale, col_scale, bias=None, refined=None):
    return torch.ops.fastformer.dequantize_rows_int32(acc, row_scale, col_scale, bias, refined)


@torch.library.register_fake("fastformer::quantize_rows_int8")
def _fake_quantize(x, max_crest):
    refined_count = torch.library.get_ctx().new_dynamic_size()  # data-dependent: 0..M
    rows = x.shape[0] + refined_count
    return (x.new_empty((rows, x.shape[1]), dtype=torch.int8), x.new_empty((rows,)),
            x.new_empty((refined_count,), dtype=torch.long))


@torch.library.register_fake("fastformer::dequantize_rows_int32")
def _fake_dequantize(acc, row_scale, col_scale, bias, refined=None):
    rows = acc.shape[0] - (0 if refined is None else refined.shape[0])
    return acc.new_empty((rows, acc.shape[1]), dtype=torch.float32)
