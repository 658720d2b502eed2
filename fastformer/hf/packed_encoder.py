"""Padding removal in optimized transformers encoders (BertEncoder, RobertaEncoder): the encoder packs the
hidden states once ([B, S, hidden] -> [1, T, hidden]), every layer runs unchanged on the T real tokens, the
fastformer attention function runs varlen attention from the PackedBatch it gets in kwargs, and the encoder
unpacks once (zeros at the padded positions, where transformers computes the padded queries too: so only
models whose outputs never show a padded position are packed, POOLED_HEADS)."""
import torch

from fastformer.hf.attention import _COMPACT_MASK_DTYPE, _active_collector
from fastformer.models.packing import PackedBatch


def _packing(attention_mask):
    collected = _active_collector.get()
    if attention_mask is None or attention_mask.dtype != _COMPACT_MASK_DTYPE or collected:
        return None  # no padding, a user's 4-D mask, or hidden states / maps requested: the dense path
    return PackedBatch.from_mask(attention_mask[:, 0, 0, :].view(torch.bool))


def packed_encoder_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                           encoder_attention_mask=None, **kwargs):
    unpacked = self._fastformer_unpacked_class.forward
    packed = None if encoder_hidden_states is not None else _packing(attention_mask)
    if packed is None:
        return unpacked(self, hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, **kwargs)
    out = unpacked(self, packed.pack(hidden_states)[None], None, fastformer_packed=packed, **kwargs)  # [1, T, hidden]
    out.last_hidden_state = packed.unpack(out.last_hidden_state[0])
    return out


_PACKED_CLASSES = {}  # transformers encoder class -> its packing subclass
PACKED_ENCODERS = ("BertEncoder", "RobertaEncoder")


def packed_class(cls: type) -> type:
    """The subclass of `cls` whose forward packs a padded batch (made once per class, keeps the class name)."""
    if cls not in _PACKED_CLASSES:
        _PACKED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "forward": packed_encoder_forward, "_fastformer_unpacked_class": cls, "__module__": __name__,
            "__qualname__": f"packed_class({cls.__qualname__})"})
    return _PACKED_CLASSES[cls]


# Heads whose outputs never show a padded position (they read the pooled first token): elsewhere the caller sees
# last_hidden_state / logits at padded positions, which transformers computes and packing does not.
POOLED_HEADS = ("ForSequenceClassification", "ForMultipleChoice")


def pack_encoders(model) -> int:
    if not type(model).__name__.endswith(POOLED_HEADS):
        return 0
    swapped = 0
    for module in model.modules():
        if type(module).__name__ in PACKED_ENCODERS and type(module) not in _PACKED_CLASSES.values():
            module.__class__ = packed_class(type(module))
            swapped += 1
    return swapped
