"""Forwards that fuse a block's residual add into the LayerNorm after it (ff.nn.LayerNorm(x, residual=r) returns
(LN(x + r), x + r) in one pass: one read of x and r instead of an add kernel plus a norm kernel).

Each forward computes what the transformers forward of that block computes (5.17 to 5.25 have the same bodies),
in the same order, for the blocks whose norm follows the add inside the block (post-norm BERT-style outputs,
DistilBERT, BART/Marian layers; GPT-2's ln_2). fastformer.hf.optimize moves a block instance, after its LayerNorms
became ff.nn.LayerNorm, to `fused_class(type(block))`: a subclass whose class-level forward is the fused one.
A class, not a forward bound to the instance: transformers' GradientCheckpointingLayer wraps the class-level
forward of every subclass in its checkpointing (gradient_checkpointing_enable() must keep recomputing the fused
blocks), and module hooks see the same module. The classes in transformers are not modified. Pre-norm T5 and
GPT-2's ln_1 take the residual from the previous block, outside any one module, so they are not fused.
"""
import torch
import torch.nn.functional as F


def _add_norm(norm, x, residual):
    """norm(x + residual) from one fused pass (post-norm blocks do not need the sum itself)."""
    return norm(x, residual=residual)[0]


def dense_dropout_add_norm_forward(self, hidden_states, input_tensor):
    """BertSelfOutput, BertOutput, RobertaSelfOutput, RobertaOutput: LayerNorm(dropout(dense(h)) + input)."""
    return _add_norm(self.LayerNorm, self.dropout(self.dense(hidden_states)), input_tensor)


def distilbert_block_forward(self, hidden_states, attention_mask=None, **kwargs):
    """DistilBERT TransformerBlock."""
    attention_output, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
    attention_output = _add_norm(self.sa_layer_norm, attention_output, hidden_states)
    return _add_norm(self.output_layer_norm, self.ffn(attention_output), attention_output)


def gpt2_block_forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                       encoder_attention_mask=None, use_cache=False, **kwargs):
    """GPT2Block: ln_2 takes the attention residual add; with cross-attention, the block's own forward. The cache
    comes second, positionally, under either name."""
    cache = kwargs.pop("past_key_values", cache)
    if encoder_hidden_states is not None:  # the transformers class's forward (not checkpointed twice: it is inner)
        return self._fastformer_unfused_class.forward(self, hidden_states, cache, attention_mask,
                                                      encoder_hidden_states, encoder_attention_mask, use_cache,
                                                      **kwargs)
    # The cache goes second, positionally, as GPT2Attention takes it under either name (a per-class lookup of the
    # name made torch.compile warn about tracing through its cache).
    attn_output, _ = self.attn(self.ln_1(hidden_states), cache, attention_mask=attention_mask, use_cache=use_cache,
                               **kwargs)
    normed, hidden_states = self.ln_2(attn_output, residual=hidden_states)
    return hidden_states + self.mlp(normed)


def _dropout_add_norm(self, norm, x, residual):
    return _add_norm(norm, F.dropout(x, p=self.dropout, training=self.training), residual)


def _feed_forward_add_norm(self, hidden_states):
    """BART/Marian layers' fc1 -> activation -> fc2 with dropouts, then final_layer_norm(residual + out)."""
    out = F.dropout(self.activation_fn(self.fc1(hidden_states)), p=self.activation_dropout, training=self.training)
    return _dropout_add_norm(self, self.final_layer_norm, self.fc2(out), hidden_states)


def post_norm_encoder_layer_forward(self, hidden_states, attention_mask, **kwargs):
    """BartEncoderLayer, MarianEncoderLayer."""
    attn_output, _ = self.self_attn(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = _dropout_add_norm(self, self.self_attn_layer_norm, attn_output, hidden_states)
    hidden_states = _feed_forward_add_norm(self, hidden_states)
    if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
        clamp_value = torch.finfo(hidden_states.dtype).max - 1000
        hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
    return hidden_states


def post_norm_decoder_layer_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                                    encoder_attention_mask=None, use_cache=True, **kwargs):
    """BartDecoderLayer, MarianDecoderLayer. The cache reaches the attentions in kwargs under the caller's name
    (callers pass it by keyword: "cache" from transformers 5.25, "past_key_values" before)."""
    attn_output, _ = self.self_attn(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = _dropout_add_norm(self, self.self_attn_layer_norm, attn_output, hidden_states)
    if encoder_hidden_states is not None:
        attn_output, _ = self.encoder_attn(hidden_states, key_value_states=encoder_hidden_states,
                                           attention_mask=encoder_attention_mask, **kwargs)
        hidden_states = _dropout_add_norm(self, self.encoder_attn_layer_norm, attn_output, hidden_states)
    return _feed_forward_add_norm(self, hidden_states)


# Block class name -> (fused forward, the LayerNorm attributes it fuses).
FUSED_FORWARDS = {
    "BertSelfOutput": (dense_dropout_add_norm_forward, ("LayerNorm",)),
    "BertOutput": (dense_dropout_add_norm_forward, ("LayerNorm",)),
    "RobertaSelfOutput": (dense_dropout_add_norm_forward, ("LayerNorm",)),
    "RobertaOutput": (dense_dropout_add_norm_forward, ("LayerNorm",)),
    "TransformerBlock": (distilbert_block_forward, ("sa_layer_norm", "output_layer_norm")),
    "GPT2Block": (gpt2_block_forward, ("ln_2",)),
    "BartEncoderLayer": (post_norm_encoder_layer_forward, ("self_attn_layer_norm", "final_layer_norm")),
    "MarianEncoderLayer": (post_norm_encoder_layer_forward, ("self_attn_layer_norm", "final_layer_norm")),
    "BartDecoderLayer": (post_norm_decoder_layer_forward,
                         ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")),
    "MarianDecoderLayer": (post_norm_decoder_layer_forward,
                           ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")),
}


_FUSED_CLASSES = {}  # transformers block class -> its fused subclass


def is_fused(module) -> bool:
    """A fused block, also after a later subclass (padding removal's first layer, fastformer.hf.packed_encoder)."""
    return isinstance(module, tuple(_FUSED_CLASSES.values()))


def fused_class(cls: type) -> type:
    """The subclass of the transformers block class `cls` whose forward is the fused one (made once per class). It
    keeps the class name (transformers refers to blocks by name, e.g. _no_split_modules)."""
    if cls not in _FUSED_CLASSES:
        forward, _ = FUSED_FORWARDS[cls.__name__]
        _FUSED_CLASSES[cls] = type(cls.__name__, (cls,), {
            "forward": forward, "_fastformer_unfused_class": cls, "__module__": __name__,
            "__qualname__": f"fused_class({cls.__qualname__})",
            "__doc__": f"{cls.__name__} with the residual add fused into its LayerNorms ({forward.__name__})."})
    return _FUSED_CLASSES[cls]
