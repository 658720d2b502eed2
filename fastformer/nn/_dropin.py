"""The shared part of every drop-in module: a `backend` choice and adoption of a torch module."""


class _DropIn:
    """Adds a `backend` attribute (None = auto) to a torch.nn module subclass, and `from_torch`."""

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
