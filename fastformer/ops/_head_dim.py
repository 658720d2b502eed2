"""Head dimensions: ff.ops.attention runs every D >= 1, and this is how each backend gets there.

- cpu (C++): takes D at run time; any D >= 1 runs the same kernel (its loops over D are plain loops
  the compiler vectorizes, no tile fixed by D).
- triton: the kernels hold D in a power-of-2 register block, at least 16 wide (tl.dot's minimum), and
  mask the columns past D on every load and store (kernels/attention.py `block_d`).
- cuda: the kernels are compiled for the tiles CUDA_HEAD_DIMS only. The wrapper zero-pads q, k and v
  to the next tile and slices the output back: zero columns add nothing to q.k and give zero output
  columns, and the scale stays 1/sqrt(true D). The padded copies cost time (e.g. D 48 runs as 64).
- above GPU_MAX_HEAD_DIM the GPU kernels have no tiles (the 256-wide accumulator already takes the
  register budget), so triton and cuda fall back to the reference path with one warning per head dim.
"""
import functools
import warnings

import torch.nn.functional as F
from torch import Tensor

GPU_MAX_HEAD_DIM = 256
CUDA_HEAD_DIMS = (32, 64, 80, 96, 128, 256)  # kHeadDims in csrc/cuda/attention.cu


def backend_for_head_dim(backend: str, head_dim: int) -> str:
    """`backend`, or "reference" for a GPU backend (triton, cuda) when head_dim > GPU_MAX_HEAD_DIM."""
    if backend in ("triton", "cuda") and head_dim > GPU_MAX_HEAD_DIM:
        _warn_gpu_fallback(backend, head_dim)
        return "reference"
    return backend


@functools.cache
def _warn_gpu_fallback(backend: str, head_dim: int) -> None:
    warnings.warn(f"ff.ops.attention: head dim D={head_dim} exceeds the GPU kernels' GPU_MAX_HEAD_DIM="
                  f"{GPU_MAX_HEAD_DIM}; backend {backend!r} falls back to the reference path (plain PyTorch, "
                  "materializes the [Sq, Sk] scores)", RuntimeWarning, stacklevel=4)


def cuda_tile(head_dim: int) -> int:
    """The smallest compiled CUDA head dim that holds head_dim (head_dim <= GPU_MAX_HEAD_DIM)."""
    return next(tile for tile in CUDA_HEAD_DIMS if tile >= head_dim)


def pad_head_dim(t: Tensor, width: int) -> Tensor:
    """t [..., D] zero-padded to [..., width] (t itself when D == width)."""
    return t if t.shape[-1] == width else F.pad(t, (0, width - t.shape[-1]))
