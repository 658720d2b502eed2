"""Classifier and TokenClassifier: labels and scores from strings, with the checkpoint's id2label."""
import torch

from fastformer.pipelines.encoding import EncoderPipeline


class Classifier(EncoderPipeline):
    """Classifier(path)(texts) -> per text, [{"label", "score"}] for every label, best first.

    Scores follow the checkpoint's problem_type as transformers' pipeline does: softmax over the labels
    for single-label classification, a sigmoid per label for multi-label, the raw value for regression
    (one label)."""

    task = "sequence-classification"

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        if self.config.num_labels == 1 or self.config.problem_type == "regression":
            return logits
        if self.config.problem_type == "multi_label_classification":
            return logits.sigmoid()
        return logits.softmax(dim=-1)

    def _outputs(self, out, rows, encoding, inputs):
        scores = self._scores(out.logits.float()).cpu()  # [B, labels]
        return [sorted(({"label": self.label(j), "score": float(s)} for j, s in enumerate(row)),
                       key=lambda p: -p["score"]) for row in scores]



class TokenClassifier(EncoderPipeline):
    """TokenClassifier(path)(texts) -> per text, one {"label", "score", "word", "start", "end"} per token
    (special tokens left out); start/end are character offsets into the text, word = text[start:end].
    Needs a fast tokenizer (offsets)."""

    task = "token-classification"

    def _tokenize(self, inputs, truncate):
        return self.tokenizer(inputs, truncation=truncate, max_length=self.max_tokens if truncate else None,
                              return_offsets_mapping=True, return_special_tokens_mask=True)

    def _outputs(self, out, rows, encoding, inputs):
        probs = out.logits.float().softmax(dim=-1).cpu()  # [B, S, labels]
        results = []
        for b, row in enumerate(rows):
            best, labels = probs[b].max(dim=-1)
            tokens = []
            for t, ((start, end), special) in enumerate(zip(encoding["offset_mapping"][row],
                                                            encoding["special_tokens_mask"][row])):
                if not special:
                    tokens.append({"label": self.label(int(labels[t])), "score": float(best[t]),
                                   "word": inputs[row][start:end], "start": start, "end": end})
            results.append(tokens)
        return results
