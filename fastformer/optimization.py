"""ff.optimize: puts fastformer's kernels into an existing Hugging Face or plain torch.nn model, in place."""
import copy
import warnings
from collections import Counter

import torch
from torch import nn

from fastformer import _backends
from fastformer.hf import optimize as hf_optimize
from fastformer.nn import quantize as nn_quantize, swap

_REPORT_ATTR = "_fastformer_report"


def _cpu_fp32(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def _optimize_hf_models(hf_models, backend, swap_linear: bool, pack_padding) -> tuple[Counter, list[str]]:
    counts, notes = Counter(), []
    for hf_model in hf_models:
        reason = hf_optimize.unsupported_reason(hf_model)
        if reason is not None:
            notes.append(f"{type(hf_model).__name__} left unchanged: {reason}")
            continue
        hf_counts, hf_notes = hf_optimize.optimize_hf(hf_model, backend, linear=swap_linear,
                                                      pack_padding=pack_padding)
        counts.update(hf_counts)
        notes += hf_notes
    return counts, notes


def _swap_torch_modules(model, backend, swap_linear: bool, found_already: bool, skip) -> Counter:
    """The torch.nn swaps outside the transformers models in `skip` (handled by their own path)."""
    counts = swap.swap_modules(model, tuple(k for k in swap.KINDS if k != "linear"), backend, skip=skip)
    if (counts or found_already) and swap_linear:  # Linear alone is no reason to touch a model (an MLP)
        counts.update(swap.swap_modules(model, ("linear",), backend, skip=skip))
    return counts


def optimize(model: nn.Module, *, backend: str | None = None, inplace: bool = True, linear: bool | None = None,
             quantize: str | None = None, pack_padding: bool | None = None):
    """Swaps fastformer's fused kernels into `model` and returns it (the same object unless inplace=False, which
    optimizes a deep copy). Parameters, buffers and state_dict keys stay as they were.

    Hugging Face transformers models of the families in fastformer.hf.optimize.SUPPORTED (BERT, RoBERTa,
    DistilBERT, GPT-2, T5, BART, Marian; any head class): attention runs ff.ops.attention through transformers'
    attention registry (T5's relative bias in-kernel), LayerNorm / T5LayerNorm become ff.nn.LayerNorm / RMSNorm,
    and post-norm residual adds are fused into the norm. generate, save_pretrained (the checkpoint loads in plain
    transformers), training, torch.compile and .to() keep working. Other transformers models are left unchanged.
    Plain torch.nn models: nn.LayerNorm, nn.RMSNorm, nn.Softmax, nn.MultiheadAttention,
    nn.TransformerEncoderLayer / TransformerDecoderLayer anywhere in the tree become their ff.nn drop-ins;
    transformers models inside such a tree (e.g. a sentence-embedding wrapper) get the transformers treatment.

    backend: "triton", "cuda", "cpu", "reference" or None (auto, see fastformer._backends) for every swapped op.
    linear: also swap nn.Linear for ff.nn.Linear (oneDNN prepacked matmul for CPU fp32 inference; plain
      F.linear otherwise). None = when every parameter is CPU fp32 at the time of the call.

    quantize: None, "int8" or "bf16" (fastformer.nn.quantize; CPU float32 models only): after the kernel swaps,
      linear layers (nn.Linear, transformers' Conv1D) become int8 ones, or the whole model bfloat16. A mode the
      CPU cannot run natively is a RuntimeError naming the missing instructions, raised before anything changes.

    pack_padding: padding removal in transformers encoders (fastformer.hf.packed_encoder): a padded batch runs
      its encoder on the real tokens only. None (default): where no output shows a padded position, i.e.
      BERT/RoBERTa/DistilBERT sequence-classification and multiple-choice models, and T5/BART/Marian generation
      models (T5ForConditionalGeneration, BartForConditionalGeneration, MarianMTModel: logits and generate tokens
      are transformers'; their encoder's own output, encoder_last_hidden_state, is zeros at padded positions).
      True: also every other encoder of these families (bare models, per-token heads, T5EncoderModel): hidden
      states at padded positions are zeros, and per-token logits there are the head applied to zeros, where
      transformers computes the padded tokens. False: no padding removal (transformers' values everywhere). Not
      undone by a later call. Causal BERT-style decoders never pack.

    What was replaced, per kind, is `optimization_report(model)`. A model with nothing to replace (or a
    transformers model of another family) gets a UserWarning, not an error. Calling it again on an optimized
    model changes nothing that is already optimized and reports the same.

    Attention implementation: a transformers model running transformers' default ("sdpa") gets "fastformer"; one
    built with another implementation ("eager", "flex_attention", ...) keeps it, with a UserWarning (the norms are
    still fused); model.set_attn_implementation(name) afterwards switches as transformers documents, "fastformer"
    included. output_attentions=True calls run transformers' eager attention (see fastformer.hf.attention).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pack_padding is not None and not isinstance(pack_padding, bool):
        raise TypeError(f"pack_padding must be None, True or False, got {pack_padding!r}")
    if backend is not None and backend not in _backends.BACKENDS:
        raise ValueError(f"backend must be one of {_backends.BACKENDS} or None, got {backend!r}")
    if quantize is not None:
        nn_quantize.check_model(model, quantize)
    if not inplace:
        model = copy.deepcopy(model)
    swap_linear = _cpu_fp32(model) if linear is None else bool(linear)
    if hf_optimize.is_hf_model(model):
        counts, notes = _optimize_hf_models([model], backend, swap_linear, pack_padding)
    else:
        hf_models = hf_optimize.hf_submodels(model)
        counts, notes = _optimize_hf_models(hf_models, backend, swap_linear, pack_padding)
        counts.update(_swap_torch_modules(model, backend, swap_linear, found_already=bool(counts), skip=hf_models))
    if quantize is not None:
        counts.update(nn_quantize.quantize_model(model, quantize))
    report = dict(+(Counter(getattr(model, _REPORT_ATTR, {})) + counts))  # a second call adds only what is new
    setattr(model, _REPORT_ATTR, report)
    for note in notes:
        warnings.warn(f"ff.optimize({type(model).__name__}): {note}", stacklevel=2)
    if not report:
        warnings.warn(f"ff.optimize({type(model).__name__}): found nothing to put fastformer kernels into; "
                      "the model is unchanged", stacklevel=2)
    return model


def optimization_report(model: nn.Module) -> dict:
    """{kind: count} of what ff.optimize replaced in `model`: "attention" (attention modules on ff.ops.attention),
    "t5_relative_bias", "layer_norm", "rms_norm", "fused_add_norm" (norms that now take the residual add),
    "softmax", "multihead_attention", "transformer_encoder_layer", "transformer_decoder_layer", "linear", "int8_linear" / "bf16_model" (quantize=),
    "packed_encoder" (encoders that run padded batches on their real tokens, pack_padding=).
    Kinds with nothing replaced are absent; {} for a model ff.optimize was not called on or found nothing in.
    "attention" and "t5_relative_bias" count the transformers models that run the "fastformer" implementation
    now: after model.set_attn_implementation("sdpa") they are absent, after ...("fastformer") back."""
    report = Counter(getattr(model, _REPORT_ATTR, {}))
    hf_models = [model] if hf_optimize.is_hf_model(model) else hf_optimize.hf_submodels(model)
    for hf_model in hf_models:
        if hf_optimize.unsupported_reason(hf_model) is None and not hf_optimize.runs_fastformer_attention(hf_model):
            report -= _attention_counts(hf_model)
    return dict(+report)


def _attention_counts(hf_model) -> Counter:
    """What the fastformer attention implementation covers in one supported transformers model."""
    prepared = [m for m in hf_model.modules() if hasattr(m, "_fastformer_backend")]
    return Counter(attention=len(prepared), t5_relative_bias=sum("compute_bias" in vars(m) for m in prepared))
