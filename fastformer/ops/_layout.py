"""Strides the kernels accept, reached without hidden copies where the layout already fits.

The kernels check that rows are contiguous (stride 1 along the last dim). `Tensor.contiguous()` does not
always give that: torch counts a tensor as contiguous whatever the strides of its size-1 dims, and an
empty tensor as contiguous whatever its strides, so autograd's gradient of `y.sum()` on an empty y
(expanded zeros, every stride 0) or a one-element view with stride 2 comes back from .contiguous()
unchanged and the kernels refuse it. These helpers copy in exactly those cases too (an empty or
one-row copy costs nothing).
"""
import torch
from torch import Tensor


def contiguous(t: Tensor) -> Tensor:
    """t if it is contiguous with a unit last stride, else a contiguous copy with standard strides."""
    if t.is_contiguous() and (t.dim() == 0 or t.stride(-1) == 1):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def last_dim_contiguous(t: Tensor) -> Tensor:
    """t if its last dim has stride 1 (other strides as they are), else a contiguous copy."""
    return t if t.dim() == 0 or t.stride(-1) == 1 else contiguous(t)
