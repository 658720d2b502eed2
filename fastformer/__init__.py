"""fastformer: fused transformer kernels for PyTorch (Triton, CUDA C++ and C++ CPU backends)."""
import torch  # noqa: F401  (loads libc10/libtorch, which fastformer._C links against)

try:
    from fastformer import _C  # registers the torch.ops.fastformer schemas and CPU/CUDA kernels
except ImportError as e:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "fastformer._C is missing or does not load; build it with "
        "`pip install --no-build-isolation -e .` against the installed torch"
    ) from e

from fastformer import models, nn, ops
from fastformer._backends import available_backends
from fastformer.hf import from_pretrained
from fastformer.optimization import optimization_report, optimize

__version__ = "0.1.0"
__all__ = ["available_backends", "from_pretrained", "models", "nn", "ops", "optimization_report", "optimize"]
