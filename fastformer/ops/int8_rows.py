"""Per-row int8 quantization around torch._int_mm (CPU), the element-wise halves of fastformer.nn.Int8Linear.

quantize_rows_int8(x [M, K] fp32) -> (q [M, K] int8, scale [M] fp32): symmetric per row, q = round(x / scale),
  scale = max(max|x row|, 1e-12) / 127 (round half to even, as torch.round).
dequantize_rows_int32(acc [M, N] int32, row_scale [M], col_scale [N], bias [N] or None) -> fp32 [M, N]:
  acc * row_scale[:, None] * col_scale (+ bias).
Both run the C++ kernels of csrc/cpu/int8_rows.cpp (one pass each); the *_ref functions are the same
arithmetic as ATen ops and the documented semantics.
"""
import torch

import fastformer._C  # noqa: F401  (registers torch.ops.fastformer)

LEVELS = 127.0  # symmetric int8: -127..127 (-128 unused, so negation never overflows)
TINY = 1e-12  # an all-zero row gets this scale and quantizes to zeros


def quantize_rows_int8_ref(x):
    scale = x.abs().amax(dim=-1).clamp_min(TINY) / LEVELS  # [M]
    return torch.round(x / scale[:, None]).to(torch.int8), scale


def dequantize_rows_int32_ref(acc, row_scale, col_scale, bias=None):
    out = acc.to(torch.float32) * row_scale[:, None] * col_scale
    return out + bias if bias is not None else out


def quantize_rows_int8(x):
    return torch.ops.fastformer.quantize_rows_int8(x)


def dequantize_rows_int32(acc, row_scale, col_scale, bias=None):
    return torch.ops.fastformer.dequantize_rows_int32(acc, row_scale, col_scale, bias)


@torch.library.register_fake("fastformer::quantize_rows_int8")
def _fake_quantize(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:1])


@torch.library.register_fake("fastformer::dequantize_rows_int32")
def _fake_dequantize(acc, row_scale, col_scale, bias):
    return acc.new_empty(acc.shape, dtype=torch.float32)
