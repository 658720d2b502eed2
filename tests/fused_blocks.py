"""Counting the calls of a fused block op (fastformer.ops.decode_block, .encoder_block), shared by the model tests."""
import importlib
import types

import torch


def count_op_calls(monkeypatch, op: str) -> list:
    """A list that grows by one per call of torch.ops.fastformer.<op> made through fastformer.ops.<op>."""
    module = importlib.import_module(f"fastformer.ops.{op}")
    calls = []
    real = getattr(module._ops, op).default
    monkeypatch.setattr(module, "_ops", types.SimpleNamespace(**{op: types.SimpleNamespace(
        default=lambda *args: calls.append(1) or real(*args))}))
    return calls


def block_changes(layer) -> dict:
    """Changes to a TransformerBlock after a forward, by name, each a function that makes it (under torch.no_grad):
    a weight updated in place, a .data swap, a new parameter, a setting (both norms' eps), and last a module the fused
    ops do not cover (torch's Linear). Each changes the block's output."""
    out = layer.attn.out
    return {
        "in place": lambda: layer.attn.qkv.weight.mul_(1.5),
        ".data swap": lambda: setattr(layer.ffn.up.weight, "data", torch.randn_like(layer.ffn.up.weight)),
        "new parameter": lambda: setattr(out, "bias", torch.nn.Parameter(torch.randn(out.bias.shape))),
        "eps": lambda: [setattr(norm, "eps", 0.5) for norm in (layer.attn_norm, layer.ffn_norm)],
        "module": lambda: setattr(layer.attn, "out", torch.nn.Linear(out.in_features, out.out_features)),
    }
