"""Softmax in Triton, forward and backward: y = softmax over the last dim of z = x * scale + mask.

Forward: one program per row of x [A, B, M, N] (any strides, last dim contiguous). A row of up to
MAX_SINGLE_TILE columns is held in registers and read once; wider rows loop over TILE-wide tiles
twice: an online-softmax pass (running max and rescaled sum) and a pass that writes y. The mask
(bool keep-mask or additive, expanded to [A, B, M, N] with stride 0 where broadcast) is read with
its own strides, never materialized. Causal keeps column j of row m iff j <= m + N - M. A row with
no kept column gives zeros: the max is replaced by 0 so exp(-inf - max) stays 0 and the sum 0.
Backward: one program per row of contiguous [rows, N] tensors, grad_x = scale * y * (dy - sum(dy * y)).
Accumulation is fp32 (fp64 for fp64 inputs, used by gradcheck).
"""
import numpy as np
import torch
import triton
import triton.language as tl

from fastformer.kernels import _rows

# 4096 fp32 values over 16 warps is 8 registers per thread: the whole row stays in registers, and
# rows up to 4096 cover attention scores for sequence lengths up to 4K. Wider rows loop.
MAX_SINGLE_TILE = 4096
TILE = 4096

# How the mask enters the logits (MASK_KIND).
MASK_NONE = tl.constexpr(0)
MASK_ADDITIVE = tl.constexpr(1)  # z += mask
MASK_KEEP = tl.constexpr(2)  # z = -inf where the bool mask is False


def _tiling(n_cols: int) -> tuple[int, int]:
    return _rows.tiling(n_cols, MAX_SINGLE_TILE, TILE)


def _split_scale(scale: float) -> tuple[float, float]:
    """scale = hi + lo with hi, lo fp32: Triton passes float arguments as fp32, and fp64 inputs
    (gradcheck) need the scale to ~2^-48 relative, not fp32's 2^-24."""
    hi = float(np.float32(scale))
    return hi, float(np.float32(scale - hi))


@triton.jit
def _logits(X, Mask, cols, kept, scale_hi, scale_lo, stride_mask_col, MASK_KIND: tl.constexpr, ACC: tl.constexpr):
    """z = x * scale (+ mask) for the columns `cols` of one row; -inf where dropped or past `kept`."""
    in_row = cols < kept
    x = tl.load(X + cols, mask=in_row, other=0.0).to(ACC)
    z = x * scale_hi + x * scale_lo
    if MASK_KIND == MASK_ADDITIVE:
        z += tl.load(Mask + cols * stride_mask_col, mask=in_row, other=0.0).to(ACC)
    if MASK_KIND == MASK_KEEP:
        in_row &= tl.load(Mask + cols * stride_mask_col, mask=in_row, other=0) != 0
    return tl.where(in_row, z, float("-inf"))


@triton.jit
def _softmax_fwd_kernel(
    X, Mask, Y,
    B, M, N, scale_hi, scale_lo,
    stride_xa, stride_xb, stride_xm, stride_ma, stride_mb, stride_mm, stride_mn,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TILES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    m = row % M
    b = (row // M) % B
    a = row // (M * B)
    X += a * stride_xa + b * stride_xb + m * stride_xm
    Mask += a * stride_ma + b * stride_mb + m * stride_mm
    Y += row * N
    kept = tl.minimum(tl.maximum(m + N - M + 1, 0), N) if CAUSAL else N
    if NUM_TILES == 1:
        cols = tl.arange(0, BLOCK_N)
        z = _logits(X, Mask, cols, kept, scale_hi, scale_lo, stride_mn, MASK_KIND, ACC)
        row_max = tl.max(z, axis=0)
        safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        e = tl.exp(z - safe_max)
        row_sum = tl.sum(e, axis=0)
        inv = 1.0 / tl.where(row_sum == 0, 1.0, row_sum)  # no kept column: e = 0 already; NaN stays NaN
        tl.store(Y + cols, (e * inv).to(Y.dtype.element_ty), mask=cols < N)
    else:
        # Online softmax: the running sum is rescaled whenever the running max grows.
        run_max = tl.full((), float("-inf"), ACC)
        run_sum = tl.zeros((), ACC)
        for t in range(NUM_TILES):
            cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
            z = _logits(X, Mask, cols, kept, scale_hi, scale_lo, stride_mn, MASK_KIND, ACC)
            new_max = tl.maximum(run_max, tl.max(z, axis=0))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
            run_sum = run_sum * tl.exp(run_max - safe_max) + tl.sum(tl.exp(z - safe_max), axis=0)
            run_max = new_max
        safe_max = tl.where(run_max == float("-inf"), 0.0, run_max)
        inv = 1.0 / tl.where(run_sum == 0, 1.0, run_sum)
        for t in range(NUM_TILES):
            cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
            z = _logits(X, Mask, cols, kept, scale_hi, scale_lo, stride_mn, MASK_KIND, ACC)
            tl.store(Y + cols, (tl.exp(z - safe_max) * inv).to(Y.dtype.element_ty), mask=cols < N)


@triton.jit
def _load_y_dy(Y, DY, cols, N, ACC: tl.constexpr):
    in_row = cols < N
    return tl.load(Y + cols, mask=in_row, other=0.0).to(ACC), tl.load(DY + cols, mask=in_row, other=0.0).to(ACC)


@triton.jit
def _store_grad_x(DX, cols, y, dy, dot, N, scale_hi, scale_lo):
    g = y * (dy - dot)
    tl.store(DX + cols, (g * scale_hi + g * scale_lo).to(DX.dtype.element_ty), mask=cols < N)


@triton.jit
def _softmax_bwd_kernel(DY, Y, DX, N, scale_hi, scale_lo,
                        ACC: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TILES: tl.constexpr):
    offset = tl.program_id(0).to(tl.int64) * N
    DY += offset
    Y += offset
    DX += offset
    if NUM_TILES == 1:
        cols = tl.arange(0, BLOCK_N)
        y, dy = _load_y_dy(Y, DY, cols, N, ACC)
        _store_grad_x(DX, cols, y, dy, tl.sum(y * dy, axis=0), N, scale_hi, scale_lo)
    else:
        acc = tl.zeros([BLOCK_N], dtype=ACC)
        for t in range(NUM_TILES):
            y, dy = _load_y_dy(Y, DY, t * BLOCK_N + tl.arange(0, BLOCK_N), N, ACC)
            acc += y * dy
        dot = tl.sum(acc, axis=0)
        for t in range(NUM_TILES):
            cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
            y, dy = _load_y_dy(Y, DY, cols, N, ACC)
            _store_grad_x(DX, cols, y, dy, dot, N, scale_hi, scale_lo)


def softmax_fwd(x, mask, scale: float, causal: bool):
    """x [A, B, M, N] (last dim contiguous), mask None or expanded to [A, B, M, N] -> y [A, B, M, N]."""
    # The kernel indexes raw memory with these shapes: check what the C++ op checks.
    if x.dim() != 4 or (x.stride(3) != 1 and x.shape[3] > 1):
        raise ValueError(f"x must be 4-D [A, B, M, N] with a contiguous last dim, got shape {tuple(x.shape)}")
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"mask must be expanded to the shape of x {tuple(x.shape)}, got {tuple(mask.shape)}")
    A, B, M, N = x.shape
    y = torch.empty((A, B, M, N), dtype=x.dtype, device=x.device)  # [A, B, M, N], contiguous
    if x.numel() == 0:
        return y
    if mask is None:
        mask_kind, mask_arg, mask_strides = MASK_NONE, x, (0, 0, 0, 0)
    elif mask.dtype == torch.bool:
        # Read as bytes: a bool pointer loads as int1 in some Triton versions.
        mask_kind, mask_arg, mask_strides = MASK_KEEP, mask.view(torch.uint8), mask.stride()
    else:
        mask_kind, mask_arg, mask_strides = MASK_ADDITIVE, mask, mask.stride()
    block_n, num_tiles = _tiling(N)
    _softmax_fwd_kernel[(A * B * M,)](
        x, mask_arg, y, B, M, N, *_split_scale(scale),
        x.stride(0), x.stride(1), x.stride(2), *mask_strides,
        MASK_KIND=mask_kind, CAUSAL=causal, ACC=_rows.acc_dtype(x.dtype), BLOCK_N=block_n, NUM_TILES=num_tiles,
        num_warps=_rows.num_warps(block_n),
    )
    return y


def softmax_bwd(grad_out, out, scale: float):
    """Contiguous [rows, N] grad_out and out (the forward's y) -> grad_x [rows, N]."""
    if out.dim() != 2 or grad_out.shape != out.shape or not (out.is_contiguous() and grad_out.is_contiguous()):
        raise ValueError(f"grad_out and out must be contiguous [rows, N] tensors of one shape, "
                         f"got {tuple(grad_out.shape)} and {tuple(out.shape)}")
    rows, N = out.shape
    grad_x = torch.empty((rows, N), dtype=out.dtype, device=out.device)  # [rows, N]
    if out.numel() == 0:
        return grad_x
    block_n, num_tiles = _tiling(N)
    _softmax_bwd_kernel[(rows,)](
        grad_out, out, grad_x, N, *_split_scale(scale),
        ACC=_rows.acc_dtype(out.dtype), BLOCK_N=block_n, NUM_TILES=num_tiles, num_warps=_rows.num_warps(block_n),
    )
    return grad_x
