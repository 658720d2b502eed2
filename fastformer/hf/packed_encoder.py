"""Padding removal in optimized transformers encoders: a padded batch is packed once ([B, S, hidden] ->
[1, T, hidden]), every layer runs unchanged on the T real tokens, the fastformer attention function runs varlen
attention from the PackedBatch it gets in kwargs (with T5's relative bias in the kernel), and the encoder unpacks
once, with zeros at the padded positions. transformers computes the padded queries too, so only encoders whose
padded outputs nothing downstream reads are packed:

  - the encoder body of sequence-classification / multiple-choice BERT, RoBERTa and DistilBERT models
    (POOLED_HEADS: they read the first token); the body gets embeddings and transformers' mask, and packs them;
  - the encoder stack of T5 / BART / Marian generation models (GENERATION_MODELS): the decoder cross-attends
    through the encoder's padding mask, so logits and generate() tokens are those of the dense encoder. The stack
    gets input ids and the 2-D mask; its position embeddings see the padded layout, and its first layer packs.
    Visible: the encoder's own output at padded positions is zeros (encoder_last_hidden_state, or
    model.get_encoder()(...) called directly), where transformers gives the values it computed there.

Every other call runs dense, unchanged: no padding (or a row with holes), a user's 4-D mask, hidden states or
attention maps requested, cross-attention inputs, another attention implementation, torch.compile, and layer drop
in training (the first layer, which packs, could be skipped).
"""
import torch
# What each model class records for output_hidden_states / output_attentions, keyed by str(class) (a dict in
# transformers 5.17, a dict subclass keyed the same way in 5.25); a packing subclass registers its parent's entry.
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from fastformer.hf.attention import _COMPACT_MASK_DTYPE, ATTENTION_NAME, _active_collector
from fastformer.models.packing import PackedBatch


def _encoder_packing(attention_mask):
    collected = _active_collector.get()
    if attention_mask is None or attention_mask.dtype != _COMPACT_MASK_DTYPE or collected:
        return None  # no padding, a user's 4-D mask, or hidden states / maps requested: the dense path
    return PackedBatch.from_mask(attention_mask[:, 0, 0, :].view(torch.bool))


def packed_encoder_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertEncoder, RobertaEncoder, DistilBERT's Transformer: hidden_states [B, S, hidden] from the embeddings and
    transformers' mask (ours: uint8 [B, 1, 1, S] when padded)."""
    unpacked = self._fastformer_unpacked_class.forward
    packed = None if args or kwargs.get("encoder_hidden_states") is not None else _encoder_packing(attention_mask)
    if packed is None:
        return unpacked(self, hidden_states, attention_mask, *args, **kwargs)
    out = unpacked(self, packed.pack(hidden_states)[None], None, fastformer_packed=packed, **kwargs)  # [1, T, hidden]
    out.last_hidden_state = packed.unpack(out.last_hidden_state[0])
    return out


def _stack_packing(stack, attention_mask, kwargs):
    """What capture_outputs inside the stack's forward will collect is decided from kwargs and config as it does."""
    requested = any(kwargs.get(f"output_{name}", getattr(stack.config, f"output_{name}", False))
                    for name in ("hidden_states", "attentions"))
    layer_drop = stack.training and getattr(stack, "layerdrop", 0.0) > 0.0
    if (attention_mask is None or attention_mask.dim() != 2 or requested or layer_drop
            or stack.config._attn_implementation != ATTENTION_NAME):
        return None
    return PackedBatch.from_mask(attention_mask.bool())


def packed_stack_forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
    """T5Stack (as an encoder), BartEncoder, MarianEncoder: input ids (or inputs_embeds) and a 2-D mask [B, S]. The
    stack runs with no mask and the PackedBatch in kwargs; its first layer packs (packing_first_layer_forward)."""
    unpacked = self._fastformer_unpacked_class.forward
    packed = _stack_packing(self, attention_mask, kwargs)
    if packed is None:
        return unpacked(self, input_ids, attention_mask, *args, **kwargs)
    return_dict = kwargs.pop("return_dict", getattr(self.config, "return_dict", True))
    out = unpacked(self, input_ids, None, *args, fastformer_packed=packed, **kwargs)
    out.last_hidden_state = packed.unpack(out.last_hidden_state[0])  # [1, T, hidden] -> [B, S, hidden]
    return out if return_dict else out.to_tuple()


def packing_first_layer_forward(self, hidden_states, *args, **kwargs):
    """The first layer of a packed stack: packs the embeddings [B, S, hidden] -> [1, T, hidden] when its stack
    passes a PackedBatch, after the stack added its position embeddings in the padded layout."""
    packed = kwargs.get("fastformer_packed")
    if packed is not None:
        hidden_states = packed.pack(hidden_states)[None]
    return self._fastformer_unpacked_class.forward(self, hidden_states, *args, **kwargs)


_PACKED_CLASSES = {}  # (transformers class, packing forward) -> its packing subclass


def packed_class(cls: type, forward) -> type:
    """The subclass of `cls` whose forward is `forward` (made once per class, keeps the class name)."""
    if (cls, forward) not in _PACKED_CLASSES:
        _PACKED_CLASSES[cls, forward] = type(cls.__name__, (cls,), {
            "forward": forward, "_fastformer_unpacked_class": cls, "__module__": __name__,
            "__qualname__": f"packed_class({cls.__qualname__})"})
    return _PACKED_CLASSES[cls, forward]


def _swap(module, forward) -> int:
    if type(module) in _PACKED_CLASSES.values():
        return 0
    module.__class__ = packed_class(type(module), forward)
    if hasattr(module, "_can_record_outputs"):  # a PreTrainedModel: capture_outputs finds what it records by class
        dict.__setitem__(_CAN_RECORD_REGISTRY, str(type(module)), module._can_record_outputs)
    return 1


# Heads whose outputs never show a padded position (they read the pooled first token): elsewhere the caller sees
# last_hidden_state / logits at padded positions, which transformers computes and packing does not.
POOLED_HEADS = ("ForSequenceClassification", "ForMultipleChoice")
PACKED_ENCODERS = {"bert": "BertEncoder", "roberta": "RobertaEncoder", "distilbert": "Transformer"}
# Encoder-decoder generation models: the decoder reads the encoder through its padding mask.
GENERATION_MODELS = ("T5ForConditionalGeneration", "BartForConditionalGeneration", "MarianMTModel")
STACK_LAYERS = {"T5Stack": "block", "BartEncoder": "layers", "MarianEncoder": "layers"}  # stack -> its layer list


def pack_encoders(model, everywhere: bool = False) -> int:
    """Moves the encoder of a model whose outputs show no padded position (every model with an encoder when
    `everywhere`: padded positions of its outputs then come from zeros) to its packing subclass; returns how many
    encoders now pack. Causal BERT-style decoders (config.is_decoder) never pack."""
    name = type(model).__name__
    stack = model.get_encoder()
    if type(stack).__name__ in STACK_LAYERS and (everywhere or name in GENERATION_MODELS):
        _swap(getattr(stack, STACK_LAYERS[type(stack).__name__])[0], packing_first_layer_forward)
        return _swap(stack, packed_stack_forward)
    if getattr(model.config, "is_decoder", False) or not (everywhere or name.endswith(POOLED_HEADS)):
        return 0
    encoder_class = PACKED_ENCODERS.get(model.config.model_type)
    return sum(_swap(module, packed_encoder_forward) for module in model.modules()
               if type(module).__name__ == encoder_class)
