"""ff.from_pretrained: a native fastformer model from a local Hugging Face checkpoint folder."""
import os
import warnings

import torch

from fastformer.hf.checkpoint import CheckpointError, read_config, read_weights
from fastformer.hf import encoders, gpt2, seq2seq
from fastformer.hf.config_fields import checked_config
from fastformer.hf.keymap import WeightMapError, map_weights
from fastformer.models import decoder, heads
from fastformer.models.seq2seq import Seq2SeqForConditionalGeneration
from fastformer.models.encoder import Encoder
from fastformer.nn.quantize import check_mode, quantize_model

TASKS = {
    "base": Encoder,
    "sequence-classification": heads.EncoderForSequenceClassification,
    "token-classification": heads.EncoderForTokenClassification,
    "question-answering": heads.EncoderForQuestionAnswering,
    "masked-lm": heads.EncoderForMaskedLM,
    "sentence-embedding": heads.EncoderForSentenceEmbedding,
}
DECODER_TASKS = {
    "base": decoder.Decoder,
    "causal-lm": decoder.DecoderForCausalLM,
    "sequence-classification": decoder.DecoderForSequenceClassification,
}
SEQ2SEQ_TASKS = {"seq2seq-lm": Seq2SeqForConditionalGeneration}
# A family kind: its model_types (-> adapter, key map, prefix, ignored keys), its tasks, and the attribute
# that holds the body in its task models (a bare body's own parameters are mapped under that name;
# encoder-decoders have no bare-body task, and every weight but the LM head's bias is their body).
KINDS = [
    (encoders.FAMILIES, TASKS, "encoder."),
    (gpt2.FAMILIES, DECODER_TASKS, "decoder."),
    (seq2seq.FAMILIES, SEQ2SEQ_TASKS, ("shared.", "encoder.", "decoder.")),
]
_ARCHITECTURE_SUFFIXES = {
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "masked-lm",
    "ForCausalLM": "causal-lm",
    "ForConditionalGeneration": "seq2seq-lm",
    "MTModel": "seq2seq-lm",  # MarianMTModel, before "Model"
    "LMHeadModel": "causal-lm",  # before "Model": GPT2LMHeadModel ends with both
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


def checkpoint_task(path) -> str:
    """The task from_pretrained(path) loads when given none (from config.json's architectures, or
    "sentence-embedding" for a sentence-transformers folder)."""
    return _task_from_checkpoint(read_config(path), os.fspath(path))


def from_pretrained(path, task: str | None = None, dtype: torch.dtype | None = None, device=None,
                    quantize: str | None = None, **task_options):
    """Loads a native model from a local Hugging Face checkpoint folder (no network).

    The architecture comes from config.json's model_type; the head from `task` (one of TASKS) or else
    from `architectures` (a sentence-transformers folder gives "sentence-embedding"). Head weights the
    checkpoint lacks are freshly initialized with a warning, as transformers does; missing body
    weights are an error. task_options go to the head (e.g. pooling="mean").

    quantize: None (float), "int8" or "bf16" for CPU inference (fastformer.nn.quantize): the float32 model is
    quantized once after loading; dtype and device must then be left None. A mode this CPU cannot run natively
    is a RuntimeError naming the missing instructions.
    """
    check_mode(quantize)
    if quantize is not None and (dtype is not None or device is not None):
        raise ValueError(f"quantize={quantize!r} runs on the CPU in its own precision; leave dtype and device None, "
                         f"got dtype={dtype}, device={device}")
    hf = checked_config(read_config(path), os.path.join(os.fspath(path), "config.json"))
    model_type = hf["model_type"]
    kind = next((k for k in KINDS if model_type in k[0]), None)
    if kind is None:
        raise ValueError(f"unsupported model_type {model_type!r} in {path}; supported: "
                         f"{sorted(t for families, _, _ in KINDS for t in families)}")
    families, tasks, body = kind
    if task is not None and task not in tasks:
        raise ValueError(f"task must be one of {sorted(tasks)} for {model_type}, got {task!r}")
    adapter, keymap, base_prefix, ignore = families[model_type]
    config = adapter(hf)
    task = task or _task_from_checkpoint(hf, path)
    if task not in tasks:
        raise ValueError(f"{path} is a {task} checkpoint, which {model_type} models do not support; pass task= one "
                         f"of {sorted(tasks)}")
    model = tasks[task](config, **task_options)
    weights = read_weights(path)
    prefix = base_prefix if any(k.startswith(base_prefix) for k in weights) else ""
    ours = model.state_dict()
    # A bare body's parameters carry no "encoder." / "decoder." prefix; map them as the task models' are.
    named = {(body + k if task == "base" else k): v for k, v in ours.items()}
    if task_options.get("pooling", "cls") != "cls":
        # The checkpoint's pooler / classifier expect the first token alone; other poolings get a fresh head.
        named = {k: v for k, v in named.items() if not k.startswith("head.")}
    if task not in ("sequence-classification",):
        ignore = (*ignore, r"pooler\.")  # only the BERT classification head uses the pooler
    state, missing, unexpected = map_weights(keymap, named, weights, prefix, ignore)
    body_missing = [m for m in missing if m.startswith(body)]
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
        state = {k.removeprefix(body): v for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    model.load_report = {"missing": missing, "unexpected": unexpected, "task": task, "model_type": model_type}
    if quantize is not None:
        quantize_model(model, quantize)
        return model.eval()
    return model.to(device=device, dtype=dtype).eval()


__all__ = ["CheckpointError", "DECODER_TASKS", "checkpoint_task", "SEQ2SEQ_TASKS", "TASKS", "WeightMapError", "from_pretrained"]
