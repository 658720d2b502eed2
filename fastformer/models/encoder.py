"""Encoder-only transformer (BERT, RoBERTa, DistilBERT): embeddings and a stack of shared blocks."""
import torch
from torch import nn

from fastformer._padding_mask import padding_mask
from fastformer._token_ids import check_token_ids
from fastformer.models.block import TransformerBlock, encoder_blocks, has_forward_hooks, make_norm
from fastformer.models.config import ModelConfig
from fastformer.models.dropout import Dropout
from fastformer.models.packing import pack_if_padded


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, LayerNorm'd with the add fused into the norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.positions_from_padding = config.positions_from_padding
        self.word = nn.Embedding(config.vocab_size, config.hidden_size,
                                 padding_idx=config.pad_token_id if config.embedding_padding_idx else None)
        self.position = nn.Embedding(config.max_positions, config.hidden_size) if config.position == "learned" else None
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        self.norm = make_norm(config) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.positions_from_padding:
            # RoBERTa: positions count non-padding tokens from padding_idx + 1; padding keeps padding_idx.
            not_pad = input_ids.ne(self.pad_token_id).long()
            return torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id  # [B, S]
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)  # [B, S]

    def _first_rows_apply(self) -> bool:
        """Whether the positions are 0..S-1 from the shape (BERT, DistilBERT: not RoBERTa's, counted past padding)
        and the position and token type tables have no forward hooks, which the slices would not run."""
        return (self.position is not None and not self.positions_from_padding
                and not any(has_forward_hooks(m) for m in (self.position, self.token_type) if m is not None))

    def _first_rows(self, seq: int) -> torch.Tensor:
        """The position rows 0..seq-1 plus token type 0's row, [seq, hidden]: the sums the lookups of positions
        0..S-1 and type 0 give, as a slice and one add (two ops and no module calls instead of four and two: ~25 us
        of the ~70 the embeddings took on one sentence, 2-core VM)."""
        rows = self.position.weight[:seq]  # [S, hidden]
        return rows + self.token_type.weight[0] if self.token_type is not None else rows

    def _looked_up(self, input_ids, token_type_ids, position_ids):
        """The position (+ token type) embeddings of each token, [B, S, hidden], or None without either table."""
        extra = None
        if self.position is not None:
            extra = self.position(position_ids if position_ids is not None else self.position_ids(input_ids))
        if self.token_type is not None:
            if token_type_ids is not None:
                check_token_ids(token_type_ids, self.token_type.num_embeddings, "token_type_ids",
                                size_name="the model's type_vocab_size")
            types = self.token_type(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
            extra = types if extra is None else extra + types
        return extra

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        """position_ids [B, S] (the decoder's, counted past a KV cache) replace the ones from the shape;
        whoever passes them has checked they fit the position table."""
        check_token_ids(input_ids, self.word.num_embeddings)
        x = self.word(input_ids)  # [B, S, hidden]
        if self.position is not None and position_ids is None:
            # Known from the shape alone (no device sync): RoBERTa's positions run up to S + pad_token_id.
            needed = input_ids.shape[1] + (self.pad_token_id + 1 if self.positions_from_padding else 0)
            if needed > self.position.num_embeddings:
                raise ValueError(f"input_ids of length {input_ids.shape[1]} need {needed} positions, the model has "
                                 f"{self.position.num_embeddings}")
        if position_ids is None and token_type_ids is None and self._first_rows_apply():
            extra = self._first_rows(input_ids.shape[1]).expand_as(x)  # [B, S, hidden]
        else:
            extra = self._looked_up(input_ids, token_type_ids, position_ids)
        if self.norm is not None:
            x = self.norm(x, residual=extra)[0] if extra is not None else self.norm(x)
        elif extra is not None:
            x = x + extra
        return self.dropout(x)


class Encoder(nn.Module):
    """input_ids [B, S] (+ attention_mask [B, S], 1 = token, 0 = padding) -> hidden states [B, S, hidden]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config) if config.pre_norm else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False, pack=True):
        """Padded batches run packed (fastformer.models.packing): the layers see only the real tokens and
        the output has zeros at the padding. pack=False keeps the padding in every layer, for the one
        caller that reads padded positions (QA's training loss, whose softmax runs over them as in
        transformers)."""
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, seq] tensor, got shape {tuple(input_ids.shape)}")
        key_padding_mask = padding_mask(attention_mask, input_ids)
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(token_type_ids.shape)}")
        x = self.embeddings(input_ids, token_type_ids)
        packed = None
        if pack:
            x, key_padding_mask, packed = pack_if_padded(x, key_padding_mask)  # x [T, hidden] when packed
        hidden_states = [x, *encoder_blocks(self, x, key_padding_mask, packed=packed)]
        x = hidden_states[-1]
        if self.final_norm is not None:
            x = self.final_norm(x)
        if packed is not None:
            x = packed.unpack(x)  # [B, S, hidden]
            hidden_states = [packed.unpack(h) for h in hidden_states] if output_hidden_states else hidden_states
        return (x, hidden_states) if output_hidden_states else x
