"""Shared plumbing of the two norm ops (layer_norm, rms_norm): Triton twin ops with the C++ schemas,
fake impls, autograd, input validation and the reshape to the kernels' [rows, N] view.

torch.ops.fastformer.{layer_norm,rms_norm}_{fwd,bwd} are the C++ ops (CPU and CUDA keys);
the *_triton ops wrap kernels/norm.py in opaque custom ops, which torch.compile(fullgraph=True)
traces without breaks and which run under TRITON_INTERPRET=1 on CPU tensors.
"""
from typing import Optional

import torch
from torch import Tensor

from fastformer import _backends
from fastformer.ops import _dispatch
from fastformer.ops._layout import contiguous, last_dim_contiguous

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---- Triton twins of the C++ ops (same schemas) -------------------------------------------------

@torch.library.custom_op("fastformer::layer_norm_fwd_triton", mutates_args=())
def _layer_norm_fwd_triton(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
                           eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from fastformer.kernels import norm

    return norm.norm_fwd(x, residual, weight, bias, eps, is_rms=False)


@torch.library.custom_op("fastformer::layer_norm_bwd_triton", mutates_args=())
def _layer_norm_bwd_triton(grad_out: Tensor, grad_residual_out: Optional[Tensor], normed_input: Tensor,
                           weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                           has_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    from fastformer.kernels import norm

    return norm.norm_bwd(grad_out, grad_residual_out, normed_input, weight, mean, rstd, has_bias, is_rms=False)


@torch.library.custom_op("fastformer::rms_norm_fwd_triton", mutates_args=())
def _rms_norm_fwd_triton(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                         eps: float) -> tuple[Tensor, Tensor, Tensor]:
    from fastformer.kernels import norm

    out, residual_out, _, rstd = norm.norm_fwd(x, residual, weight, None, eps, is_rms=True)
    return out, residual_out, rstd


@torch.library.custom_op("fastformer::rms_norm_bwd_triton", mutates_args=())
def _rms_norm_bwd_triton(grad_out: Tensor, grad_residual_out: Optional[Tensor], normed_input: Tensor,
                         weight: Optional[Tensor], rstd: Tensor) -> tuple[Tensor, Tensor]:
    from fastformer.kernels import norm

    grad_x, grad_weight, _ = norm.norm_bwd(grad_out, grad_residual_out, normed_input, weight, rstd, rstd, False,
                                           is_rms=True)
    return grad_x, grad_weight


_OPS = {
    # op name -> backend -> (forward op, backward op)
    "layer_norm": {
        "cpp": (torch.ops.fastformer.layer_norm_fwd.default, torch.ops.fastformer.layer_norm_bwd.default),
        "triton": (torch.ops.fastformer.layer_norm_fwd_triton.default, torch.ops.fastformer.layer_norm_bwd_triton.default),
    },
    "rms_norm": {
        "cpp": (torch.ops.fastformer.rms_norm_fwd.default, torch.ops.fastformer.rms_norm_bwd.default),
        "triton": (torch.ops.fastformer.rms_norm_fwd_triton.default, torch.ops.fastformer.rms_norm_bwd_triton.default),
    },
}


# ---- fake (meta) impls ---------------------------------------------------------------------------

def _fake_fwd(x, residual, weight, *, with_mean: bool):
    rows = x.shape[0]
    out = x.new_empty(x.shape)
    residual_out = x.new_empty(x.shape if residual is not None else (0,))
    stats = x.new_empty((rows,), dtype=_backends.accumulation_dtype(x.dtype))
    if with_mean:
        return out, residual_out, x.new_empty((rows,), dtype=_backends.accumulation_dtype(x.dtype)), stats
    return out, residual_out, stats


def _fake_grad_param(normed_input, present: bool):
    return normed_input.new_empty((normed_input.shape[1],) if present else (0,))


for _backend in ("cpp", "triton"):
    _ln_fwd, _ln_bwd = _OPS["layer_norm"][_backend]
    _rms_fwd, _rms_bwd = _OPS["rms_norm"][_backend]
    torch.library.register_fake(_ln_fwd)(
        lambda x, residual, weight, bias, eps: _fake_fwd(x, residual, weight, with_mean=True))
    torch.library.register_fake(_rms_fwd)(
        lambda x, residual, weight, eps: _fake_fwd(x, residual, weight, with_mean=False))
    torch.library.register_fake(_ln_bwd)(
        lambda grad_out, grad_residual_out, normed_input, weight, mean, rstd, has_bias: (
            normed_input.new_empty(normed_input.shape), _fake_grad_param(normed_input, weight is not None),
            _fake_grad_param(normed_input, has_bias)))
    torch.library.register_fake(_rms_bwd)(
        lambda grad_out, grad_residual_out, normed_input, weight, rstd: (
            normed_input.new_empty(normed_input.shape), _fake_grad_param(normed_input, weight is not None)))


# ---- autograd ------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output, *, is_rms: bool):
    if is_rms:
        x, residual, weight, _eps = inputs
        bias = None
        _out, residual_out, rstd = output
        mean = rstd  # unused by the RMS backward
    else:
        x, residual, weight, bias, _eps = inputs
        _out, residual_out, mean, rstd = output
    ctx.has_residual = residual is not None
    ctx.has_weight = weight is not None
    ctx.has_bias = bias is not None
    ctx.save_for_backward(residual_out if residual is not None else x, weight, mean, rstd)


def _make_backward(bwd_op, *, is_rms: bool):
    def backward(ctx, grad_out, grad_residual_out, *_grad_stats):
        normed_input, weight, mean, rstd = ctx.saved_tensors
        grad_residual_out = contiguous(grad_residual_out) if grad_residual_out is not None and ctx.has_residual else None
        args = (contiguous(grad_out), grad_residual_out, contiguous(normed_input), weight)
        if is_rms:
            grad_x, grad_weight = bwd_op(*args, rstd)
            grad_bias = None
        else:
            grad_x, grad_weight, grad_bias = bwd_op(*args, mean, rstd, ctx.has_bias)
        grads = [grad_x, grad_x if ctx.has_residual else None, grad_weight if ctx.has_weight else None]
        if not is_rms:
            grads.append(grad_bias if ctx.has_bias else None)
        return (*grads, None)  # no grad for eps

    return backward


for _op_name, _is_rms in (("layer_norm", False), ("rms_norm", True)):
    for _backend in ("cpp", "triton"):
        _fwd, _bwd = _OPS[_op_name][_backend]
        torch.library.register_autograd(
            _fwd, _make_backward(_bwd, is_rms=_is_rms),
            setup_context=lambda ctx, inputs, output, _r=_is_rms: _setup_context(ctx, inputs, output, is_rms=_r))


# ---- functional entry point ----------------------------------------------------------------------

def _check_like(name: str, t, x: Tensor, shape) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the same device as x ({x.device}), got {t.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    if t.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _rows_view(t: Tensor, n_cols: int) -> Tensor:
    """[..., N] -> [rows, N] with a contiguous last dim; a copy only when no such view exists."""
    rows = t if t.dim() == 2 else t.reshape(-1, n_cols)
    return last_dim_contiguous(rows)


def norm(op_name: str, reference, x, residual, weight, bias, eps, backend):
    """Validates, picks the backend and runs one of the norm ops.

    Returns out, or (out, x + residual) when residual is given, like `reference`.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension to normalize over, got shape {tuple(x.shape)}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    n_cols = x.shape[-1]
    if residual is not None:
        _check_like("residual", residual, x, x.shape)
    if weight is not None:
        _check_like("weight", weight, x, (n_cols,))
    if bias is not None:
        _check_like("bias", bias, x, (n_cols,))
    chosen = _backends.resolve(op_name, backend, x.device, x.dtype)
    if chosen == "reference":
        return reference(x, residual=residual, weight=weight, bias=bias, eps=eps)
    fwd_op, _ = _OPS[op_name]["triton" if chosen == "triton" else "cpp"]
    x_rows = _rows_view(x, n_cols)
    r_rows = _rows_view(residual, n_cols) if residual is not None else None
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    args = (x_rows, r_rows, w, float(eps)) if op_name == "rms_norm" else (x_rows, r_rows, w, b, float(eps))
    out, residual_out = _dispatch.call(fwd_op, *args, grad_inputs=(x, residual, weight, bias))[:2]
    if x.dim() != 2:  # view_as: ~0.4 us, view(x.shape) ~2.5 us (torch parses a Size element by element)
        out, residual_out = out.view_as(x), residual_out.view_as(x) if residual is not None else None
    return (out, residual_out) if residual is not None else out
