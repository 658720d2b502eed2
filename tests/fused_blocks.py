"""Counting the calls of a fused block op (fastformer.ops.decode_block, .encoder_block), shared by the model tests."""
import importlib
import types

import torch
import torch.nn.utils.parametrize


def count_op_calls(monkeypatch, op: str) -> list:
    """A list that grows by one per block run by torch.ops.fastformer.<op> called through fastformer.ops.<op>: one
    per call, and for encoder_block also one per block of each call of encoder_blocks (the whole stack at once)."""
    module = importlib.import_module(f"fastformer.ops.{op}")
    calls = []

    def counted(name, blocks_of):
        real = getattr(module._ops, name).default
        return types.SimpleNamespace(default=lambda *args: calls.extend([1] * blocks_of(args)) or real(*args))

    ops = {op: counted(op, lambda args: 1)}
    if op == "encoder_block":
        ops["encoder_blocks"] = counted("encoder_blocks", lambda args: len(args[4]))  # args[4]: the head counts
    monkeypatch.setattr(module, "_ops", types.SimpleNamespace(**ops))
    return calls


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


# The changes of block_changes after which the block runs its Python forward: they come last.
PYTHON_BLOCK_CHANGES = ("parametrization", "module")


def block_changes(layer) -> dict:
    """Changes to a TransformerBlock after a forward, by name, each a function that makes it (under torch.no_grad):
    a weight updated in place, a .data swap, a new parameter, a setting (both norms' eps), and last (from
    PYTHON_BLOCK_CHANGES on, the fused ops no longer cover the block) a parametrization (the linear's class is swapped
    for one computing its weight) and a module the fused ops do not cover (torch's Linear). Each changes the block's
    output."""
    out = layer.attn.out
    return {
        "in place": lambda: layer.attn.qkv.weight.mul_(1.5),
        ".data swap": lambda: setattr(layer.ffn.up.weight, "data", torch.randn_like(layer.ffn.up.weight)),
        "new parameter": lambda: setattr(out, "bias", torch.nn.Parameter(torch.randn(out.bias.shape))),
        "eps": lambda: [setattr(norm, "eps", 0.5) for norm in (layer.attn_norm, layer.ffn_norm)],
        "parametrization": lambda: torch.nn.utils.parametrize.register_parametrization(layer.ffn.down, "weight",
                                                                                       _Doubled()),
        "module": lambda: setattr(layer.attn, "out", torch.nn.Linear(out.in_features, out.out_features)),
    }
