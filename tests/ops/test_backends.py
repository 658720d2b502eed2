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


def test_triton_check_under_torch_compile_is_a_constant_without_warnings(monkeypatch):
    """The triton import check is cached by hand and marked constant: torch.compile neither retraces it nor warns
    (an lru_cache there gave 'Dynamo detected a call to a functools.lru_cache-wrapped function')."""
    import warnings

    from fastformer import _backends

    monkeypatch.setattr(_backends, "_TRITON_IMPORT_ERROR", {})  # asked for the first time inside the trace

    def shifted(x):
        return x + (1.0 if _backends.why_not("triton", x.device) is None else 2.0)

    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = torch.compile(shifted, backend="eager", fullgraph=True)(torch.zeros(2))
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    assert torch.equal(got, shifted(torch.zeros(2)))
    assert list(_backends._TRITON_IMPORT_ERROR) == ["triton"]
