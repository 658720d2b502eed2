"""fastformer as a Hugging Face attention implementation: registered under ATTENTION_NAME in transformers'
AttentionInterface (the attention function) and AttentionMaskInterface (the mask builder), so a model whose
config._attn_implementation is ATTENTION_NAME runs ff.ops.attention. Registering adds an entry to the two
registries; no transformers class is modified, and models that do not select the name are untouched.

Masks. transformers builds one 4-D mask per forward with the registered mask builder and hands it to every
attention call. A dense [B, 1, Sq, Sk] mask makes the kernel read a bias per score, while a key padding mask
plus the kernel's own causal rule reads B x Sk bools. So `padding_mask_builder` returns, for the plain causal
and bidirectional masks (the only ones these models build without extra mask functions):
  - None when there is no 2-D padding mask: causality then comes from the module (module.is_causal, or the
    is_causal keyword), exactly as transformers' own SDPA path decides it;
  - a compact uint8 [B, 1, 1, Sk] key padding mask (1 = attend), with causality again from the module (None
    instead when nothing is padded and the mask is on the CPU, where that check costs no device sync). uint8
    marks it as ours: a user's own 4-D mask is bool or float and is applied as given, never with added causality.
Anything else (packed sequences, extra mask functions, a cache whose keys are not bottom-right aligned with the
queries, e.g. a static cache) gets transformers' full bool mask, passed to the kernel as attn_bias.

Attention maps. The kernel never forms the [B, H, Sq, Sk] probabilities. A forward asked for them
(output_attentions=True: transformers' output recorder then collects "attentions" / "cross_attentions") runs the
family's own eager attention function instead, on the additive mask eager attention would get, so the maps and
outputs are transformers' eager ones; a one-time UserWarning says that such calls are not fused.
"""
import sys
import warnings

import torch
from transformers import masking_utils
from transformers.modeling_utils import AttentionInterface

from fastformer import ops
from fastformer.ops.attention import attention
from fastformer.ops._t5_bias import T5RelativeBias

try:  # the output recorder behind output_attentions (transformers >= 5.20; earlier, utils.generic)
    from transformers.utils.output_capturing import _active_collector
except ImportError:
    from transformers.utils.generic import _active_collector

ATTENTION_NAME = "fastformer"

_COMPACT_MASK_DTYPE = torch.uint8


def _aligned_bottom_right(q_length, kv_length, q_offset, kv_offset) -> bool:
    """Whether query i sits at key position i + kv_length - q_length (what the kernel's causal assumes)."""
    return (isinstance(q_offset, int) and isinstance(kv_offset, int)
            and q_offset + q_length == kv_offset + kv_length)


def padding_mask_builder(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                         mask_function=masking_utils.causal_mask_function, attention_mask=None, **kwargs):
    """AttentionMaskInterface entry: None, a compact uint8 [B, 1, 1, Sk] key padding mask, or SDPA's full mask."""
    causal = mask_function is masking_utils.causal_mask_function
    bidirectional = mask_function is masking_utils.bidirectional_mask_function
    if bidirectional or (causal and _aligned_bottom_right(q_length, kv_length, q_offset, kv_offset)):
        if attention_mask is None:
            return None
        padding = masking_utils.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        padding = padding[:, kv_offset:kv_offset + kv_length]  # [B, Sk]
        if padding.device.type == "cpu" and not torch.compiler.is_compiling() and bool(padding.all()):
            return None  # nothing padded: the kernel's unmasked path (a check that costs a device sync off CPU)
        return padding.to(_COMPACT_MASK_DTYPE)[:, None, None, :]  # [B, 1, 1, Sk]
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    return masking_utils.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                                   kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                                   **kwargs)


def _with_position_bias(module, position_bias, bias, seq_q: int, seq_k: int, dtype):
    """T5's position_bias folded into attn_bias. Our T5RelativeBias stays in-kernel unless a full mask must be
    added to it (fallback masks only); T5's cross-attention passes an all-zeros tensor, which is dropped."""
    if position_bias is None or getattr(module, "_fastformer_zero_position_bias", False):
        return bias
    if bias is None:
        return position_bias
    if isinstance(position_bias, T5RelativeBias):
        position_bias = position_bias.materialize(seq_q, seq_k)  # [1, H, Sq, Sk]
    if bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device).masked_fill_(~bias, float("-inf"))
    return position_bias + bias


def _attention_maps_requested() -> bool:
    collected = _active_collector.get()
    return collected is not None and ("attentions" in collected or "cross_attentions" in collected)


_warned_about_maps = []


def _eager_additive_mask(bias, key_padding_mask, causal: bool, seq_q: int, seq_k: int, query):
    """The float mask transformers' eager attention gets (0 = attend, dtype min = not), [B or 1, 1, Sq, Sk]."""
    if bias is not None and bias.dtype != torch.bool:
        return bias
    keep = torch.ones((1, 1, seq_q, seq_k), dtype=torch.bool, device=query.device) if bias is None else bias
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    if causal:
        keep = keep & torch.ones(seq_q, seq_k, dtype=torch.bool, device=query.device).tril(seq_k - seq_q)
    return torch.zeros(keep.shape, dtype=query.dtype, device=query.device).masked_fill_(
        ~keep, torch.finfo(query.dtype).min)


def _eager_attention_with_maps(module, query, key, value, mask, dropout, scaling, position_bias, **kwargs):
    """The module's family's eager_attention_forward (transformers' reference): ([B, Sq, H, D], [B, H, Sq, Sk])."""
    if not _warned_about_maps:
        _warned_about_maps.append(True)
        warnings.warn("fastformer: output_attentions=True runs transformers' eager attention (not fused) for that "
                      "call; the kernel never forms the attention maps", UserWarning, stacklevel=2)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if isinstance(position_bias, T5RelativeBias):
        position_bias = position_bias.materialize(query.shape[2], key.shape[2])  # [1, H, Sq, Sk]
    if position_bias is not None:
        kwargs["position_bias"] = position_bias
    return eager(module, query, key, value, mask, dropout=dropout, scaling=scaling, **kwargs)


def fastformer_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                 is_causal=None, position_bias=None, **kwargs):
    """AttentionInterface entry. query [B, H, Sq, D], key/value [B, Hkv, Sk, D] -> ([B, Sq, H, D], None), or with
    the attention maps [B, H, Sq, Sk] from eager attention when the forward was asked for them."""
    packed = kwargs.pop("fastformer_packed", None)
    if packed is not None:  # [1, H, T, D]: the real tokens of a padded batch (fastformer.hf.packed_encoder)
        if position_bias is not None and not isinstance(position_bias, T5RelativeBias):
            raise ValueError("a packed batch takes T5's position_bias only as a T5RelativeBias (fastformer.hf.t5), "
                             f"got {type(position_bias).__name__}")
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
        out = ops.varlen_attention(q, k, v, packed.cu_seqlens, packed.cu_seqlens, packed.max_seqlen,
                                   packed.max_seqlen, attn_bias=position_bias, scale=scaling, dropout_p=dropout,
                                   backend=getattr(module, "_fastformer_backend", None))
        return out[None], None  # [1, T, H, D]
    seq_q, seq_k = query.shape[2], key.shape[2]
    causal_module = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    bias, key_padding_mask, causal = None, None, False
    if attention_mask is None or attention_mask.dtype == _COMPACT_MASK_DTYPE:
        causal = bool(causal_module) and seq_q > 1
        if attention_mask is not None:
            if attention_mask.shape[-1] != seq_k:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} keys, the keys have {seq_k}")
            key_padding_mask = attention_mask[:, 0, 0, :].view(torch.bool)  # [B, Sk], 0/1 bytes reread as bools
    else:
        bias = attention_mask  # bool (True = attend) or additive float, [B or 1, 1 or H, Sq, Sk]
    if _attention_maps_requested():
        mask = _eager_additive_mask(bias, key_padding_mask, causal, seq_q, seq_k, query)
        return _eager_attention_with_maps(module, query, key, value, mask, dropout, scaling, position_bias, **kwargs)
    bias = _with_position_bias(module, position_bias, bias, seq_q, seq_k, query.dtype)
    backend = getattr(module, "_fastformer_backend", None)
    out = attention(query, key, value, attn_bias=bias, key_padding_mask=key_padding_mask, causal=causal,
                    scale=scaling, dropout_p=dropout, backend=backend)  # [B, H, Sq, D]
    return out.transpose(1, 2), None


def register() -> str:
    """Adds ATTENTION_NAME to transformers' attention and mask registries (idempotent); returns the name."""
    AttentionInterface.register(ATTENTION_NAME, fastformer_attention_forward)
    masking_utils.AttentionMaskInterface.register(ATTENTION_NAME, padding_mask_builder)
    return ATTENTION_NAME
