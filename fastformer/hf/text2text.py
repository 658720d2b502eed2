"""Translation and summarization from strings with encoder-decoder checkpoints (T5, BART, Marian), and a
BLEU evaluation on sacrebleu.

`model` is a local checkpoint folder (the model comes from ff.from_pretrained, the tokenizer from the
folder's own tokenizer files) or an already loaded model with its `tokenizer`. Generation settings
start from the checkpoint's defaults (config.json, then its task_specific_params for the task, as
transformers' pipelines do) and are overridden by keyword arguments; the settings fastformer.generation
has no equivalent for (min_length, no_repeat_ngram_size, forced BOS/EOS) are not applied.
"""
import json
import os


from fastformer import generation

# Checkpoint generation defaults that map onto fastformer.generation's settings.
_CHECKPOINT_SETTINGS = ("num_beams", "length_penalty", "early_stopping")
_DEFAULT_MAX_NEW_TOKENS = 64


def _generation_config(path: str) -> dict:
    """generation_config.json's settings (newer checkpoints keep them there rather than in config.json)."""
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return {k: v for k, v in json.load(f).items() if v is not None}


def _load(model, tokenizer):
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoTokenizer

        from fastformer.hf.loading import from_pretrained

        path = os.fspath(model)
        model = from_pretrained(path)
        model.config.generation.update(_generation_config(path))
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)  # a local folder: no network
    elif tokenizer is None:
        raise ValueError("tokenizer is required when model is a loaded model rather than a checkpoint folder")
    if not getattr(model, "is_encoder_decoder", False):
        raise ValueError(f"model must be an encoder-decoder (T5, BART, Marian), got {type(model).__name__}")
    return model, tokenizer


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: pass at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty")
    return list(texts)


def _settings(model, task_params: dict, options: dict) -> dict:
    """The checkpoint's defaults, then the task's, then the caller's; max_length becomes max_new_tokens
    (the decoder start token counts toward transformers' max_length)."""
    defaults = {**model.config.generation, **task_params}
    settings = {k: defaults[k] for k in _CHECKPOINT_SETTINGS if k in defaults}
    max_new = defaults["max_length"] - 1 if "max_length" in defaults else _DEFAULT_MAX_NEW_TOKENS
    if model.max_positions is not None:
        max_new = min(max_new, model.max_positions - 1)
    return {"max_new_tokens": max_new, **settings, **options}


def _generate_texts(model, tokenizer, texts: list[str], prefix: str, settings: dict, batch_size: int) -> list[str]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    limit = model.encoder.embeddings.max_positions
    outputs = []
    for first in range(0, len(texts), batch_size):
        batch = tokenizer([prefix + t for t in texts[first: first + batch_size]], return_tensors="pt", padding=True)
        lengths = batch["attention_mask"].sum(dim=1)
        if limit is not None and int(lengths.max()) > limit:
            row = int(lengths.argmax())
            raise ValueError(f"texts[{first + row}] is {int(lengths[row])} tokens long, more than the model's "
                             f"{limit} source positions (max_position_embeddings)")
        ids = generation.generate(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), **settings)
        outputs += tokenizer.batch_decode(ids.cpu(), skip_special_tokens=True)
    return outputs


def translate(texts, model, tokenizer=None, *, source_lang: str | None = None, target_lang: str | None = None,
              prefix: str | None = None, batch_size: int = 32, **settings):
    """Translates a string or a list of strings; returns the same shape.

    Marian checkpoints translate one fixed pair. T5 needs its task prefix: given as `prefix`, or found
    from source_lang / target_lang ("en", "de") in the checkpoint's task_specific_params
    ("translation_en_to_de"). settings: as fastformer.generation.generate (num_beams, max_new_tokens, ...).
    """
    single = isinstance(texts, str)
    texts = _check_texts(texts)
    model, tokenizer = _load(model, tokenizer)
    tasks = model.config.generation.get("task_specific_params") or {}
    task_params = {}
    if source_lang is not None or target_lang is not None:
        key = f"translation_{source_lang}_to_{target_lang}"
        if key not in tasks:
            known = sorted(k for k in tasks if k.startswith("translation_"))
            raise ValueError(f"source_lang={source_lang!r}, target_lang={target_lang!r}: the checkpoint has no {key!r} "
                             f"task (it has {known})")
        task_params = tasks[key]
    elif model.config.encoder.model_type == "t5" and prefix is None:
        raise ValueError("T5 translates with a task prefix: pass source_lang and target_lang, or prefix")
    prefix = prefix if prefix is not None else task_params.get("prefix", "")
    out = _generate_texts(model, tokenizer, texts, prefix, _settings(model, task_params, settings), batch_size)
    return out[0] if single else out


def summarize(texts, model, tokenizer=None, *, prefix: str | None = None, batch_size: int = 32, **settings):
    """Summarizes a string or a list of strings (T5 gets the checkpoint's "summarize: " prefix);
    returns the same shape. settings: as fastformer.generation.generate."""
    single = isinstance(texts, str)
    texts = _check_texts(texts)
    model, tokenizer = _load(model, tokenizer)
    task_params = (model.config.generation.get("task_specific_params") or {}).get("summarization", {})
    prefix = prefix if prefix is not None else task_params.get(
        "prefix", "summarize: " if model.config.encoder.model_type == "t5" else "")
    out = _generate_texts(model, tokenizer, texts, prefix, _settings(model, task_params, settings), batch_size)
    return out[0] if single else out


def bleu(hypotheses: list[str], references) -> float:
    """Corpus BLEU (sacrebleu's default 13a tokenization), 0-100. references: one string per hypothesis,
    or one list of strings per hypothesis (several references each, the same number for all)."""
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("bleu needs sacrebleu: pip install sacrebleu (or fastformer[test])") from e
    if not isinstance(hypotheses, (list, tuple)) or not hypotheses:
        raise ValueError("hypotheses must be a non-empty list of strings")
    if not isinstance(references, (list, tuple)) or len(references) != len(hypotheses):
        raise ValueError(f"references must be a list with one entry per hypothesis ({len(hypotheses)}), got "
                         f"{len(references) if isinstance(references, (list, tuple)) else type(references).__name__}")
    if all(isinstance(r, str) for r in references):
        streams = [list(references)]
    else:
        counts = {len(r) if isinstance(r, (list, tuple)) else -1 for r in references}
        if len(counts) != 1 or counts == {-1} or counts == {0}:
            raise ValueError("references must be strings, or lists of strings of one common, non-zero length")
        streams = [list(s) for s in zip(*references)]  # sacrebleu: one stream per reference set
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams).score)


def evaluate_bleu(sources, references, model, tokenizer=None, **translate_options) -> dict:
    """Translates `sources` (see translate) and scores them against `references` (see bleu).
    Returns {"bleu": float, "translations": list[str]}."""
    translations = translate(_check_texts(sources), model, tokenizer, **translate_options)
    return {"bleu": bleu(translations, references), "translations": translations}


__all__ = ["bleu", "evaluate_bleu", "summarize", "translate"]
