"""The GPU benchmark scripts' host-side logic, checked without a GPU: where results go and how a failing
implementation is reported (the first GPU run has minutes, and only $OUT comes back from it)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def attention_gpu():
    return _load("attention_gpu")


def test_attention_results_go_under_out_when_set(attention_gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert attention_gpu.default_out() == tmp_path / "bench/results/attention_gpu.json"
    monkeypatch.delenv("OUT")
    assert attention_gpu.default_out() == ROOT / "bench/results/attention_gpu.json"


class _CompileError(Exception):
    """Stands in for triton.compiler.errors.CompilationError, which derives from Exception only."""


def test_attention_measure_records_any_failure_and_goes_on(attention_gpu):
    cfg = attention_gpu.Config("fwd", "fp16", 1, 1, 16, 16, 64)

    def failing(_inputs):
        raise _CompileError("at 12:4: unsupported")

    record = attention_gpu.measure(cfg, "ours_triton", failing, inputs={}, warmup=1, rep=1)
    assert record["error"] == "_CompileError: at 12:4: unsupported"
    assert record["impl"] == "ours_triton" and "ms" not in record
