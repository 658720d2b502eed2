"""Swapping torch.nn modules for fastformer's drop-ins anywhere in a module tree (the torch.nn half of ff.optimize).

A swapped module shares its parameters and buffers with the module it replaces (same state_dict keys), so
optimizers built before the swap, weight tying and checkpoints keep working. Only exact torch classes are
swapped: subclasses may override forward, and ours are already swapped.
"""
from collections import Counter

from torch import nn

from fastformer.nn.linear import Linear
from fastformer.nn.multihead_attention import MultiheadAttention
from fastformer.nn.norm import LayerNorm, RMSNorm
from fastformer.nn.softmax import Softmax
from fastformer.nn.transformer_layer import TransformerDecoderLayer, TransformerEncoderLayer

# torch class -> (factory(module, backend) -> fastformer module, report kind). The layers adopt their own
# attention and norms.
SWAPS = {
    nn.TransformerEncoderLayer: (TransformerEncoderLayer.from_torch, "transformer_encoder_layer"),
    nn.TransformerDecoderLayer: (TransformerDecoderLayer.from_torch, "transformer_decoder_layer"),
    nn.MultiheadAttention: (MultiheadAttention.from_torch, "multihead_attention"),
    nn.LayerNorm: (LayerNorm.from_torch, "layer_norm"),
    nn.RMSNorm: (RMSNorm.from_torch, "rms_norm"),
    nn.Softmax: (Softmax.from_torch, "softmax"),
    nn.Linear: (Linear.from_torch, "linear"),
}
KINDS = tuple(kind for _, kind in SWAPS.values())


def swap_modules(model: nn.Module, kinds, backend=None, swaps=SWAPS, skip=()) -> Counter:
    """Replaces, in place, every module of `model` (the root excepted) whose exact class is a key of `swaps`
    with a report kind in `kinds`, outside the subtrees of the modules in `skip`; returns how many of each kind
    were swapped. A module reached by two paths becomes one fastformer module."""
    counts = Counter()
    replaced = {}  # id(torch module) -> (the torch module, kept alive so its id stays unique; its fastformer module)
    skipped = {id(m) for m in skip}

    def visit(parent):
        for name, child in list(parent.named_children()):
            swap = swaps.get(type(child))
            if swap is None or swap[1] not in kinds:
                if id(child) not in skipped:
                    visit(child)
                continue
            if id(child) not in replaced:
                replaced[id(child)] = (child, swap[0](child, backend))
                counts[swap[1]] += 1
            setattr(parent, name, replaced[id(child)][1])

    visit(model)
    if counts["transformer_encoder_layer"]:
        _stop_nested_tensor_conversion(model)
    return counts


def _stop_nested_tensor_conversion(model: nn.Module) -> None:
    """nn.TransformerEncoder turns padded inputs into nested tensors for its inference fast path; our layers read
    the padding mask instead, and ff.nn.MultiheadAttention would hand nested tensors back to torch's kernels."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
