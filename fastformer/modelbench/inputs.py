"""Benchmark inputs: real sentences (shipped in sentences.txt) tokenized with the checkpoint's own
tokenizer where it has one, else seeded random token ids. Every row is exactly `seq` tokens with no
padding, so tokens/s counts only real tokens."""
import os
from importlib import resources

import torch

from fastformer.modelbench.models import ModelSource, import_transformers

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")


def sentences() -> list[str]:
    text = resources.files("fastformer.modelbench").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_tokenizer(source: ModelSource):
    """The checkpoint's tokenizer, or (None, why not)."""
    if not any(os.path.isfile(os.path.join(source.path, f)) for f in _TOKENIZER_FILES):
        return None, "the checkpoint has no tokenizer"
    try:
        return import_transformers().AutoTokenizer.from_pretrained(source.path), None
    except Exception as e:  # a broken tokenizer must not stop the benchmark: fall back to random ids
        return None, f"its tokenizer does not load ({type(e).__name__}: {e})"


def _sentence_ids(tokenizer, batch: int, seq: int) -> torch.Tensor:
    lines = sentences()
    # Row i starts at sentence i (mod the count) and runs on through the following ones, the whole text
    # repeated until it is longer than seq tokens (each sentence is ~20 tokens).
    repeats = seq // 10 // len(lines) + 1
    texts = [" ".join((lines[i % len(lines):] + lines[:i % len(lines)]) * repeats) for i in range(batch)]
    ids = tokenizer(texts, truncation=True, max_length=seq, return_tensors="pt")["input_ids"]  # [B, seq]
    if ids.shape[1] != seq:
        raise ValueError(f"the tokenizer gave {ids.shape[1]} tokens per row, not seq={seq}")
    return ids


def describe_tokens(tokenizer, why_not: str | None) -> str:
    if tokenizer is not None:
        return "real sentences (fastformer/modelbench/sentences.txt) with the checkpoint's tokenizer"
    return f"seeded random token ids ({why_not})"


def make_inputs(source: ModelSource, tokenizer, batch: int, seq: int, device) -> dict[str, torch.Tensor]:
    """Keyword arguments of the timed call, the same for every backend."""
    if tokenizer is not None:
        ids = _sentence_ids(tokenizer, batch, seq)
    else:
        generator = torch.Generator().manual_seed(0)
        # Skip the lowest ids, where vocabularies keep their special tokens.
        ids = torch.randint(min(10, source.vocab_size - 1), source.vocab_size, (batch, seq), generator=generator)
    ids = ids.to(device)  # [B, S]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if source.kind == "encoder-decoder":
        inputs["decoder_input_ids"] = ids  # the prefill of a decoder as long as the encoder input
    return inputs
