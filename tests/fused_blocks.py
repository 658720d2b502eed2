"""Counting the calls of a fused block op (fastformer.ops.decode_block, .encoder_block), shared by the model tests."""
import importlib
import types


def count_op_calls(monkeypatch, op: str) -> list:
    """A list that grows by one per call of torch.ops.fastformer.<op> made through fastformer.ops.<op>."""
    module = importlib.import_module(f"fastformer.ops.{op}")
    calls = []
    real = getattr(module._ops, op).default
    monkeypatch.setattr(module, "_ops", types.SimpleNamespace(**{op: types.SimpleNamespace(
        default=lambda *args: calls.append(1) or real(*args))}))
    return calls
