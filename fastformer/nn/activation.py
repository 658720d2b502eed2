"""The activation functions the models name in their configs, and how oneDNN fuses each into a matmul.

Every stateless activation a Hugging Face config can name (transformers' ACT2FN) runs, so a valid config
never fails on its activation: `activation_name` maps transformers' names to ours. The tanh-GELU variants
(gelu_new, gelu_fast, gelu_accurate, gelu_pytorch_tanh, gelu_python_tanh) are one function written
differently and become "gelu_tanh", gelu_python is "gelu" (erf), swish is "silu"; prelu and xielu carry
learned weights and are refused.
"""
import math

import torch
import torch.nn.functional as F


def _laplace(x, mu=0.707107, sigma=0.282095):
    """MEGA's Laplace activation (transformers' LaplaceActivation defaults)."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,  # nn.LeakyReLU's default slope, 0.01
    "mish": F.mish,
    "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "laplace": _laplace,
    "linear": lambda x: x,
}
HF_ALIASES = {"gelu_python": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh",
              "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh", "swish": "silu"}
WEIGHTED = ("prelu", "xielu")  # transformers activations with parameters of their own

# name -> (oneDNN post-op, its algorithm) for torch.ops.mkldnn._linear_pointwise. Fused, the activation runs on
# the matmul's output tile while it is in cache: BERT-base's unfused GELU was 4.7% of its batch-1 time. The
# other activations run after the matmul.
ONEDNN_POST_OPS = {
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
}


def activation_name(name, field: str = "activation") -> str:
    """Our name for a config's activation `name` (transformers' or ours), else a ValueError naming the field."""
    if name in WEIGHTED:
        raise ValueError(f"{field}={name!r} in config.json is not supported: {name} carries learned weights of its "
                         "own that fastformer's models have no place for")
    if not isinstance(name, str) or name not in {**ACTIVATIONS, **HF_ALIASES}:
        raise ValueError(f"unsupported {field}={name!r} in config.json (supported: "
                         f"{sorted({**ACTIVATIONS, **HF_ALIASES})})")
    return HF_ALIASES.get(name, name)
