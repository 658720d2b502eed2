"""Encoder-decoder transformers (T5, BART, Marian) with a language-model head, for generation.

The encoder is a stack of the shared TransformerBlock; a decoder block adds cross-attention
(fastformer.models.cross_attention) between the causal self-attention and the feed-forward sublayer.
Position information comes from a learned table (BART, with its offset of 2), a fixed sinusoidal table
(Marian) or T5's relative bias, which ff.ops.attention evaluates in the kernel (T5RelativeBias) so no
[H, S, S] bias is ever materialized.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fastformer._padding_mask import padding_mask
from fastformer._token_ids import check_dtype, check_token_ids
from fastformer import generation
from fastformer import nn as ffnn
from fastformer.models.block import TransformerBlock, encoder_blocks, make_norm
from fastformer.models.config import ModelConfig
from fastformer.models.dropout import Dropout
from fastformer.models.cross_attention import CrossAttention
from fastformer.models.heads import TaskOutput
from fastformer.models.packing import pack_if_padded
from fastformer.ops import T5RelativeBias


@dataclass
class Seq2SeqConfig:
    """One ModelConfig per stack (they differ in layers, heads and FFN width) plus what joins them."""

    encoder: ModelConfig
    decoder: ModelConfig
    decoder_start_token_id: int
    eos_token_id: int | None
    pad_token_id: int
    embedding_scale: float = 1.0  # token embeddings times sqrt(d_model) with scale_embedding (Marian)
    position_offset: int = 0  # BART's learned positions start at row 2 of the table
    share_embeddings: bool = True  # encoder and decoder read one token table
    tie_lm_head: bool = True  # the LM head is the decoder's token table (else its own weight)
    logits_scale: float = 1.0  # T5 with a tied head scales the decoder output by d_model ** -0.5
    final_logits_bias: bool = False  # BART and Marian add a (checkpoint) bias to the logits
    relative_buckets: int = 32  # T5 relative position bias
    relative_max_distance: int = 128
    generation: dict = field(default_factory=dict)  # the checkpoint's generation defaults (num_beams, ...)


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] fixed position table, sines in the first half and cosines in the second (Marian),
    computed in float64 like the numpy original and rounded once."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]  # [P, 1]
    freq = torch.pow(10000.0, -2 * torch.arange(dim // 2 + dim % 2, dtype=torch.float64) / dim)  # [ceil(dim/2)]
    angles = pos * freq  # [P, ceil(dim/2)]
    return torch.cat([torch.sin(angles), torch.cos(angles[:, : dim // 2])], dim=1).float()  # [P, dim]


class Seq2SeqEmbeddings(nn.Module):
    """Token embeddings (times embedding_scale) plus absolute positions (learned or sinusoidal), then an
    optional LayerNorm with the add fused into it (BART's layernorm_embedding)."""

    def __init__(self, config: ModelConfig, word: nn.Embedding, seq2seq: Seq2SeqConfig, argument: str):
        super().__init__()
        self.word = word
        self.argument = argument  # the input's name in error messages
        self.scale = seq2seq.embedding_scale
        self.offset = seq2seq.position_offset if config.position == "learned" else 0
        self.max_positions = config.max_positions if config.position in ("learned", "sinusoidal") else None
        self.position = None
        if config.position == "learned":
            self.position = nn.Embedding(config.max_positions + self.offset, config.hidden_size)
        elif config.position == "sinusoidal":
            # Fixed, so not part of the state_dict (Marian checkpoints do not store it either).
            self.register_buffer("sinusoidal", sinusoidal_table(config.max_positions, config.hidden_size),
                                 persistent=False)
        self.norm = make_norm(config) if config.embedding_norm else None
        self.dropout = Dropout(config.dropout)

    def check_length(self, length: int) -> None:
        if self.max_positions is not None and length > self.max_positions:
            raise ValueError(f"{self.argument} needs {length} positions, the model has {self.max_positions} "
                             "(max_position_embeddings)")

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """position_ids [B, S] (decode steps: from the KV cache, checked against the table when the cache is
        made); None: 0 .. S-1, checked here."""
        check_token_ids(input_ids, self.word.num_embeddings, self.argument)
        x = self.word(input_ids)  # [B, S, hidden]
        if self.scale != 1.0:
            x = x * self.scale
        positions = None
        if self.max_positions is not None:
            if position_ids is None:
                self.check_length(input_ids.shape[1])
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            table = self.position.weight if self.position is not None else self.sinusoidal.to(x.dtype)
            positions = F.embedding(position_ids + self.offset, table)  # [B, S, hidden]
        if self.norm is not None:
            x = self.norm(x, residual=positions)[0] if positions is not None else self.norm(x)
        elif positions is not None:
            x = x + positions
        return self.dropout(x)


class Seq2SeqStack(nn.Module):
    """What the encoder and decoder share: embeddings, a stack of blocks, T5's relative bias table (held by
    the first layer in Hugging Face, used by all) and the final norm of pre-norm models."""

    def __init__(self, config: ModelConfig, word: nn.Embedding, seq2seq: Seq2SeqConfig, argument: str, block):
        super().__init__()
        self.seq2seq = seq2seq
        self.embeddings = Seq2SeqEmbeddings(config, word, seq2seq, argument)
        relative = config.position == "relative"
        self.relative_bias = nn.Embedding(seq2seq.relative_buckets, config.num_heads) if relative else None
        self.layers = nn.ModuleList(block(config) for _ in range(config.num_layers))
        self.final_norm = make_norm(config) if config.pre_norm else None
        self.dropout = Dropout(config.dropout)

    def position_bias(self, bidirectional: bool) -> T5RelativeBias | None:
        """T5's bias as ff.ops.attention's in-kernel spec; bottom-right aligned there, so with a KV cache
        the new queries sit after the cached keys."""
        if self.relative_bias is None:
            return None
        return T5RelativeBias(self.relative_bias.weight, self.seq2seq.relative_buckets,
                              self.seq2seq.relative_max_distance, bidirectional=bidirectional)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.final_norm(x)) if self.final_norm is not None else x


class Seq2SeqEncoder(Seq2SeqStack):
    def __init__(self, config: ModelConfig, word: nn.Embedding, seq2seq: Seq2SeqConfig):
        super().__init__(config, word, seq2seq, "input_ids", TransformerBlock)

    def forward(self, input_ids, key_padding_mask=None):
        """A padded batch runs packed (fastformer.models.packing); the output has zeros at the padding, which
        the decoder's cross-attention masks."""
        x, key_padding_mask, packed = pack_if_padded(self.embeddings(input_ids), key_padding_mask)
        for x in encoder_blocks(self, x, key_padding_mask, self.position_bias(bidirectional=True), packed):
            pass  # x: each block's output in turn, the last block's after the loop
        x = self.finish(x)
        return packed.unpack(x) if packed is not None else x  # [B, S_src, hidden]


class DecoderBlock(TransformerBlock):
    """Causal self-attention, cross-attention over the encoder output, feed-forward; pre- or post-norm
    with every residual add fused into the following norm, as in TransformerBlock."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.cross_attn = CrossAttention(config)
        self.cross_norm = make_norm(config)

    def forward(self, x, memory, memory_mask=None, attn_bias=None, key_padding_mask=None, cache=None, layer=0):
        """memory: (keys, values) [B, H, S_src, D] of this block's cross-attention (CrossAttention.project_memory);
        memory_mask bool [B, S_src], True = source token; cache, layer: the self-attention KV cache (see
        SelfAttention)."""
        keys, values = memory
        if self.pre_norm:
            h = self.dropout(self.attn(self.attn_norm(x), key_padding_mask, attn_bias, True, cache, layer))
            normed, x = self.cross_norm(h, residual=x)
            h = self.dropout(self.cross_attn(normed, keys, values, memory_mask))
            normed, x = self.ffn_norm(h, residual=x)
            return x + self.dropout(self.ffn(normed))
        x, _ = self.attn_norm(self.dropout(self.attn(x, key_padding_mask, attn_bias, True, cache, layer)), residual=x)
        x, _ = self.cross_norm(self.dropout(self.cross_attn(x, keys, values, memory_mask)), residual=x)
        x, _ = self.ffn_norm(self.dropout(self.ffn(x)), residual=x)
        return x


@dataclass
class EncoderOutput:
    """What encode() returns and new_cache() takes: the encoder's output and the source mask."""

    hidden: torch.Tensor  # [B, S_src, hidden]
    mask: torch.Tensor | None  # bool [B, S_src], True = token


class Seq2SeqDecoder(Seq2SeqStack):
    def __init__(self, config: ModelConfig, word: nn.Embedding, seq2seq: Seq2SeqConfig):
        super().__init__(config, word, seq2seq, "decoder_input_ids", DecoderBlock)

    def project_memory(self, encoder_hidden: torch.Tensor) -> list:
        """Every block's cross-attention (keys, values) [B, H, S_src, D] for one encoder output."""
        return [layer.cross_attn.project_memory(encoder_hidden) for layer in self.layers]

    def forward(self, decoder_input_ids, memory: list, memory_mask=None, key_padding_mask=None, position_ids=None,
                cache=None):
        """memory: project_memory's (keys, values) per block; with a cache (fastformer.generation.KVCache)
        the tokens are appended to it and key_padding_mask / position_ids come from cache.begin_step."""
        x = self.embeddings(decoder_input_ids, position_ids)
        bias = self.position_bias(bidirectional=False)
        for i, (layer, layer_memory) in enumerate(zip(self.layers, memory)):
            x = layer(x, layer_memory, memory_mask, attn_bias=bias, key_padding_mask=key_padding_mask, cache=cache,
                      layer=i)
        return self.finish(x)


def check_ids(name: str, ids, mask_name: str, mask) -> torch.Tensor | None:
    """Validates [B, S] token ids and their 0/1 mask; returns the mask as bool (True = token) or None."""
    check_dtype(ids, name)
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"{name} must be a non-empty [batch, seq] tensor, got shape {tuple(ids.shape)}")
    return padding_mask(mask, ids, mask_name, name)


class Seq2SeqForConditionalGeneration(nn.Module):
    """input_ids [B, S_src] (+ attention_mask) and decoder_input_ids [B, S_tgt] -> logits [B, S_tgt, vocab].

    Implements fastformer.generation's protocol (encode, new_cache, step), so `model.generate(...)` and
    `model.stream(...)` work as fastformer.generation.generate / stream: the encoder runs once per input,
    new_cache computes every block's cross-attention K/V once, and each step runs the new decoder tokens
    against the preallocated self-attention KV cache.
    """

    is_encoder_decoder = True

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        enc, dec = config.encoder, config.decoder
        # T5's table trains its padding row (the decoder start token is the padding token), BART's does not.
        padding_idx = config.pad_token_id if enc.embedding_padding_idx else None
        self.shared = nn.Embedding(enc.vocab_size, enc.hidden_size, padding_idx=padding_idx)
        decoder_word = self.shared if config.share_embeddings else nn.Embedding(
            dec.vocab_size, dec.hidden_size, padding_idx=padding_idx)
        self.encoder = Seq2SeqEncoder(enc, self.shared, config)
        self.decoder = Seq2SeqDecoder(dec, decoder_word, config)
        # fastformer's Linear: the [hidden x vocab] projection is most of a decode step's matmul work on CPU.
        self.lm_head = ffnn.Linear(dec.hidden_size, dec.vocab_size, bias=False)
        if config.tie_lm_head:
            self.lm_head.weight = decoder_word.weight
        if config.final_logits_bias:
            self.register_buffer("final_logits_bias", torch.zeros(1, dec.vocab_size))
        else:
            self.final_logits_bias = None
        self.decoder_start_token_id = config.decoder_start_token_id
        self.eos_token_id = config.eos_token_id
        self.pad_token_id = config.pad_token_id
        # None: T5's relative positions have no limit.
        self.max_positions = self.decoder.embeddings.max_positions
        self.vocab_size = enc.vocab_size  # of input_ids, for generate()'s check
        self.max_source_positions = self.encoder.embeddings.max_positions

    def encode(self, input_ids, attention_mask=None) -> EncoderOutput:
        mask = check_ids("input_ids", input_ids, "attention_mask", attention_mask)
        return EncoderOutput(self.encoder(input_ids, key_padding_mask=mask), mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder output [B, S, hidden] -> [B, S, vocab]."""
        if self.config.logits_scale != 1.0:
            hidden = hidden * self.config.logits_scale
        logits = self.lm_head(hidden)
        return logits + self.final_logits_bias if self.final_logits_bias is not None else logits

    def new_cache(self, batch_size: int, max_length: int, encoder_output: EncoderOutput) -> generation.KVCache:
        """A KV cache for max_length decoder tokens per row, holding every block's cross-attention K/V of
        encoder_output (B inputs; batch_size = B * n repeats each input's rows n times, for beams)."""
        inputs = encoder_output.hidden.shape[0]
        if batch_size % inputs != 0:
            raise ValueError(f"batch_size={batch_size} is not a multiple of the {inputs} encoded inputs")
        if self.max_positions is not None and max_length > self.max_positions:
            raise ValueError(f"max_length={max_length} decoder tokens do not fit the model's {self.max_positions} "
                             "positions (max_position_embeddings)")
        dec = self.config.decoder
        weight = self.decoder.embeddings.word.weight
        cache = generation.KVCache(dec.num_layers, batch_size, max_length, dec.num_heads, dec.head_dim, weight.dtype,
                                   weight.device)
        rows = torch.arange(inputs, device=weight.device).repeat_interleave(batch_size // inputs)  # [B * n]
        memory = self.decoder.project_memory(encoder_output.hidden)  # L x ([B, H, S_src, D], [B, H, S_src, D])
        cache.cross_keys = torch.stack([k for k, _ in memory]).index_select(1, rows)  # [L, B * n, H, S_src, D]
        cache.cross_values = torch.stack([v for _, v in memory]).index_select(1, rows)
        mask = encoder_output.mask
        cache.cross_mask = mask.index_select(0, rows) if mask is not None else None  # [B * n, S_src]
        return cache

    def step(self, input_ids, cache: generation.KVCache, attention_mask=None, last_only=False):
        """Runs T new decoder tokens [B, T] against the cache; logits [B, T or 1, vocab]."""
        position_ids, key_padding_mask = cache.begin_step(input_ids, attention_mask)
        memory = list(zip(cache.cross_keys, cache.cross_values))
        hidden = self.decoder(input_ids, memory, cache.cross_mask, key_padding_mask, position_ids, cache)
        cache.end_step(input_ids.shape[1])
        return self.logits(hidden[:, -1:] if last_only else hidden)

    generate = generation.generate
    stream = generation.stream

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: decoder inputs are the labels delayed by one, starting from decoder_start_token_id."""
        shifted = labels.new_full(labels.shape, self.config.decoder_start_token_id)  # [B, S]
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def decoder_hidden(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None):
        """Teacher-forced decoder output [B, S_dec, hidden] (Hugging Face's T5Model / BartModel /
        MarianModel last_hidden_state): the encoder runs on input_ids, the decoder on decoder_input_ids."""
        decoder_mask = check_ids("decoder_input_ids", decoder_input_ids, "decoder_attention_mask",
                                 decoder_attention_mask)
        encoded = self.encode(input_ids, attention_mask)
        return self.decoder(decoder_input_ids, self.decoder.project_memory(encoded.hidden), encoded.mask,
                            key_padding_mask=decoder_mask)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None) -> TaskOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids (teacher forcing) or labels (shifted right into decoder inputs)")
            decoder_input_ids = self.shift_right(labels)
        if isinstance(input_ids, torch.Tensor) and decoder_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(f"decoder_input_ids has batch {decoder_input_ids.shape[0]}, input_ids has "
                             f"{input_ids.shape[0]}")
        logits = self.logits(self.decoder_hidden(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return TaskOutput(logits=logits, loss=loss)


__all__ = ["DecoderBlock", "EncoderOutput", "Seq2SeqConfig", "Seq2SeqForConditionalGeneration", "sinusoidal_table"]
