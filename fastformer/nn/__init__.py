"""Drop-in modules that subclass their torch.nn counterparts and run fastformer ops."""
from fastformer.nn.int8_linear import Int8Linear
from fastformer.nn.linear import Linear
from fastformer.nn.multihead_attention import MultiheadAttention
from fastformer.nn.norm import LayerNorm, RMSNorm
from fastformer.nn.softmax import Softmax
from fastformer.nn.transformer_layer import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = ["Int8Linear", "LayerNorm", "Linear", "MultiheadAttention", "RMSNorm", "Softmax", "TransformerDecoderLayer",
           "TransformerEncoderLayer"]
