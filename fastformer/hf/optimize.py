"""optimize() for Hugging Face transformers models of the supported families (the HF half of ff.optimize).

Per model instance, never per class:
  - attention: every config object the model's modules read (T5's stacks hold their own copies) selects the
    "fastformer" attention implementation (fastformer.hf.attention, registered in transformers' registries);
    the chosen backend is stored on each attention module. config._attn_implementation is not serialized, so
    save_pretrained writes the config it would have written before. A model built with an implementation other
    than transformers' default ("eager", "flex_attention", ...) keeps it (with a note); "sdpa", the default, is
    replaced. model.set_attn_implementation(...) afterwards behaves as transformers documents, "fastformer"
    included; optimization_report counts attention only while the model runs it;
  - T5: the relative position bias stays in the kernel (fastformer.hf.t5);
  - norms: nn.LayerNorm -> ff.nn.LayerNorm, T5LayerNorm -> ff.nn.RMSNorm (fastformer.hf.t5.T5RMSNorm), sharing
    the parameters (same keys);
  - fused add & norm: the blocks in fastformer.hf.fused_blocks move to a subclass of their class whose forward
    hands the residual add to the norm (so gradient checkpointing still wraps it);
  - padding removal: in sequence-classification / multiple-choice BERT, RoBERTa and DistilBERT models (no padded
    position is visible in their outputs) and in T5 / BART / Marian generation models (the decoder reads the
    encoder through its padding mask; the encoder's own output is zeros at padded positions) the encoder moves to
    a subclass that runs a padded batch on its real tokens only (fastformer.hf.packed_encoder; dense when hidden
    states or attention maps are requested, or a 4-D mask). pack_padding=True: every encoder of these families
    (bare models, per-token heads), whose outputs at padded positions then come from zeros; False: none.
"""
import sys
from collections import Counter

from torch import nn

from fastformer.hf.fused_blocks import FUSED_FORWARDS, fused_class, is_fused
from fastformer.hf.t5 import T5RMSNorm, patch_t5_attention
from fastformer.nn.norm import LayerNorm
from fastformer.nn.swap import swap_modules

# model_type -> the attention classes that call transformers' AttentionInterface.
SUPPORTED = {
    "bert": ("BertSelfAttention", "BertCrossAttention"),
    "roberta": ("RobertaSelfAttention", "RobertaCrossAttention"),
    "distilbert": ("DistilBertSelfAttention",),
    "gpt2": ("GPT2Attention",),
    "t5": ("T5Attention",),
    "bart": ("BartAttention",),
    "marian": ("MarianAttention",),
}


def is_hf_model(model) -> bool:
    """A transformers PreTrainedModel (transformers is only imported if the caller already did)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def hf_submodels(model: nn.Module) -> list:
    """The outermost transformers models inside a plain torch.nn tree (e.g. a sentence-embedding wrapper)."""
    found = []
    for child in model.children():
        found.extend([child] if is_hf_model(child) else hf_submodels(child))
    return found


def unsupported_reason(model) -> str | None:
    """Why ff.optimize leaves this transformers model unchanged, or None if it can optimize it."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED:
        return f"model_type {model_type!r} is not one of the supported families {sorted(SUPPORTED)}"
    return None


# The implementation transformers picks for these families when none is asked for (models built with an explicit
# "sdpa" cannot be told apart from it: both are replaced).
_DEFAULT_ATTENTION = (None, "sdpa")


def runs_fastformer_attention(model) -> bool:
    from fastformer.hf.attention import ATTENTION_NAME  # transformers is loaded: model is a transformers model

    return model.config._attn_implementation == ATTENTION_NAME


def _use_fastformer_attention(model, backend) -> tuple[Counter, list[str]]:
    """Prepares every attention module of `model` for the fastformer implementation (modules already prepared by
    an earlier call are left as they are and not counted again) and selects it in every config the modules read,
    unless the model runs an implementation the user chose (not transformers' default): then it stays, with a
    note, and model.set_attn_implementation("fastformer") selects ours later."""
    from fastformer.hf.attention import register  # imports transformers, which a torch.nn-only user may lack

    counts, notes = Counter(), []
    name = register()
    attention_classes = SUPPORTED[model.config.model_type]
    configs = {id(model.config): model.config}
    for path, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
        if type(module).__name__ not in attention_classes or hasattr(module, "_fastformer_backend"):
            continue
        module._fastformer_backend = backend
        counts["attention"] += 1
        if model.config.model_type == "t5":
            counts["t5_relative_bias"] += patch_t5_attention(module, path.endswith("EncDecAttention"))
    chosen = model.config._attn_implementation
    if chosen not in _DEFAULT_ATTENTION + (name,):
        notes.append(f"attention stays on the {chosen!r} implementation the model was built with (norms are "
                     f"fused); model.set_attn_implementation({name!r}) runs fastformer's attention")
        return counts, notes
    for config in configs.values():
        config._attn_implementation = name
    return counts, notes


def _fuse_add_norms(model) -> int:
    fused = 0
    for module in model.modules():
        entry = FUSED_FORWARDS.get(type(module).__name__)
        if entry is None or is_fused(module):
            continue
        norms = [getattr(module, n, None) for n in entry[1]]
        if not all(isinstance(n, LayerNorm) for n in norms if n is not None):
            continue
        module.__class__ = fused_class(type(module))
        fused += sum(n is not None for n in norms)
    return fused


def optimize_hf(model: nn.Module, backend=None, linear: bool = False,
                pack_padding: bool | None = None) -> tuple[Counter, list[str]]:
    """Puts fastformer's kernels into a supported transformers model in place; returns (counts, notes): what
    was replaced per kind, and why a part was left as it was. pack_padding: see ff.optimize."""
    counts, notes = _use_fastformer_attention(model, backend)
    counts.update(swap_modules(model, ("layer_norm", "linear") if linear else ("layer_norm",), backend))
    if model.config.model_type == "t5":
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        t5_norms = {T5LayerNorm: (T5RMSNorm.from_t5, "rms_norm")}
        counts.update(swap_modules(model, ("rms_norm",), backend, swaps=t5_norms))
    counts["fused_add_norm"] += _fuse_add_norms(model)
    if runs_fastformer_attention(model) and pack_padding is not False:
        from fastformer.hf.packed_encoder import pack_encoders

        counts["packed_encoder"] += pack_encoders(model, everywhere=bool(pack_padding))
    return +counts, notes
