"""Fixtures shared by the tests of fastformer.hf."""
import pytest


@pytest.fixture
def varlen_calls(monkeypatch):
    """The keyword arguments of each ff.ops.varlen_attention call made by the fastformer attention function (one
    call per packed layer)."""
    from fastformer.hf import attention as hf_attention

    calls = []
    varlen = hf_attention.ops.varlen_attention
    monkeypatch.setattr(hf_attention.ops, "varlen_attention", lambda *a, **k: calls.append(k) or varlen(*a, **k))
    return calls
