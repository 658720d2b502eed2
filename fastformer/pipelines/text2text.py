"""Translation and summarization: strings in, strings out, with an encoder-decoder checkpoint (T5, BART,
Marian) and the Hugging Face tokenizer saved in the same folder; BLEU on sacrebleu.

Generation settings start from the checkpoint's defaults (config.json and generation_config.json, then
the task's entry in task_specific_params, as transformers' pipelines do) and are overridden by keyword
arguments: beams, length penalty, early stopping, min_length, no_repeat_ngram_size, single-token
bad_words_ids and forced BOS/EOS tokens, all with transformers' semantics.
"""
import json
import os

from fastformer import generation
from fastformer.hf.loading import from_pretrained
from fastformer.pipelines.text_generation import text_pieces
from fastformer.pipelines.texts import InputTooLong, check_texts
from fastformer.pipelines.tokenizer import load_tokenizer

# Checkpoint generation defaults that map onto fastformer.generation's settings.
_CHECKPOINT_SETTINGS = ("num_beams", "length_penalty", "early_stopping", "min_length", "no_repeat_ngram_size",
                        "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id")
_DEFAULT_MAX_NEW_TOKENS = 64


def _generation_config(path: str) -> dict:
    """generation_config.json's settings (newer checkpoints keep them there rather than in config.json)."""
    file = os.path.join(path, "generation_config.json")
    if not os.path.isfile(file):
        return {}
    with open(file) as f:
        return {k: v for k, v in json.load(f).items() if v is not None}


class Text2Text:
    """Text2Text(path)(texts, **settings) -> the output text of each input text.

    path: a local checkpoint folder holding a T5, BART or Marian model and its tokenizer. Subclasses
    pick the task (its task_specific_params entry and, for T5, the input prefix). settings: those of
    fastformer.generation.generate (max_new_tokens, num_beams, do_sample, ...).
    """

    def __init__(self, path, task_key: str, prefix: str | None, dtype=None, device=None, quantize=None):
        path = os.fspath(path)
        self.model = from_pretrained(path, task="seq2seq-lm", dtype=dtype, device=device, quantize=quantize)
        self.tokenizer = load_tokenizer(path)
        defaults = {**self.model.config.generation, **_generation_config(path)}
        self.task_params = (defaults.get("task_specific_params") or {}).get(task_key, {})
        self.defaults = {**defaults, **self.task_params}
        self.prefix = prefix if prefix is not None else self.task_params.get("prefix", "")

    @property
    def model_type(self) -> str:
        return self.model.config.encoder.model_type

    def _settings(self, settings: dict) -> dict:
        """The checkpoint's and the task's defaults, then the caller's; max_length becomes max_new_tokens
        (transformers counts the decoder start token in max_length)."""
        chosen = {k: self.defaults[k] for k in _CHECKPOINT_SETTINGS if k in self.defaults}
        max_new = self.defaults["max_length"] - 1 if "max_length" in self.defaults else _DEFAULT_MAX_NEW_TOKENS
        if self.model.max_positions is not None:
            max_new = min(max_new, self.model.max_positions - 1)
        return {"max_new_tokens": max_new, **chosen, **settings}

    def count_tokens(self, texts: list[str], first: int = 0) -> list[int]:
        """Each text's token count (prefix included); one over the model's source positions raises
        InputTooLong, naming it as texts[first + i]."""
        lengths = [len(ids) for ids in self.tokenizer([self.prefix + t for t in texts])["input_ids"]]
        limit = self.model.max_source_positions
        for i, length in enumerate(lengths):
            if limit is not None and length > limit:
                raise InputTooLong(f"texts[{first + i}] is {length} tokens long, more than the model's {limit} "
                                   "source positions (max_tokens: its max_position_embeddings)", limit)
        return lengths

    def _encode(self, texts: list[str], first: int = 0):
        """Tokenized, right-padded inputs on the model's device; texts[i] is reported as texts[first + i]."""
        self.count_tokens(texts, first)
        batch = self.tokenizer([self.prefix + t for t in texts], return_tensors="pt", padding=True)
        device = next(self.model.parameters()).device
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def __call__(self, texts, batch_size: int = 32, **settings):
        """texts: a string or a list of strings (returns the same shape), run batch_size at a time."""
        single = isinstance(texts, str)
        texts = check_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        settings = self._settings(settings)
        outputs = []
        for first in range(0, len(texts), batch_size):
            ids, mask = self._encode(texts[first: first + batch_size], first)
            out = generation.generate(self.model, ids, mask, **settings)
            outputs += self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return outputs[0] if single else outputs

    def stream(self, text: str, **settings):
        """Yields the output for one text piece by piece as its tokens are generated (greedy or sampled)."""
        ids, mask = self._encode(check_texts(text)[:1])
        chosen = self._settings(settings)
        if "num_beams" not in settings:  # the checkpoint's beam default; a caller's num_beams > 1 is an error
            chosen.pop("num_beams", None)
        yield from text_pieces(self.tokenizer, generation.stream(self.model, ids, mask, **chosen))


class Translator(Text2Text):
    """Translator(path)(texts) with a Marian checkpoint (one fixed language pair), or with T5 given
    source_lang / target_lang ("en", "de"), which select the checkpoint's "translation_en_to_de" task
    and its prefix ("translate English to German: "); `prefix` overrides it."""

    def __init__(self, path, source_lang: str | None = None, target_lang: str | None = None,
                 prefix: str | None = None, dtype=None, device=None, quantize=None):
        super().__init__(path, f"translation_{source_lang}_to_{target_lang}", prefix, dtype, device, quantize)
        tasks = self.defaults.get("task_specific_params") or {}
        if (source_lang is not None or target_lang is not None) and not self.task_params:
            known = sorted(k for k in tasks if k.startswith("translation_"))
            raise ValueError(f"source_lang={source_lang!r}, target_lang={target_lang!r}: the checkpoint has no "
                             f"'translation_{source_lang}_to_{target_lang}' task (it has {known})")
        if self.model_type == "t5" and prefix is None and not self.task_params:
            raise ValueError("T5 translates with a task prefix: pass source_lang and target_lang, or prefix")


class Summarizer(Text2Text):
    """Summarizer(path)(texts) with a BART or T5 checkpoint (T5 inputs get the "summarize: " prefix)."""

    def __init__(self, path, prefix: str | None = None, dtype=None, device=None, quantize=None):
        super().__init__(path, "summarization", prefix, dtype, device, quantize)
        if self.model_type == "t5" and prefix is None and "prefix" not in self.task_params:
            self.prefix = "summarize: "


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


def evaluate_bleu(translator: Translator, sources, references, **settings) -> dict:
    """Translates `sources` and scores them against `references` (see bleu).
    Returns {"bleu": float, "translations": list[str]}."""
    translations = translator(check_texts(sources), **settings)
    return {"bleu": bleu(translations, references), "translations": translations}


__all__ = ["Summarizer", "Text2Text", "Translator", "bleu", "evaluate_bleu"]
