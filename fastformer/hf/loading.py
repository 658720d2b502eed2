"""ff.from_pretrained: a native fastformer model from a local Hugging Face checkpoint folder."""
import os
import warnings

import torch

from fastformer.hf.checkpoint import CheckpointError, read_config, read_weights
from fastformer.hf import seq2seq
from fastformer.hf.encoders import FAMILIES
from fastformer.hf.keymap import WeightMapError, map_weights
from fastformer.models import heads
from fastformer.models.encoder import Encoder
from fastformer.models.seq2seq import Seq2SeqForConditionalGeneration

TASKS = {
    "base": Encoder,
    "sequence-classification": heads.EncoderForSequenceClassification,
    "token-classification": heads.EncoderForTokenClassification,
    "question-answering": heads.EncoderForQuestionAnswering,
    "masked-lm": heads.EncoderForMaskedLM,
    "sentence-embedding": heads.EncoderForSentenceEmbedding,
}
SEQ2SEQ_TASKS = {"seq2seq-lm": Seq2SeqForConditionalGeneration}
_ARCHITECTURE_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "masked-lm",
    "Model": "base",
}


def _task_from_checkpoint(hf: dict, path: str) -> str:
    if os.path.isfile(os.path.join(path, "modules.json")):  # a sentence-transformers folder
        return "sentence-embedding"
    for arch in hf.get("architectures") or []:
        for suffix, task in _ARCHITECTURE_SUFFIXES.items():
            if arch.endswith(suffix):
                return task
    return "base"


def from_pretrained(path, task: str | None = None, dtype: torch.dtype | None = None, device=None, **task_options):
    """Loads a native model from a local Hugging Face checkpoint folder (no network).

    The architecture comes from config.json's model_type; the head from `task` (one of TASKS) or else
    from `architectures` (a sentence-transformers folder gives "sentence-embedding"). Head weights the
    checkpoint lacks are freshly initialized with a warning, as transformers does; missing body
    weights are an error. task_options go to the head (e.g. pooling="mean").
    """
    hf = read_config(path)
    model_type = hf["model_type"]
    if model_type in seq2seq.FAMILIES:
        return _seq2seq_from_pretrained(path, hf, task, dtype, device)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r} in {path}; supported: "
                         f"{sorted([*FAMILIES, *seq2seq.FAMILIES])}")
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    adapter, keymap, base_prefix, ignore = FAMILIES[model_type]
    config = adapter(hf)
    task = task or _task_from_checkpoint(hf, path)
    model = TASKS[task](config, **task_options)
    weights = read_weights(path)
    prefix = base_prefix if any(k.startswith(base_prefix) for k in weights) else ""
    ours = model.state_dict()
    # A bare Encoder's parameters carry no "encoder." prefix; map them as the task models' are.
    named = {("encoder." + k if task == "base" else k): v for k, v in ours.items()}
    if task_options.get("pooling", "cls") != "cls":
        # The checkpoint's pooler / classifier expect the first token alone; other poolings get a fresh head.
        named = {k: v for k, v in named.items() if not k.startswith("head.")}
    if task not in ("sequence-classification",):
        ignore = (*ignore, r"pooler\.")  # only the BERT classification head uses the pooler
    state, missing, unexpected = map_weights(keymap, named, weights, prefix, ignore)
    body_missing = [m for m in missing if m.startswith("encoder.")]
    if body_missing:
        raise WeightMapError(f"{path} lacks weights the {model_type} body needs: {body_missing[:8]}"
                             f"{' ...' if len(body_missing) > 8 else ''} ({len(body_missing)} in all)")
    missing += [k for k in ours if k.startswith("head.") and k not in named]
    if missing:
        warnings.warn(f"{task} head weights not in the checkpoint, newly initialized: {missing}", stacklevel=2)
    if unexpected:
        warnings.warn(f"checkpoint weights not used by the {task} model: {unexpected[:8]}"
                      f"{' ...' if len(unexpected) > 8 else ''}", stacklevel=2)
    if task == "base":
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    model.load_report = {"missing": missing, "unexpected": unexpected, "task": task, "model_type": model_type}
    return model.to(device=device, dtype=dtype).eval()


def _seq2seq_from_pretrained(path, hf: dict, task, dtype, device):
    """Encoder-decoder checkpoints (T5, BART, Marian): one task, "seq2seq-lm"; every weight but a
    freshly zeroed final_logits_bias (absent from bare *Model checkpoints) must be in the checkpoint."""
    if task not in (None, *SEQ2SEQ_TASKS):
        raise ValueError(f"task for a {hf['model_type']} checkpoint must be one of {sorted(SEQ2SEQ_TASKS)}, "
                         f"got {task!r}")
    task = "seq2seq-lm"
    adapter, keymap, base_prefix, ignore = seq2seq.FAMILIES[hf["model_type"]]
    model = SEQ2SEQ_TASKS[task](adapter(hf))
    weights = read_weights(path)
    prefix = base_prefix if any(k.startswith(base_prefix) for k in weights) else ""
    if model.lm_head is None:
        ignore = (*ignore, r"^lm_head\.weight$")  # a tied head some checkpoints store anyway
    state, missing, unexpected = map_weights(keymap, model.state_dict(), weights, prefix, ignore)
    body_missing = [m for m in missing if m != "final_logits_bias"]
    if body_missing:
        raise WeightMapError(f"{path} lacks weights the {hf['model_type']} model needs: {body_missing[:8]}"
                             f"{' ...' if len(body_missing) > 8 else ''} ({len(body_missing)} in all)")
    if unexpected:
        warnings.warn(f"checkpoint weights not used by the {task} model: {unexpected[:8]}"
                      f"{' ...' if len(unexpected) > 8 else ''}", stacklevel=3)
    model.load_state_dict(state, strict=False)
    model.load_report = {"missing": missing, "unexpected": unexpected, "task": task, "model_type": hf["model_type"]}
    return model.to(device=device, dtype=dtype).eval()


__all__ = ["CheckpointError", "TASKS", "WeightMapError", "from_pretrained"]
