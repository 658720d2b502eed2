"""Test configuration: Triton runs through its interpreter on CPU tensors when no GPU is present.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before
fastformer.kernels is imported, so it is set here at collection time.
"""
import functools
import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from fastformer import _backends  # noqa: E402

ALL_BACKENDS = ("cpu", "triton", "cuda", "reference")


def backend_device(backend: str) -> torch.device:
    """The device a backend's tests run on here, or a visible skip saying why it cannot run."""
    device = torch.device("cuda" if backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu")
    if backend == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (none visible to torch)")
    reason = _backends.why_not(backend, device)
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot run here: {reason}")
    return device


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
    """backend_device for attention tests, which also skip a C++ backend whose attention kernel is not
    registered in this build."""
    device = backend_device(backend)
    if backend in ("cpu", "cuda") and not _cpp_attention_runs(device.type):
        pytest.skip(f"{backend.upper()} attention kernel not registered")
    return device
