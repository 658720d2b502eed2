"""ff.ops.softmax: softmax of x * scale + mask over one dim, with optional causal masking, in one kernel.

torch.ops.fastformer.softmax_{fwd,bwd} are the C++ ops (CPU and CUDA keys); softmax_{fwd,bwd}_triton
wrap kernels/softmax.py in opaque custom ops with the same schemas, which torch.compile(fullgraph=True)
traces without breaks and which run under TRITON_INTERPRET=1 on CPU tensors.

The kernels see x as [A, B, M, N] with a contiguous last dim and any leading strides, and the mask
expanded to the same shape (stride 0 where broadcast). The wrapper gets there with views: it moves
`dim` to the end, then prepends size-1 dims (inputs of up to 4 dims) or merges the leading dims into
three (more dims), keeping M (the second-to-last dim) on its own for causal. Only a strided last dim
(dim != -1, or a transposed x) costs a copy of x; only more than three leading groups that no view
can merge cost a copy of x and a materialized mask.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from fastformer import _backends
from fastformer.ops import _dispatch
from fastformer.ops._layout import contiguous, last_dim_contiguous

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---- Triton twins of the C++ ops (same schemas) -------------------------------------------------

@torch.library.custom_op("fastformer::softmax_fwd_triton", mutates_args=())
def _softmax_fwd_triton(x: Tensor, mask: Optional[Tensor], scale: float, causal: bool) -> Tensor:
    from fastformer.kernels import softmax as kernels

    return kernels.softmax_fwd(x, mask, scale, causal)


@torch.library.custom_op("fastformer::softmax_bwd_triton", mutates_args=())
def _softmax_bwd_triton(grad_out: Tensor, out: Tensor, scale: float) -> Tensor:
    from fastformer.kernels import softmax as kernels

    return kernels.softmax_bwd(grad_out, out, scale)


_OPS = {
    # backend -> (forward op, backward op)
    "cpp": (torch.ops.fastformer.softmax_fwd.default, torch.ops.fastformer.softmax_bwd.default),
    "triton": (torch.ops.fastformer.softmax_fwd_triton.default, torch.ops.fastformer.softmax_bwd_triton.default),
}


# ---- fake (meta) impls and autograd --------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    _x, mask, scale, _causal = inputs
    ctx.scale = scale
    ctx.mask_dtype = mask.dtype if mask is not None else None
    ctx.save_for_backward(output)


def _make_backward(bwd_op):
    def backward(ctx, grad_out):
        (out,) = ctx.saved_tensors  # [A, B, M, N]
        rows_shape = (math.prod(out.shape[:-1]), out.shape[-1])  # [rows, N]
        dy = contiguous(grad_out.reshape(rows_shape))
        y = out.reshape(rows_shape)
        need_x, need_mask = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_mask = None
        if need_mask:
            # d out / d mask = (d out / d x) / scale; autograd sums it back to the mask's own shape,
            # undoing the expand in the wrapper.
            grad_z = bwd_op(dy, y, 1.0).view(out.shape)
            grad_mask = grad_z.to(ctx.mask_dtype)
            grad_x = grad_z * ctx.scale if need_x else None
        elif need_x:
            grad_x = bwd_op(dy, y, ctx.scale).view(out.shape)
        return grad_x, grad_mask, None, None

    return backward


for _fwd, _bwd in _OPS.values():
    torch.library.register_fake(_fwd)(lambda x, mask, scale, causal: x.new_empty(x.shape))
    torch.library.register_fake(_bwd)(lambda grad_out, out, scale: out.new_empty(out.shape))
    torch.library.register_autograd(_fwd, _make_backward(_bwd), setup_context=_setup_context)


# ---- reference -----------------------------------------------------------------------------------

def softmax_ref(x, dim=-1, scale=1.0, mask=None, causal=False):
    """The documented semantics, in plain PyTorch (computed the way PyTorch code would, in x's dtype
    promoted with the mask's)."""
    z = x * scale
    if mask is not None:
        z = z.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else z + mask
    if causal:
        m, n = x.shape[-2:]
        keep = torch.ones(m, n, dtype=torch.bool, device=x.device).tril(n - m)  # [M, N]: j <= i + N - M
        z = z.masked_fill(~keep, float("-inf"))
    dropped_row = torch.isneginf(z).all(dim, keepdim=True)  # fully masked: zeros, not NaN
    y = torch.softmax(z.masked_fill(dropped_row, 0.0), dim).masked_fill(dropped_row, 0.0)
    return y.to(x.dtype)


# ---- validation and the reshape to the kernels' [A, B, M, N] --------------------------------------

def _validate(x, dim, scale, mask, causal) -> int:
    """Raises TypeError/ValueError naming the bad argument; returns dim as a non-negative index."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    rank = max(x.dim(), 1)
    if not -rank <= dim < rank:
        raise ValueError(f"dim must be in [{-rank}, {rank - 1}] for x with {x.dim()} dims, got {dim}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a Python number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    dim %= rank
    if causal and (x.dim() < 2 or dim != x.dim() - 1):
        raise ValueError(
            f"causal=True needs dim=-1 and x with at least 2 dims [..., M, N], got dim={dim} and x.shape={tuple(x.shape)}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.device != x.device:
            raise ValueError(f"mask must be on the device of x ({x.device}), got {mask.device}")
        if mask.dtype not in (torch.bool, x.dtype, torch.float32):
            raise TypeError(f"mask must be bool (True = keep) or additive float32 or {x.dtype} (the dtype of x), "
                            f"got {mask.dtype}")
        broadcastable = mask.dim() <= x.dim() and all(
            [m in (1, s) for m, s in zip(reversed(mask.shape), reversed(x.shape))])
        if not broadcastable:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x's shape {tuple(x.shape)}")
    return dim


def _leading_groups(shape, strides, causal: bool) -> list[list[int]]:
    """Groups of adjacent leading dims (all but the last) that merge into one dim by a view in every
    tensor (strides: one stride tuple per tensor), innermost group first. Size-1 dims are dropped;
    with causal the row dim M (second-to-last) is a group of its own."""
    groups: list[list[int]] = [[len(shape) - 2]] if causal else []
    separate_from = len(groups)  # groups before this index never take more dims
    for d in reversed(range(len(shape) - 1 - len(groups))):
        if shape[d] == 1:
            continue
        if len(groups) > separate_from:
            inner = groups[-1][0]
            if all([st[d] == shape[inner] * st[inner] for st in strides]):
                groups[-1].insert(0, d)
                continue
        groups.append([d])
    return groups


def _as_4d(x: Tensor, mask: Optional[Tensor], causal: bool) -> tuple[Tensor, Optional[Tensor]]:
    """x [..., N] (last dim contiguous), mask expanded to x's shape -> [A, B, M, N], views when the
    leading dims form at most three mergeable groups."""
    if x.dim() == 4:
        return x, mask
    if x.dim() < 4:  # prepending size-1 dims is always a view; the kernels take any leading strides
        shape4 = (1,) * (4 - x.dim()) + tuple(x.shape)
        return x.view(shape4), mask.view(shape4) if mask is not None else None
    tensors = [x] if mask is None else [x, mask]
    groups = _leading_groups(x.shape, [t.stride() for t in tensors], causal)
    sizes = [math.prod([x.shape[d] for d in g]) for g in reversed(groups)]  # outermost first
    if len(sizes) > 3:
        sizes = [math.prod(sizes[:-2])] + sizes[-2:]  # no view merges these: reshape copies
    shape4 = [1] * (3 - len(sizes)) + sizes + [x.shape[-1]]  # [A, B, M, N]
    return x.reshape(shape4), mask.reshape(shape4) if mask is not None else None


# ---- functional entry point ----------------------------------------------------------------------

def softmax(x, dim=-1, scale=1.0, mask=None, causal=False, backend=None):
    """Softmax over `dim` of x * scale + mask, fused in one kernel.

    x: any shape and strides (fp32, fp16, bf16, fp64). mask: None, bool (True = keep, False =
    excluded) or additive (float32 or x.dtype; -inf excludes), broadcastable to x; an additive mask
    that requires grad gets its gradient. causal (needs dim=-1): over the last two dims [M, N], row i
    keeps column j iff j <= i + N - M (bottom-right aligned, as KV-cache decode needs). Rows with
    no kept column give zeros, never NaN. Returns x's shape and dtype; accumulation is fp32 (fp64
    for fp64 x). backend: see fastformer._backends.
    """
    dim = _validate(x, dim, scale, mask, causal)
    chosen = _backends.resolve("softmax", backend, x.device, x.dtype)
    if chosen == "reference":
        return softmax_ref(x, dim, scale, mask, causal)
    if x.dim() == 0:
        return softmax(x.reshape(1), 0, scale, mask.reshape(1) if mask is not None else None, causal, chosen).reshape(())
    fwd_op, _ = _OPS["triton" if chosen == "triton" else "cpp"]
    # Skipping no-op movedims matters for small inputs (decode steps), where each op call costs microseconds.
    last = dim == x.dim() - 1
    x_last = x if last else x.movedim(dim, -1)  # [..., N], a view
    mask_last = None
    if mask is not None:
        mask_last = mask if mask.shape == x.shape else mask.expand(x.shape)  # stride 0 where broadcast
        mask_last = mask_last if last else mask_last.movedim(dim, -1)
    if x_last.shape[-1] > 1:
        x_last = last_dim_contiguous(x_last)  # the kernels read rows as contiguous vectors
    x4, mask4 = _as_4d(x_last, mask_last, causal)
    out = _dispatch.call(fwd_op, x4, mask4, float(scale), causal, grad_inputs=(x, mask))  # [A, B, M, N], contiguous
    out = out if x_last.dim() == 4 else out.view(x_last.shape)
    return out if last else out.movedim(-1, dim)
