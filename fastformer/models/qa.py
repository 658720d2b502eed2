"""Turning extractive-QA start/end logits into the best valid answer span of the original text."""
from dataclasses import dataclass

import torch


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


def answer_question(model, tokenizer, question: str, context: str, max_answer_length: int = 30) -> Answer | None:
    """Runs an extractive-QA model on one (question, context) pair with a fast tokenizer."""
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt", truncation="only_second")
    context_mask = [sid == 1 for sid in enc.sequence_ids(0)]
    with torch.no_grad():
        out = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    return best_span(out.start_logits[0], out.end_logits[0], enc["offset_mapping"][0], context, context_mask,
                     max_answer_length)
