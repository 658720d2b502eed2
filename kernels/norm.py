"""LayerNorm and RMSNorm in Triton, forward and backward, with the optional fused residual add.

One kernel family serves both ops (IS_RMS drops the mean and the bias), in the style of the Triton
layer-norm tutorial:
- forward: one program per row; a row of up to MAX_SINGLE_TILE columns is held in registers and
  read once; wider rows loop over TILE-wide tiles (reading x, residual three times).
- backward: a fixed grid of programs, each owning a contiguous range of rows and accumulating its
  grad_weight / grad_bias in registers (one partial row per program), summed by the launcher.
Statistics and accumulation are fp32 (fp64 for fp64 inputs, used by gradcheck).
"""
import torch
import triton
import triton.language as tl

from fastformer.kernels import _rows

# 16384 fp32 values spread over 16 warps is 32 registers per thread; wider rows spill, so loop.
MAX_SINGLE_TILE = 16384
TILE = 4096


def _tiling(n_cols: int) -> tuple[int, int]:
    return _rows.tiling(n_cols, MAX_SINGLE_TILE, TILE)


def _grid_size(rows: int, device: torch.device) -> int:
    """Programs for the backward pass: a few per SM on GPU; few under the interpreter (~1 ms each)."""
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 4))


@triton.jit
def _load_sum(X, R, cols, N, HAS_RESIDUAL: tl.constexpr, ACC: tl.constexpr):
    """x (+ residual) for the columns `cols` of one row, in the accumulation dtype; 0 past N.

    The sum is rounded to the input dtype, as it is stored in residual_out: the backward re-reads that,
    and a mean of the unrounded sum would leave (s - mean) * rstd off by an ulp of s times rstd (inf in
    fp16 for a constant row at eps 1e-12). This is also PyTorch's add then LayerNorm."""
    mask = cols < N
    s = tl.load(X + cols, mask=mask, other=0.0).to(ACC)
    if HAS_RESIDUAL:
        s = (s + tl.load(R + cols, mask=mask, other=0.0).to(ACC)).to(X.dtype.element_ty).to(ACC)
    return s


@triton.jit
def _store_normalized(Y, W, B, cols, s, mean, rstd, N,
                      HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    mask = cols < N
    y = (s - mean) * rstd
    if HAS_WEIGHT:
        y *= tl.load(W + cols, mask=mask, other=0.0).to(s.dtype)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(s.dtype)
    tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_fwd_kernel(
    X, R, W, B, Y, S, Mean, Rstd,
    stride_x_row, stride_r_row, N, eps,
    IS_RMS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TILES: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x_row
    R += row * stride_r_row
    Y += row * N
    S += row * N
    if NUM_TILES == 1:
        cols = tl.arange(0, BLOCK_N)
        s = _load_sum(X, R, cols, N, HAS_RESIDUAL, ACC)
        if HAS_RESIDUAL:
            tl.store(S + cols, s.to(S.dtype.element_ty), mask=cols < N)
        if IS_RMS:
            mean = 0.0
            var = tl.sum(s * s, axis=0) / N
        else:
            mean = tl.sum(s, axis=0) / N
            diff = tl.where(cols < N, s - mean, 0.0)
            var = tl.sum(diff * diff, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        _store_normalized(Y, W, B, cols, s, mean, rstd, N, HAS_WEIGHT, HAS_BIAS)
    else:
        acc = tl.zeros([BLOCK_N], dtype=ACC)
        for t in range(NUM_TILES):
            cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
            s = _load_sum(X, R, cols, N, HAS_RESIDUAL, ACC)
            if HAS_RESIDUAL:
                tl.store(S + cols, s.to(S.dtype.element_ty), mask=cols < N)
            acc += s * s if IS_RMS else s
        if IS_RMS:
            mean = 0.0
            var = tl.sum(acc, axis=0) / N
        else:
            mean = tl.sum(acc, axis=0) / N
            acc = tl.zeros([BLOCK_N], dtype=ACC)
            for t in range(NUM_TILES):
                cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
                diff = tl.where(cols < N, _load_sum(X, R, cols, N, HAS_RESIDUAL, ACC) - mean, 0.0)
                acc += diff * diff
            var = tl.sum(acc, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        for t in range(NUM_TILES):
            cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
            s = _load_sum(X, R, cols, N, HAS_RESIDUAL, ACC)
            _store_normalized(Y, W, B, cols, s, mean, rstd, N, HAS_WEIGHT, HAS_BIAS)
    if not IS_RMS:
        tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _grad_tile(DY, S, W, cols, mean, rstd, N, HAS_WEIGHT: tl.constexpr, ACC: tl.constexpr):
    """(grad_out, xhat, g = grad_out * weight) of one tile; all 0 past N."""
    mask = cols < N
    dy = tl.load(DY + cols, mask=mask, other=0.0).to(ACC)
    xhat = tl.where(mask, (tl.load(S + cols, mask=mask, other=0.0).to(ACC) - mean) * rstd, 0.0)
    g = dy
    if HAS_WEIGHT:
        g *= tl.load(W + cols, mask=mask, other=0.0).to(ACC)
    return dy, xhat, g


@triton.jit
def _store_grad_x(DX, DRES, cols, g, xhat, c1, c2, rstd, N, HAS_DRES: tl.constexpr):
    mask = cols < N
    dx = (g - xhat * c1 - c2) * rstd
    if HAS_DRES:
        dx += tl.load(DRES + cols, mask=mask, other=0.0).to(dx.dtype)
    tl.store(DX + cols, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    DY, DRES, S, W, Mean, Rstd, DX, DW, DB,
    rows, N, rows_per_program,
    IS_RMS: tl.constexpr, HAS_DRES: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, NUM_TILES: tl.constexpr,
):
    # grad_x = rstd * (g - xhat * mean(g * xhat) - mean(g)), g = grad_out * weight (RMS: no mean(g)).
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    DW += pid * N
    DB += pid * N
    if NUM_TILES == 1:
        cols = tl.arange(0, BLOCK_N)
        dw = tl.zeros([BLOCK_N], dtype=ACC)
        db = tl.zeros([BLOCK_N], dtype=ACC)
        for row in range(row_start, row_end):
            offset = tl.cast(row, tl.int64) * N
            mean = 0.0 if IS_RMS else tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            dy, xhat, g = _grad_tile(DY + offset, S + offset, W, cols, mean, rstd, N, HAS_WEIGHT, ACC)
            c1 = tl.sum(g * xhat, axis=0) / N
            c2 = 0.0 if IS_RMS else tl.sum(g, axis=0) / N
            _store_grad_x(DX + offset, DRES + offset, cols, g, xhat, c1, c2, rstd, N, HAS_DRES)
            dw += dy * xhat
            db += dy
        if HAS_WEIGHT:
            tl.store(DW + cols, dw, mask=cols < N)
        if HAS_BIAS:
            tl.store(DB + cols, db, mask=cols < N)
    else:
        for row in range(row_start, row_end):
            offset = tl.cast(row, tl.int64) * N
            mean = 0.0 if IS_RMS else tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            dot = tl.zeros([BLOCK_N], dtype=ACC)
            gsum = tl.zeros([BLOCK_N], dtype=ACC)
            for t in range(NUM_TILES):
                cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
                dy, xhat, g = _grad_tile(DY + offset, S + offset, W, cols, mean, rstd, N, HAS_WEIGHT, ACC)
                dot += g * xhat
                gsum += g
            c1 = tl.sum(dot, axis=0) / N
            c2 = 0.0 if IS_RMS else tl.sum(gsum, axis=0) / N
            for t in range(NUM_TILES):
                cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
                mask = cols < N
                dy, xhat, g = _grad_tile(DY + offset, S + offset, W, cols, mean, rstd, N, HAS_WEIGHT, ACC)
                _store_grad_x(DX + offset, DRES + offset, cols, g, xhat, c1, c2, rstd, N, HAS_DRES)
                # DW/DB rows are private to this program, so read-modify-write needs no atomics.
                if HAS_WEIGHT:
                    tl.store(DW + cols, tl.load(DW + cols, mask=mask) + dy * xhat, mask=mask)
                if HAS_BIAS:
                    tl.store(DB + cols, tl.load(DB + cols, mask=mask) + dy, mask=mask)


def norm_fwd(x, residual, weight, bias, eps: float, is_rms: bool):
    """x, residual [rows, N] (last dim contiguous) -> (out, residual_out, mean, rstd).

    residual_out is empty without residual; mean is empty for RMSNorm.
    """
    rows, n_cols = x.shape
    acc_torch = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty((rows, n_cols), dtype=x.dtype, device=x.device)  # [rows, N]
    residual_out = torch.empty((rows, n_cols) if residual is not None else (0,), dtype=x.dtype, device=x.device)
    mean = torch.empty((0 if is_rms else rows,), dtype=acc_torch, device=x.device)
    rstd = torch.empty((rows,), dtype=acc_torch, device=x.device)
    if x.numel() == 0:
        return out, residual_out, mean, rstd
    block_n, num_tiles = _tiling(n_cols)
    _norm_fwd_kernel[(rows,)](
        x, residual if residual is not None else x, weight if weight is not None else x,
        bias if bias is not None else x, out, residual_out, mean if not is_rms else rstd, rstd,
        x.stride(0), residual.stride(0) if residual is not None else 0, n_cols, eps,
        IS_RMS=is_rms, HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None, ACC=_rows.acc_dtype(x.dtype), BLOCK_N=block_n, NUM_TILES=num_tiles,
        num_warps=_rows.num_warps(block_n),
    )
    return out, residual_out, mean, rstd


def norm_bwd(grad_out, grad_residual_out, normed_input, weight, mean, rstd, has_bias: bool, is_rms: bool):
    """Contiguous [rows, N] grads and saved input -> (grad_x, grad_weight, grad_bias); unused grads empty."""
    rows, n_cols = normed_input.shape
    device, dtype = normed_input.device, normed_input.dtype
    grad_x = torch.empty((rows, n_cols), dtype=dtype, device=device)  # [rows, N]
    programs = _grid_size(rows, device)
    acc_torch = torch.float64 if dtype == torch.float64 else torch.float32
    partial_w = torch.zeros((programs, n_cols) if weight is not None else (0,), dtype=acc_torch, device=device)
    partial_b = torch.zeros((programs, n_cols) if has_bias else (0,), dtype=acc_torch, device=device)
    if normed_input.numel() > 0:
        block_n, num_tiles = _tiling(n_cols)
        _norm_bwd_kernel[(programs,)](
            grad_out, grad_residual_out if grad_residual_out is not None else grad_out, normed_input,
            weight if weight is not None else normed_input, mean if not is_rms else rstd, rstd,
            grad_x, partial_w, partial_b, rows, n_cols, triton.cdiv(rows, programs),
            IS_RMS=is_rms, HAS_DRES=grad_residual_out is not None, HAS_WEIGHT=weight is not None,
            HAS_BIAS=has_bias, ACC=_rows.acc_dtype(dtype), BLOCK_N=block_n, NUM_TILES=num_tiles,
            num_warps=_rows.num_warps(block_n),
        )
    grad_weight = partial_w.sum(0).to(dtype) if weight is not None else torch.empty((0,), dtype=dtype, device=device)
    grad_bias = partial_b.sum(0).to(dtype) if has_bias else torch.empty((0,), dtype=dtype, device=device)
    return grad_x, grad_weight, grad_bias
