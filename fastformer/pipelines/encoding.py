"""EncoderPipeline: strings in, one forward of an encoder model, per-input outputs back, batched by length.

Inputs are tokenized once, sorted by token count and run batch_size at a time, so each forward pads
only to the longest of inputs of similar length (a 10-token and a 500-token input never share a
batch when there are enough inputs to separate them). BatchStats counts real and padded tokens.
"""
from dataclasses import dataclass

import torch

from fastformer.hf.loading import from_pretrained
from fastformer.pipelines.texts import InputTooLong, check_texts
from fastformer.pipelines.tokenizer import load_tokenizer

# transformers' tokenizers say model_max_length = 1e30 when the checkpoint does not set it.
_UNSET_MAX_LENGTH = 1_000_000


@dataclass
class BatchStats:
    batches: int = 0  # forwards run
    real_tokens: int = 0  # tokens of the inputs
    padded_tokens: int = 0  # tokens computed: batch size x longest input, summed over the forwards


class EncoderPipeline:
    """Base of the encoder pipelines: `task` picks the head (fastformer.hf.TASKS); subclasses say how to
    tokenize an input (_tokenize) and what one input's output is (_outputs)."""

    task: str

    def __init__(self, path, dtype=None, device=None, quantize=None, **task_options):
        self.model = from_pretrained(path, task=self.task, dtype=dtype, device=device, quantize=quantize,
                                     **task_options)
        self.tokenizer = load_tokenizer(path)
        self.config = self.model.encoder.config
        # RoBERTa's positions start after pad_token_id: 514 table rows hold 512 tokens.
        offset = self.config.pad_token_id + 1 if self.config.positions_from_padding else 0
        positions = self.config.max_positions - offset
        tokenizer_limit = self.tokenizer.model_max_length
        self.max_tokens = min(positions, tokenizer_limit) if tokenizer_limit < _UNSET_MAX_LENGTH else positions
        self.device = next(self.model.parameters()).device
        self.uses_token_types = self.config.type_vocab_size > 0

    def _tokenize(self, inputs: list, truncate: bool):
        return self.tokenizer(inputs, truncation=truncate, max_length=self.max_tokens if truncate else None)

    def _outputs(self, out, rows: list[int], encoding, inputs: list) -> list:
        raise NotImplementedError

    def count_tokens(self, inputs: list, truncate: bool = False) -> list[int]:
        """Each input's token count; an input over max_tokens raises InputTooLong unless truncate."""
        return self._checked(inputs, truncate)[1]

    def _checked(self, inputs: list, truncate: bool):
        encoding = self._tokenize(inputs, truncate)
        lengths = [len(ids) for ids in encoding["input_ids"]]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_tokens]
        if too_long:
            i = too_long[0]
            raise InputTooLong(f"input {i} is {lengths[i]} tokens long, more than the model's limit of "
                               f"{self.max_tokens} tokens (max_tokens); shorten it or pass truncate=True",
                               self.max_tokens)
        return encoding, lengths

    def run(self, inputs: list, batch_size: int = 32, truncate: bool = False,
            max_padding: float | None = None) -> tuple[list, BatchStats]:
        """The outputs for `inputs` (in their order) and the BatchStats of the forwards that made them.

        truncate=False: an input over max_tokens raises InputTooLong; True: it is cut to max_tokens.
        max_padding: a forward also ends before an input that would make its padding exceed this fraction of
        its real tokens (0.25: at most 1 padded token per 4 real ones); None: forwards of batch_size inputs.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        encoding, lengths = self._checked(inputs, truncate)
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if self.uses_token_types and
                                                  "token_type_ids" in encoding else [])
        outputs, stats = [None] * len(inputs), BatchStats()
        for rows in _length_sorted_batches(lengths, batch_size, max_padding):
            batch = self.tokenizer.pad({k: [encoding[k][i] for i in rows] for k in keys}, padding_side="right",
                                       return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                out = self.model(**batch)
            for row, output in zip(rows, self._outputs(out, rows, encoding, inputs)):
                outputs[row] = output
            stats.batches += 1
            stats.real_tokens += sum(lengths[i] for i in rows)
            stats.padded_tokens += batch["input_ids"].numel()
        return outputs, stats

    def __call__(self, texts, batch_size: int = 32, truncate: bool = False):
        """texts: a string (gives its output) or a list of strings (gives the list of outputs)."""
        outputs, _ = self.run(check_texts(texts), batch_size, truncate)
        return outputs[0] if isinstance(texts, str) else outputs

    def label(self, index: int) -> str:
        return self.config.id2label.get(index, f"LABEL_{index}")


def _length_sorted_batches(lengths: list[int], batch_size: int, max_padding: float | None) -> list[list[int]]:
    """Input indices sorted by length, cut into forwards of at most batch_size (and, with max_padding, at most
    that fraction of padding: sorted ascending, the newest input is the longest, so it sets the width)."""
    batches, rows, real = [], [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        too_padded = max_padding is not None and rows and (len(rows) + 1) * lengths[i] > (1 + max_padding) * (
            real + lengths[i])
        if rows and (len(rows) == batch_size or too_padded):
            batches.append(rows)
            rows, real = [], 0
        rows.append(i)
        real += lengths[i]
    return batches + [rows] if rows else batches
