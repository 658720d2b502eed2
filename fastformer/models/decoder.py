"""Decoder-only transformer (GPT-2): embeddings, causal pre-norm blocks, final norm, and its heads
(causal LM, which implements the generation protocol of fastformer.generation, and sequence
classification)."""
import torch
import torch.nn.functional as F
from torch import nn

from fastformer import generation
from fastformer._padding_mask import padding_mask
from fastformer import nn as ffnn
from fastformer.models.block import TransformerBlock, fused_blocks_apply, make_norm
from fastformer.models.config import ModelConfig
from fastformer.models.encoder import Embeddings
from fastformer.models.heads import TaskOutput, classification_loss
from fastformer.models.packing import pack_if_padded
from fastformer.ops._block_args import FLOAT_DTYPES
from fastformer.ops.decode_block import AVAILABLE as _HAS_DECODE_BLOCK


def _check_inputs(input_ids, attention_mask, position_ids) -> None:
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty [batch, seq] tensor, got shape {tuple(input_ids.shape)}")
    for name, t in (("attention_mask", attention_mask), ("position_ids", position_ids)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(t.shape)}")


def _check_positions(position_ids, max_positions: int) -> None:
    if position_ids is not None and not (0 <= int(position_ids.min()) and int(position_ids.max()) < max_positions):
        raise ValueError(f"position_ids must lie in [0, {max_positions}) (the model's n_positions)")


class Decoder(nn.Module):
    """input_ids [B, S] (+ attention_mask [B, S], 1 = token, 0 = padding) -> hidden states [B, S, hidden].

    Without a cache, positions are 0..S-1 unless position_ids are given (Hugging Face's GPT2Model
    forward). With a cache (fastformer.generation.KVCache) the S tokens are appended to it: positions
    continue from the real tokens already cached and attention covers every cached key. A padded batch
    with nothing cached before it (a forward, or generation's prefill) runs on its real tokens only
    (fastformer.models.packing); the cache then holds zeros at the padding, which its key mask hides.
    pack=False keeps the padding in every layer.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.num_layers))
        self.final_norm = make_norm(config)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, pack=True):
        _check_inputs(input_ids, attention_mask, position_ids)
        if cache is None:
            _check_positions(position_ids, self.config.max_positions)
            key_padding_mask = padding_mask(attention_mask, input_ids)
        elif position_ids is not None:
            raise ValueError("position_ids cannot be given with a cache: the cache counts the positions")
        else:
            position_ids, key_padding_mask = cache.begin_step(input_ids, attention_mask)
        x = self.embeddings(input_ids, position_ids=position_ids)
        packed = None
        if pack and (cache is None or cache.length == 0):  # no keys but these tokens': a padded batch runs packed
            x, key_padding_mask, packed = pack_if_padded(x, key_padding_mask)  # x [T, hidden] when packed
        one_token = self._decodes_one_token(x, cache)
        for i, layer in enumerate(self.layers):
            fused = layer.decode_token(x.view(1, -1), cache, i, key_padding_mask) if one_token else None
            if fused is not None:
                x = fused.view(x.shape)
            else:
                x = layer(x, key_padding_mask=key_padding_mask, causal=True, cache=cache, layer=i, packed=packed)
        if cache is not None:
            cache.end_step(input_ids.shape[1])
        x = self.final_norm(x)
        return packed.unpack(x) if packed is not None else x  # [B, S, hidden]

    def _decodes_one_token(self, x, cache) -> bool:
        """Whether this is a step the blocks can run through the fused CPU decode op (TransformerBlock.decode_token):
        one new token of one row after cached ones, fp32 or bf16, and fused_blocks_apply."""
        return (cache is not None and cache.length > 0 and x.shape[0] == 1 and x.shape[1] == 1
                and _HAS_DECODE_BLOCK and x.dtype in FLOAT_DTYPES and fused_blocks_apply(self, x))


class DecoderForCausalLM(nn.Module):
    """Next-token logits (GPT2LMHeadModel); the LM head shares the token embedding when the checkpoint
    ties them (tie_word_embeddings). Implements fastformer.generation's protocol, so
    `model.generate(...)` and `model.stream(...)` work as fastformer.generation.generate / stream."""

    is_encoder_decoder = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.lm_head = ffnn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.extra.get("tie_word_embeddings", True):
            self.lm_head.weight = self.decoder.embeddings.word.weight
        self.max_positions = config.max_positions
        self.vocab_size = config.vocab_size
        self.eos_token_id = config.extra.get("eos_token_id")
        self.pad_token_id = config.pad_token_id

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None) -> TaskOutput:
        # The loss reads the logits of the last padded slot before a left-padded row (it predicts the row's
        # first token), as in transformers, so a forward with labels keeps the padding.
        hidden = self.decoder(input_ids, attention_mask, position_ids, pack=labels is None)
        logits = self.lm_head(hidden)  # [B, S, vocab]
        loss = None
        if labels is not None:  # predict token t + 1 from tokens <= t; label -100 is ignored
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return TaskOutput(logits=logits, loss=loss)

    def new_cache(self, batch_size: int, max_length: int, encoder_output=None) -> generation.KVCache:
        if max_length > self.max_positions:
            raise ValueError(f"max_length={max_length} tokens do not fit the model's {self.max_positions} positions "
                             "(n_positions)")
        weight = self.decoder.embeddings.word.weight  # the activations' dtype (lm_head may be int8)
        return generation.KVCache(self.config.num_layers, batch_size, max_length, self.config.num_heads,
                                  self.config.head_dim, weight.dtype, weight.device)

    def step(self, input_ids, cache, attention_mask=None, last_only=False):
        hidden = self.decoder(input_ids, attention_mask, cache=cache)  # [B, T, hidden]
        return self.lm_head(hidden[:, -1:] if last_only else hidden)  # [B, T or 1, vocab]

    generate = generation.generate
    stream = generation.stream


class DecoderForSequenceClassification(nn.Module):
    """GPT2ForSequenceClassification: logits of the last token that is not pad_token_id in each row
    (the rightmost one, so left and right padding both work, as Hugging Face pools)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.decoder = Decoder(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None) -> TaskOutput:
        batch, seq = input_ids.shape
        if self.config.pad_token_id is None and batch != 1:
            raise ValueError(f"input_ids has {batch} rows but the config has no pad_token_id to find each row's "
                             "last token; set pad_token_id or pass one row at a time")
        logits = self.score(self.decoder(input_ids, attention_mask, position_ids))  # [B, S, labels]
        if self.config.pad_token_id is None:
            last = torch.full((batch,), seq - 1, device=input_ids.device)
        else:
            not_pad = input_ids.ne(self.config.pad_token_id)  # [B, S]
            last = (torch.arange(seq, device=input_ids.device) * not_pad).argmax(-1)  # [B]; all padding -> 0
        pooled = logits[torch.arange(batch, device=logits.device), last]  # [B, labels]
        return TaskOutput(logits=pooled,
                          loss=classification_loss(self.config, pooled, labels) if labels is not None else None)
