"""Test setup: without a CUDA GPU, Triton kernels run on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before any Triton kernel module is imported, hence here.
"""
import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GPU = torch.device("cuda") if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=None)
def _cpp_attention_runs(device_type: str) -> bool:
    """Whether the C++ attention forward has a kernel for this device (the kernels land separately)."""
    q = torch.randn(1, 1, 2, 32, device=device_type)
    try:
        torch.ops.fastformer.attention_fwd(q, q, q, None, None, None, None, False, False, 0.1, 0.0, 0)
    except NotImplementedError:
        return False
    return True


@pytest.fixture
def attention_device(backend: str) -> torch.device:
    """The device attention tests parametrized by `backend` run on here, or a visible skip."""
    from fastformer import _backends

    if backend == "cpu":
        if not _cpp_attention_runs("cpu"):
            pytest.skip("CPU attention kernel not registered")
        return torch.device("cpu")
    if backend == "cuda":
        if GPU is None:
            pytest.skip("needs a CUDA GPU")
        reason = _backends.why_not("cuda", GPU)
        if reason:
            pytest.skip(reason)
        if not _cpp_attention_runs("cuda"):
            pytest.skip("CUDA attention kernel not registered")
        return GPU
    device = GPU or torch.device("cpu")
    reason = _backends.why_not(backend, device)
    if reason:
        pytest.skip(reason)
    return device
