"""fastformer._module_epoch: which changes to a fastformer module move the epoch the fused blocks' cached arguments
are checked against (the models' tests check that every such change reaches the next forward)."""
import pytest
import torch
import torch.nn.utils.parametrize

import fastformer as ff
from fastformer import _module_epoch


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("change", [
    lambda m: setattr(m, "backend", "reference"),
    lambda m: setattr(m, "weight", torch.nn.Parameter(torch.ones(4, 4))),
    lambda m: setattr(m, "_hidden", torch.nn.Parameter(torch.ones(1))),
    lambda m: setattr(m, "_inner", torch.nn.Identity()),
    lambda m: m.register_buffer("_scale", torch.ones(1)),
    lambda m: m.register_parameter("_extra", None),
    lambda m: m.add_module("_child", torch.nn.Identity()),
    lambda m: m.register_module("_other", torch.nn.Identity()),
    lambda m: m.eval(),
    lambda m: m.double(),
    lambda m: delattr(m, "backend"),
    lambda m: torch.nn.utils.parametrize.register_parametrization(m, "weight", _Doubled()),
], ids=["setting", "parameter", "private parameter", "private submodule", "buffer", "registered parameter",
        "add_module", "register_module", "training mode", "_apply", "deleted attribute", "class swap"])
def test_changes_through_the_module_move_the_epoch(change):
    module = ff.nn.Linear(4, 4)
    before = _module_epoch.current()
    change(module)
    assert _module_epoch.current() != before


def test_a_private_plain_attribute_and_a_forward_leave_it():
    """A module's own caches (ff.nn.Linear's packed weight, set during a forward) are no change to the module."""
    module = ff.nn.Linear(4, 4).eval()
    module.register_buffer("_state", torch.zeros(1))
    before = _module_epoch.current()
    module._note = "cache"
    with torch.inference_mode():
        module(torch.randn(3, 4))
    assert _module_epoch.current() == before
    module._state = torch.ones(1)  # a registered buffer replaced under a private name is a change
    assert _module_epoch.current() != before
