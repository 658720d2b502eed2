"""Task heads for encoder models, each matching the Hugging Face class of the same task."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastformer.models.block import make_norm
from fastformer.nn.activation import ACTIVATIONS
from fastformer.models.config import ModelConfig
from fastformer.models.encoder import Encoder

POOLINGS = ("cls", "mean", "max", "cls_last4")


@dataclass
class TaskOutput:
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over unpadded tokens: [B, S, H] -> [B, H]."""
    if attention_mask is None:
        return hidden.mean(1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, S, 1]
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def pool(kind: str, hidden: torch.Tensor, hidden_states: list, attention_mask) -> torch.Tensor:
    """[B, S, H] -> [B, P]: the first token, the mean or max over real tokens, or the first token of
    each of the last four layers concatenated (P = 4H)."""
    if kind == "cls":
        return hidden[:, 0]
    if kind == "mean":
        return mean_pool(hidden, attention_mask)
    if kind == "max":
        if attention_mask is None:
            return hidden.amax(1)
        return hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
    return torch.cat([h[:, 0] for h in hidden_states[-4:]], dim=-1)


def classification_loss(config: ModelConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's rule: regression for one label, else single- or multi-label classification."""
    problem = config.problem_type
    if problem is None:
        problem = ("regression" if config.num_labels == 1 else
                   "single_label_classification" if labels.dtype in (torch.long, torch.int) else
                   "multi_label_classification")
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1)) if config.num_labels == 1 \
            else F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class ClassificationHead(nn.Module):
    """[dense -> act] -> dropout -> out: BERT's pooler + classifier, RoBERTa's classification head,
    DistilBERT's pre_classifier + classifier, depending on `act` (tanh / tanh / relu)."""

    def __init__(self, in_features: int, hidden: int | None, act: str, num_labels: int, dropout: float,
                 dropout_before_dense: bool = False):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden) if hidden else None
        self.act = torch.tanh if act == "tanh" else ACTIVATIONS[act]
        self.dropout_before_dense = nn.Dropout(dropout) if dropout_before_dense else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden or in_features, num_labels)

    def forward(self, pooled):
        if self.dense is not None:
            pooled = self.act(self.dense(self.dropout_before_dense(pooled)))
        return self.out(self.dropout(pooled))


class EncoderForSequenceClassification(nn.Module):
    """Sequence classification or regression; pooling "cls" (with the checkpoint's pooler / dense
    layer), "mean", "max" or "cls_last4" (concatenated first tokens of the last four layers)."""

    def __init__(self, config: ModelConfig, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "cls_last4" and config.num_layers < 3:
            raise ValueError(f"pooling='cls_last4' needs at least 3 layers (4 hidden states with the embeddings), "
                             f"the model has {config.num_layers}")
        self.config, self.pooling = config, pooling
        self.encoder = Encoder(config)
        in_features = config.hidden_size * (4 if pooling == "cls_last4" else 1)
        head = config.extra.get("classifier", {})
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.dropout
        self.head = ClassificationHead(in_features, config.hidden_size, head.get("act", "tanh"), config.num_labels,
                                       dropout, head.get("dropout_before_dense", False))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> TaskOutput:
        hidden, states = self.encoder(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
        logits = self.head(pool(self.pooling, hidden, states, attention_mask))
        return TaskOutput(logits=logits, loss=classification_loss(self.config, logits, labels) if labels is not None else None)


class EncoderForTokenClassification(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.dropout
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> TaskOutput:
        logits = self.classifier(self.dropout(self.encoder(input_ids, attention_mask, token_type_ids)))  # [B, S, L]
        loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1)) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss)


class EncoderForQuestionAnswering(nn.Module):
    """Extractive QA: start/end logits over the tokens; fastformer.pipelines.qa turns them into answer spans."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.dropout if config.extra.get("qa_dropout") else 0.0)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None,
                end_positions=None) -> TaskOutput:
        training_loss = start_positions is not None and end_positions is not None
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, pack=not training_loss)
        logits = self.qa_outputs(self.dropout(hidden))  # [B, S, 2]
        start, end = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if training_loss:
            seq = start.shape[1]  # out-of-range positions are ignored, as in transformers
            loss = (F.cross_entropy(start, start_positions.clamp(0, seq), ignore_index=seq) +
                    F.cross_entropy(end, end_positions.clamp(0, seq), ignore_index=seq)) / 2
        return TaskOutput(start_logits=start, end_logits=end, loss=loss)


class EncoderForMaskedLM(nn.Module):
    """Masked LM: dense -> act -> norm -> decoder (+ bias). The decoder is the word embeddings unless
    config.extra["tie_word_embeddings"] is False (then its own decoder_weight); the activation is
    config.extra["mlm_activation"] where the family fixes one (RoBERTa: gelu), else config.activation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.extra.get("mlm_activation", config.activation)]
        self.norm = make_norm(config)
        tied = config.extra.get("tie_word_embeddings", True)
        self.decoder_weight = None if tied else nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        if self.decoder_weight is not None:
            nn.init.normal_(self.decoder_weight, std=0.02)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> TaskOutput:
        hidden = self.norm(self.act(self.transform(self.encoder(input_ids, attention_mask, token_type_ids))))
        weight = self.encoder.embeddings.word.weight if self.decoder_weight is None else self.decoder_weight
        logits = F.linear(hidden, weight, self.decoder_bias)  # [B, S, vocab]
        loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1)) if labels is not None else None
        return TaskOutput(logits=logits, loss=loss)


class EncoderForSentenceEmbedding(nn.Module):
    """Sentence embeddings as sentence-transformers computes them: mean over real tokens, L2-normalized."""

    def __init__(self, config: ModelConfig, normalize: bool = True):
        super().__init__()
        self.encoder = Encoder(config)
        self.normalize = normalize

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> TaskOutput:
        emb = mean_pool(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask)  # [B, H]
        return TaskOutput(embeddings=F.normalize(emb, p=2, dim=-1) if self.normalize else emb)
