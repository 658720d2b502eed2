"""ff.nn.Softmax: torch.nn.Softmax running ff.ops.softmax (same constructor, state and results)."""
import warnings

from torch import Tensor, nn

from fastformer import ops
from fastformer.nn._dropin import _DropIn


def _implicit_dim(ndim: int) -> int:
    """torch.nn.Softmax's legacy choice when dim=None, with the same deprecation warning."""
    warnings.warn(
        "Implicit dimension choice for softmax has been deprecated. Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


class Softmax(_DropIn, nn.Softmax):
    """torch.nn.Softmax(dim) on fastformer's kernels. `backend` as in ff.ops (None = auto)."""

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _implicit_dim(input.dim())
        return ops.softmax(input, dim, backend=self.backend)
