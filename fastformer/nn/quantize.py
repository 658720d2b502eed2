"""quantize_model: a CPU float32 model turned, in place, into its int8 or bf16 twin (the one place that knows
what `quantize=` means; ff.from_pretrained and ff.optimize call it).

  "int8": every linear layer (torch.nn.Linear, ff.nn.Linear, transformers' Conv1D) becomes an Int8Linear
          (fastformer.nn.int8_linear: int8 weights per output channel, int8 activations per token). Embeddings,
          norms, attention and the residual stream stay float32.
  "bf16": every parameter and buffer becomes bfloat16; linear layers run oneDNN's bf16 matmul (fp32
          accumulation), and fastformer's norm, softmax and attention kernels keep their statistics in fp32.
A mode this CPU cannot run natively is refused with the missing instructions named (fastformer.nn.cpu_features).
"""
import functools

import torch
from torch import nn

from fastformer.nn import cpu_features
from fastformer.nn.int8_linear import Int8Linear

MODES = ("int8", "bf16")
_DESCRIPTIONS = {
    "int8": "int8 weights per output channel, int8 activations per token, int32 accumulation",
    "bf16": "bfloat16 weights and activations, fp32 accumulation and norm/softmax statistics",
}


def describe(quantize: str) -> str:
    """One line for a quantized model's repr."""
    return f"quantization={quantize!r}: {_DESCRIPTIONS[quantize]}"


def check_mode(quantize) -> None:
    """ValueError for a value that is not a mode, RuntimeError naming what this CPU lacks for a valid one."""
    if quantize is not None and quantize not in MODES:
        raise ValueError(f"quantize must be one of {MODES} or None, got {quantize!r}")
    if quantize is not None:
        missing = cpu_features.missing_for(quantize)
        if missing is not None:
            raise RuntimeError(f"quantize={quantize!r} cannot run on this CPU: {missing}. Use quantize=None "
                               "(float32) here.")


def _linear_weight_and_bias(module):
    """(weight [out, in], bias) of a linear layer, or None for any other module. transformers' Conv1D (GPT-2)
    stores its weight as [in, out]."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        return module.weight.t(), module.bias
    return None


def _to_int8(model: nn.Module) -> int:
    replaced = {}  # id(float module) -> (the float module, kept alive so its id stays unique; its Int8Linear)

    def visit(parent):
        for name, child in list(parent.named_children()):
            linear = _linear_weight_and_bias(child)
            if linear is None:
                visit(child)
                continue
            if id(child) not in replaced:
                replaced[id(child)] = (child, Int8Linear.from_float(*linear))
            setattr(parent, name, replaced[id(child)][1])

    visit(model)
    return len(replaced)


def check_model(model: nn.Module, quantize: str) -> None:
    """check_mode, then: the model is a CPU float32 one (what quantize_model starts from)."""
    check_mode(quantize)
    if quantize is None:
        raise ValueError(f"quantize must be one of {MODES}, got None")
    if getattr(model, "quantization", None) is not None:
        raise ValueError(f"{type(model).__name__} is already quantized ({model.quantization!r})")
    wrong = {(p.device.type, p.dtype) for p in model.parameters()} - {("cpu", torch.float32)}
    if wrong:
        raise ValueError(f"quantize={quantize!r} starts from a CPU float32 model, got parameters "
                         f"{sorted(f'{d} {t}' for d, t in wrong)}")


def quantize_model(model: nn.Module, quantize: str) -> dict:
    """Turns a CPU float32 `model` into its `quantize` twin in place; the model's repr and its `quantization`
    attribute say which. Returns what changed: {"int8_linear": count} or {"bf16_model": 1}."""
    check_model(model, quantize)
    if quantize == "int8":
        changed = {"int8_linear": _to_int8(model)}
        if not changed["int8_linear"]:
            raise ValueError(f"quantize='int8': {type(model).__name__} has no linear layers to quantize")
    else:
        model.to(torch.bfloat16)
        changed = {"bf16_model": 1}
    model.quantization = quantize
    model.extra_repr = functools.partial(describe, quantize)  # a partial, not a lambda: torch.save pickles it
    return changed
