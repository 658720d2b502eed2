"""T5 on fastformer's kernels: the relative position bias in-kernel, and T5LayerNorm as an ff.nn.RMSNorm.

Relative bias (patched per T5Attention instance):

T5Attention.compute_bias materializes [1, H, Sq, Sk] in the first layer of each stack and every later layer
reuses it. On an optimized model the instance's compute_bias returns a T5RelativeBias instead (a table and a
bucket rule the attention kernel evaluates per score), which T5 passes along as its position_bias unchanged.
The kernel aligns queries bottom-right (query i at key position i + Sk - Sq), which is T5's alignment when the
cache holds exactly the past tokens (DynamicCache); any other offset (a static cache), or a model whose attention
was switched back to another implementation, gets T5's dense bias.
"""
import types

from fastformer import ops
from fastformer.nn.norm import RMSNorm
from fastformer.ops._t5_bias import T5RelativeBias


def _relative_bias(self, query_length, key_length, device=None, past_seen_tokens=0):
    from fastformer.hf.attention import ATTENTION_NAME  # imports transformers, loaded by now (a T5 forward)

    aligned = isinstance(past_seen_tokens, int) and past_seen_tokens + query_length == key_length
    if not aligned or self.config._attn_implementation != ATTENTION_NAME:  # e.g. set back to "sdpa" later
        return type(self).compute_bias(self, query_length, key_length, device, past_seen_tokens)
    return T5RelativeBias(self.relative_attention_bias.weight, self.relative_attention_num_buckets,
                          self.relative_attention_max_distance, bidirectional=not self.is_decoder)


def patch_t5_attention(module, is_cross_attention: bool) -> bool:
    """Puts the relative bias of one T5Attention on the kernel path; True if it had a bias table to move.

    Cross-attention has no relative bias: T5 hands it an all-zeros [1, H, Sq, Sk] position_bias, which the
    fastformer attention function skips for modules marked here.
    """
    if is_cross_attention:
        module._fastformer_zero_position_bias = True
    if not module.has_relative_attention_bias:
        return False
    module.compute_bias = types.MethodType(_relative_bias, module)
    return True


class T5RMSNorm(RMSNorm):
    """ff.nn.RMSNorm with T5LayerNorm's dtype rule: with a weight of another dtype than the input, normalize in the
    input's dtype and return the weight's. T5 keeps `wo` in fp32 when loaded in fp16, so the residual stream
    reaching an fp16 norm is fp32; casting it to fp16 before normalizing could overflow."""

    @classmethod
    def from_t5(cls, module, backend=None) -> "T5RMSNorm":
        weight = module.weight
        norm = cls(weight.shape[0], eps=module.variance_epsilon, device=weight.device, dtype=weight.dtype,
                   backend=backend)
        norm.weight = weight  # the same Parameter: state_dict key "weight", optimizers and tying unchanged
        return norm

    def forward(self, x, residual=None):
        if x.dtype == self.weight.dtype:
            return super().forward(x, residual)
        if residual is not None:
            raise ValueError(f"residual needs x in the weight's dtype {self.weight.dtype}, got {x.dtype}")
        return ops.rms_norm(x, self.weight.to(x.dtype), self.eps, backend=self.backend).to(self.weight.dtype)
