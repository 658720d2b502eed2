"""Text generation: strings in, strings out, with a causal LM and the Hugging Face tokenizer saved in
the same checkpoint folder."""
from dataclasses import dataclass

from fastformer import generation
from fastformer.hf.loading import from_pretrained
from fastformer.pipelines.texts import check_texts
from fastformer.pipelines.tokenizer import load_tokenizer


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int  # up to and including EOS
    finish_reason: str  # "stop": the model generated EOS; "length": max_new_tokens ran out


class TextGenerator:
    """TextGenerator(path)(prompts, **settings) -> the continuation of each prompt.

    path: a local Hugging Face checkpoint folder holding a causal LM (GPT-2) and its tokenizer.
    settings: those of fastformer.generation.generate (max_new_tokens, do_sample, num_beams, ...).
    Prompts of different lengths are padded on the left; a tokenizer without a padding token pads
    with its EOS token, as GPT-2 users usually do.
    """

    def __init__(self, path, dtype=None, device=None, quantize=None):
        self.model = from_pretrained(path, task="causal-lm", dtype=dtype, device=device, quantize=quantize)
        self.tokenizer = load_tokenizer(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _encode(self, prompts: list) -> tuple:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        mask = batch["attention_mask"]
        empty = [i for i, n in enumerate(mask.sum(dim=1).tolist()) if n == 0]
        if empty:
            raise ValueError(f"prompts {empty} are empty (no tokens); every prompt needs at least one token")
        device = next(self.model.parameters()).device
        return batch["input_ids"].to(device), mask.to(device)

    def _settings(self, settings: dict) -> dict:
        defaults = {"eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.tokenizer.pad_token_id}
        return {**{k: v for k, v in defaults.items() if v is not None}, **settings}

    def __call__(self, prompts, **settings):
        completions = self.complete(prompts, **settings)
        return completions[0].text if isinstance(prompts, str) else [c.text for c in completions]

    def complete(self, prompts, **settings) -> list[Completion]:
        """Like calling the generator, with token counts and why each continuation ended (always a list)."""
        ids, mask = self._encode(check_texts(prompts, "prompts"))
        new = generation.generate(self.model, ids, mask, **self._settings(settings))[:, ids.shape[1]:]  # [B, new]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        eos = self.tokenizer.eos_token_id
        completions = []
        for text, row, prompt_tokens in zip(texts, new.tolist(), mask.sum(dim=1).tolist()):
            ended = eos is not None and eos in row
            completions.append(Completion(text, prompt_tokens, row.index(eos) + 1 if ended else len(row),
                                          "stop" if ended else "length"))
        return completions

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt)["input_ids"])

    def stream(self, prompt: str, **settings):
        """Yields the continuation of one prompt piece by piece as its tokens are generated."""
        ids, mask = self._encode(check_texts(prompt, "prompt")[:1])
        yield from text_pieces(self.tokenizer, generation.stream(self.model, ids, mask, **self._settings(settings)))


def text_pieces(tokenizer, tokens):
    """The text that each streamed token (long [1]) adds to those before it, decoded as a whole so pieces
    join up exactly; a token that adds no text yet (part of a multi-byte character) yields nothing."""
    new, text = [], ""
    for token in tokens:
        new.append(int(token[0]))
        decoded = tokenizer.decode(new, skip_special_tokens=True)
        if len(decoded) > len(text):
            yield decoded[len(text):]
            text = decoded
