"""Public functional ops. Each op's module holds its registration, autograd and `<op>_ref` reference."""
from fastformer.ops.attention import T5RelativeBias, attention, attention_ref
from fastformer.ops.decode_block import decode_block, decode_block_ref
from fastformer.ops.encoder_block import encoder_block, encoder_block_ref
from fastformer.ops.gemv import gemv, gemv_int8, gemv_int8_ref, gemv_ref
from fastformer.ops.layer_norm import layer_norm, layer_norm_ref
from fastformer.ops.rms_norm import rms_norm, rms_norm_ref
from fastformer.ops.softmax import softmax, softmax_ref
from fastformer.ops.varlen_attention import varlen_attention, varlen_attention_ref

__all__ = ["T5RelativeBias", "attention", "attention_ref", "decode_block", "decode_block_ref", "encoder_block",
           "encoder_block_ref", "gemv", "gemv_int8", "gemv_int8_ref", "gemv_ref", "layer_norm", "layer_norm_ref",
           "rms_norm", "rms_norm_ref", "softmax", "softmax_ref", "varlen_attention", "varlen_attention_ref"]
