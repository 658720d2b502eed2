"""Backend choice (fastformer/_backends.py): a bad FASTFORMER_BACKEND names the variable and the valid values."""
import pytest
import torch

import fastformer as ff

OPS = {
    "layer_norm": lambda x: ff.ops.layer_norm(x, None, None),
    "rms_norm": lambda x: ff.ops.rms_norm(x, None),
    "softmax": lambda x: ff.ops.softmax(x),
    "attention": lambda x: ff.ops.attention(x[None, None], x[None, None], x[None, None]),
}


@pytest.mark.parametrize("op", OPS)
def test_invalid_environment_backend_names_the_variable(monkeypatch, op):
    monkeypatch.setenv("FASTFORMER_BACKEND", "cdua")
    with pytest.raises(ValueError, match=r"environment variable FASTFORMER_BACKEND='cdua' is not a backend; valid "
                                         r"values: triton, cuda, cpu, reference"):
        OPS[op](torch.randn(3, 16))
    monkeypatch.setenv("FASTFORMER_BACKEND", "")  # empty: auto, as unset
    OPS[op](torch.randn(3, 16))
