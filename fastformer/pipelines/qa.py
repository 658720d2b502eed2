"""Extractive question answering: QuestionAnswerer (strings in, answer spans out) and best_span, which turns
start/end logits into the best valid answer span of the original text."""
from dataclasses import dataclass

import torch

from fastformer.pipelines.encoding import EncoderPipeline
from fastformer.pipelines.texts import check_texts


@dataclass
class Answer:
    text: str
    start: int  # character offsets into the context
    end: int
    score: float  # start logit + end logit


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, offsets, context: str, context_mask,
              max_answer_length: int = 30, top_k: int = 20) -> Answer | None:
    """The highest-scoring span (start <= end, at most max_answer_length tokens, inside the context).

    start_logits, end_logits: [S] for one sequence; offsets: [S] (char_start, char_end) pairs from a
    fast tokenizer's offset_mapping; context_mask: [S] bool, True for tokens of `context`. Returns
    None when no valid span exists.
    """
    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
    mask = torch.as_tensor(context_mask, dtype=torch.bool, device=start_logits.device)
    if start_logits.shape != end_logits.shape or start_logits.shape != mask.shape:
        raise ValueError("start_logits, end_logits and context_mask must all have shape [S]")
    neg = torch.finfo(start_logits.dtype).min
    starts = start_logits.masked_fill(~mask, neg).topk(min(top_k, mask.numel())).indices.tolist()
    ends = end_logits.masked_fill(~mask, neg).topk(min(top_k, mask.numel())).indices.tolist()
    best = None
    for s in starts:
        for e in ends:
            if not (mask[s] and mask[e] and s <= e < s + max_answer_length):
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, s, e)
    if best is None:
        return None
    score, s, e = best
    char_start, char_end = int(offsets[s][0]), int(offsets[e][1])
    return Answer(context[char_start:char_end], char_start, char_end, score)


class QuestionAnswerer(EncoderPipeline):
    """QuestionAnswerer(path)(question, context) -> the best Answer span of context, or None; lists of
    questions and contexts (one context per question) give a list. Needs a fast tokenizer (offsets).
    truncate=True cuts the context (never the question) to the model's max_tokens."""

    task = "question-answering"

    def __init__(self, path, dtype=None, device=None, quantize=None, max_answer_length: int = 30):
        super().__init__(path, dtype=dtype, device=device, quantize=quantize)
        if max_answer_length < 1:
            raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
        self.max_answer_length = max_answer_length

    def _tokenize(self, inputs, truncate):
        questions, contexts = zip(*inputs)
        return self.tokenizer(list(questions), list(contexts), truncation="only_second" if truncate else False,
                              max_length=self.max_tokens if truncate else None, return_offsets_mapping=True)

    def _outputs(self, out, rows, encoding, inputs):
        answers = []
        for b, row in enumerate(rows):
            length = len(encoding["input_ids"][row])
            context_mask = [sid == 1 for sid in encoding.sequence_ids(row)]
            answers.append(best_span(out.start_logits[b, :length].float(), out.end_logits[b, :length].float(),
                                     encoding["offset_mapping"][row], inputs[row][1], context_mask,
                                     self.max_answer_length))
        return answers

    def __call__(self, question, context, batch_size: int = 32, truncate: bool = False):
        single = isinstance(question, str)
        questions, contexts = check_texts(question, "question"), check_texts(context, "context")
        if len(questions) != len(contexts):
            raise ValueError(f"question and context must have one context per question, got {len(questions)} "
                             f"questions and {len(contexts)} contexts")
        answers, _ = self.run(list(zip(questions, contexts)), batch_size, truncate)
        return answers[0] if single else answers
