"""The shared part of every drop-in module: a `backend` choice and adoption of a torch module."""
from fastformer._module_epoch import ChangeTracked


class _DropIn(ChangeTracked):
    """Adds a `backend` attribute (None = auto) to a torch.nn module subclass, and `from_torch`; changes to the module
    count in fastformer._module_epoch."""

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    @classmethod
    def from_torch(cls, module, backend=None):
        """A fastformer module sharing `module`'s parameters and buffers (no copy)."""
        new = cls.__new__(cls)
        new.__dict__.update(module.__dict__)
        new.backend = backend
        return new
