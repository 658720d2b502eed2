"""fastformer: fused transformer kernels for PyTorch (Triton, CUDA C++ and C++ CPU backends)."""
import os
import sys

import torch  # noqa: F401  (loads libc10/libtorch, which fastformer._C links against)


def _import_pypi_kernels_before_the_checkout_shadows_it():
    """Run from a source checkout (`python -m pytest`, `python -m fastformer` in the repository root), the root
    is first on sys.path and its kernels/ folder (installed as fastformer.kernels) shadows the PyPI package
    `kernels`, which transformers 5.2x imports: "cannot import name 'CUDAProperties' from 'kernels'". Import
    the installed package first, with the root left out of the search."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "kernels" in sys.modules or not os.path.isfile(os.path.join(root, "kernels", "__init__.py")):
        return
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        import kernels  # noqa: F401
    except ImportError:  # not installed: nothing to shadow
        pass
    finally:
        sys.path[:] = saved


_import_pypi_kernels_before_the_checkout_shadows_it()

try:
    from fastformer import _C  # registers the torch.ops.fastformer schemas and CPU/CUDA kernels
except ImportError as e:  # pragma: no cover - only when the extension was not built
    raise ImportError(
        "fastformer._C is missing or does not load; build it with "
        "`pip install --no-build-isolation -e .` against the installed torch"
    ) from e

from fastformer import models, nn, ops, pipelines
from fastformer._backends import available_backends
from fastformer.hf import from_pretrained
from fastformer.optimization import optimization_report, optimize

__version__ = "0.1.0"
__all__ = ["available_backends", "from_pretrained", "models", "nn", "ops", "optimization_report", "optimize",
           "pipelines"]
