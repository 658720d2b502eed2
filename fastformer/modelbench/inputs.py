"""Benchmark inputs: real sentences (shipped in sentences.txt) tokenized with the checkpoint's own
tokenizer where it has one, else seeded random token ids.

Three modes (`--lengths`): "real" (the default) is serving traffic: batch row i is sentence i (cycling
through the file), tokenized as it is, the batch right-padded to its longest row (seq caps the length);
"fixed" makes every row exactly seq tokens with no padding (the text repeated and cut), as a dense
model-throughput measure; "spread" makes row i of B exactly seq * (i + 1) / B tokens (batch 8, seq 128:
16, 32, ..., 128, 56% of positions real), the text of "fixed" cut shorter and right-padded to seq: a
padded batch of long inputs, as documents or RAG chunks give. Token counts say how many positions are real."""
import os
from importlib import resources

import torch

from fastformer.modelbench.models import ModelSource, import_transformers
from fastformer.pipelines.tokenizer import TOKENIZER_FILES

LENGTHS = ("real", "fixed", "spread")
# Rows without a tokenizer: a sentence counts one token per word plus two special tokens (BERT's
# [CLS] ... [SEP]), a little under what a word-piece tokenizer gives.
_SPECIAL_TOKENS = 2


def sentences() -> list[str]:
    text = resources.files("fastformer.modelbench").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_tokenizer(source: ModelSource):
    """The checkpoint's tokenizer, right-padding (with its end token where it has no padding token), or
    (None, why not)."""
    if not any(os.path.isfile(os.path.join(source.path, f)) for f in TOKENIZER_FILES):
        return None, "the checkpoint has no tokenizer"
    try:
        tokenizer = import_transformers().AutoTokenizer.from_pretrained(source.path)
    except Exception as e:  # a broken tokenizer must not stop the benchmark: fall back to random ids
        return None, f"its tokenizer does not load ({type(e).__name__}: {e})"
    tokenizer.padding_side = "right"  # CTranslate2 takes lengths, i.e. right padding; causal prefill needs it too
    if tokenizer.pad_token is None:  # GPT-2: pad with the end token (masked out either way)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, None


def _fixed_sentence_ids(tokenizer, batch: int, seq: int) -> torch.Tensor:
    lines = sentences()
    # Row i starts at sentence i (mod the count) and runs on through the following ones, the whole text
    # repeated until it is longer than seq tokens (each sentence is ~20 tokens).
    repeats = seq // 10 // len(lines) + 1
    texts = [" ".join((lines[i % len(lines):] + lines[:i % len(lines)]) * repeats) for i in range(batch)]
    ids = tokenizer(texts, truncation=True, max_length=seq, return_tensors="pt")["input_ids"]  # [B, seq]
    if ids.shape[1] != seq:
        raise ValueError(f"the tokenizer gave {ids.shape[1]} tokens per row, not seq={seq}")
    return ids


def _real_sentence_ids(tokenizer, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    lines = sentences()
    encoded = tokenizer([lines[i % len(lines)] for i in range(batch)], padding=True, truncation=True, max_length=seq,
                        return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]  # [B, S], S = the longest row


def _random_ids(source: ModelSource, batch: int, seq: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # Skip the lowest ids, where vocabularies keep their special tokens.
    return torch.randint(min(10, source.vocab_size - 1), source.vocab_size, (batch, seq), generator=generator)


def _real_length_mask(batch: int, seq: int) -> torch.Tensor:
    lines = sentences()
    lengths = torch.tensor([min(seq, len(lines[i % len(lines)].split()) + _SPECIAL_TOKENS) for i in range(batch)])
    return (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()  # [B, S]


def spread_mask(batch: int, seq: int) -> torch.Tensor:
    lengths = torch.tensor([max(1, seq * (i + 1) // batch) for i in range(batch)])  # row i: seq * (i + 1) / B
    return (torch.arange(seq)[None, :] < lengths[:, None]).long()  # [B, seq]


def describe_tokens(tokenizer, why_not: str | None, lengths: str) -> str:
    ids = ("real sentences (fastformer/modelbench/sentences.txt) with the checkpoint's tokenizer" if tokenizer is not None
           else f"seeded random token ids ({why_not})")
    if lengths == "fixed":
        return ids + "; every row exactly seq tokens (the text repeated), attention mask all ones"
    if lengths == "spread":
        return ids + ("; spread lengths: row i of B is seq * (i + 1) / B tokens of the text repeated, right-padded "
                      "to seq; tokens/s counts real tokens")
    lengths_from = "tokenized as they are" if tokenizer is not None else "one per word of each sentence + 2"
    return (ids + f"; real lengths: row i is sentence i, {lengths_from}, right-padded to the longest row of the "
            "batch (seq caps it); tokens/s counts real tokens")


def make_inputs(source: ModelSource, tokenizer, batch: int, seq: int, device, lengths: str = "real"
                ) -> dict[str, torch.Tensor]:
    """Keyword arguments of the timed call, the same for every backend."""
    if lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {lengths!r}")
    if lengths == "real" and tokenizer is not None:
        ids, mask = _real_sentence_ids(tokenizer, batch, seq)
    elif lengths == "real":
        mask = _real_length_mask(batch, seq)
        ids = _random_ids(source, batch, mask.shape[1]) * mask  # id 0 at padded positions
    else:
        ids = _fixed_sentence_ids(tokenizer, batch, seq) if tokenizer is not None else _random_ids(source, batch, seq)
        mask = spread_mask(batch, seq) if lengths == "spread" else torch.ones_like(ids)
        if lengths == "spread":
            # Cut row i after its length, ending it with the row's last token (the tokenizer's end token where
            # it appends one, [SEP] or </s>), and pad the rest, as a tokenizer pads a shorter text.
            end_token = ids[:, -1].clone()  # [B]
            ids = torch.where(mask.bool(), ids, tokenizer.pad_token_id if tokenizer is not None else 0)
            ids[torch.arange(batch), mask.sum(1) - 1] = end_token
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}  # [B, S] each
    if source.kind == "encoder-decoder":
        inputs["decoder_input_ids"] = inputs["input_ids"]  # the prefill of a decoder as long as the encoder input
    return inputs


def token_counts(model_inputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(real tokens, padded positions) of a batch: the attention mask's ones, and its size."""
    mask = model_inputs["attention_mask"]
    return int(mask.sum()), mask.numel()
