"""Drop-in modules that subclass their torch.nn counterparts and run fastformer ops."""
from fastformer.nn.norm import LayerNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm"]
