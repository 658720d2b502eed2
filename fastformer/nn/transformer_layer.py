"""ff.nn.TransformerEncoderLayer / TransformerDecoderLayer: torch's layers (same constructor, parameters,
state_dict keys and forward signature) whose attention is ff.nn.MultiheadAttention and whose norms are
ff.nn.LayerNorm with the residual add fused into them.

torch's encoder layer has an inference fast path (torch._transformer_encoder_layer_fwd) that reads the weights
directly and never calls the submodules; these layers always take the module path, so our kernels run.
Masks are passed to the attention as given (bool or float, torch's conventions), without torch's conversion
of bool padding masks to float: ff.nn.MultiheadAttention reads a bool padding mask as a [B, S] mask instead
of an additive [B, 1, 1, S] bias. One difference from torch: a query whose every key is masked gives zeros.
"""
from torch import nn

from fastformer.nn._dropin import _DropIn
from fastformer.nn.multihead_attention import MultiheadAttention
from fastformer.nn.norm import LayerNorm


def residual_chain(x, sublayers, norms, norm_first: bool):
    """x through `sublayers`, each with a residual add and its norm (pre-norm: x + f(norm(x)); post-norm:
    norm(x + f(x))), every add that a norm reads fused into that norm."""
    if not norm_first:
        for sublayer, norm in zip(sublayers, norms):
            x = norm(sublayer(x), residual=x)[0]
        return x
    normed = norms[0](x)
    for i, sublayer in enumerate(sublayers):
        out = sublayer(normed)
        if i + 1 == len(sublayers):
            return x + out
        normed, x = norms[i + 1](out, residual=x)


class _FusedLayer(_DropIn):
    """Adoption of a torch layer: its attention modules and LayerNorms become ours, sharing the parameters."""

    _ATTENTIONS: tuple = ()
    _NORMS: tuple = ()

    def __init__(self, *args, backend=None, **kwargs):
        super().__init__(*args, backend=backend, **kwargs)
        self._adopt_children(backend)

    @classmethod
    def from_torch(cls, module, backend=None):
        new = super().from_torch(module, backend)
        new._modules = dict(module._modules)  # our own child table: replacing children leaves `module` as it was
        new._adopt_children(backend)
        return new

    def _adopt_children(self, backend):
        for name in self._ATTENTIONS:
            setattr(self, name, MultiheadAttention.from_torch(getattr(self, name), backend))
        for name in self._NORMS:
            setattr(self, name, LayerNorm.from_torch(getattr(self, name), backend))


class TransformerEncoderLayer(_FusedLayer, nn.TransformerEncoderLayer):
    _ATTENTIONS = ("self_attn",)
    _NORMS = ("norm1", "norm2")

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        def self_attention(x):
            return self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal)

        return residual_chain(src, (self_attention, self._ff_block), (self.norm1, self.norm2), self.norm_first)


class TransformerDecoderLayer(_FusedLayer, nn.TransformerDecoderLayer):
    _ATTENTIONS = ("self_attn", "multihead_attn")
    _NORMS = ("norm1", "norm2", "norm3")

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        def self_attention(x):
            return self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)

        def cross_attention(x):
            return self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal)

        return residual_chain(tgt, (self_attention, cross_attention, self._ff_block),
                              (self.norm1, self.norm2, self.norm3), self.norm_first)
