"""A counter of changes to fastformer's modules, so that a fused block op's cached arguments are checked in a few
microseconds per forward instead of by walking the block's modules.

The fused CPU block ops (fastformer.ops.encoder_block, decode_block) take a block's weights, settings and submodules
as arguments, built once and kept (TransformerBlock._fused_args). They are stale after any change a Python block would
see. Walking the block's modules, settings and tensors to compare took ~28 us a block (2-core AVX-512 VM), and inside
a forward, where the walk runs on caches the weights just swept, ~70 us: all-MiniLM-L6-v2's batch-1 forward spent
~0.4 ms of its ~4.3 in it. Instead every fastformer module class takes `ChangeTracked`, which bumps one counter on
each change that goes through the module's own API (an attribute, a parameter, a buffer or submodule registered, the
class swapped, `.to()` / `.half()`); a cache keeps the counter's value it was built at. What does not go through the
module (a tensor updated in place, a `.data` swap, a hook registered) the cache checks itself.
"""
import torch
from torch import nn

_epoch = 0


def current() -> int:
    """The counter: it changes whenever a ChangeTracked module may have changed."""
    return _epoch


def _bump() -> None:
    global _epoch
    _epoch += 1


class ChangeTracked:
    """Mixin for a torch.nn.Module subclass: changes to the module bump the epoch. A public attribute set or deleted
    (settings such as eps or activation, parameters, submodules, training mode); a parameter, submodule or buffer under
    any name; the class swapped (torch.nn.utils.parametrize); _apply (`.to()`, `.half()`, which may put new
    parameters in _parameters directly). Private plain attributes (a module's own caches, such as ff.nn.Linear's
    packed weight, set during a forward) do not count."""

    def __setattr__(self, name, value):
        if (name[0] != "_" or name == "__class__" or isinstance(value, (nn.Module, nn.Parameter))
                or (isinstance(value, torch.Tensor) and name in self.__dict__.get("_buffers", ()))):
            _bump()
        super().__setattr__(name, value)

    def __delattr__(self, name):
        _bump()
        super().__delattr__(name)

    def register_parameter(self, name, param):
        _bump()
        super().register_parameter(name, param)

    def register_buffer(self, name, tensor, persistent=True):
        _bump()
        super().register_buffer(name, tensor, persistent)

    def add_module(self, name, module):
        _bump()
        super().add_module(name, module)

    def _apply(self, fn, recurse=True):
        _bump()
        return super()._apply(fn, recurse)
