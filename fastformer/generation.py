"""KV cache and decoding strategies (greedy, sampling, beam search, streaming) for every model family.

The generation protocol: what a model must provide for generate() / stream()
-----------------------------------------------------------------------------
generate() never looks inside a model; it calls exactly these (all tensors on the model's device):

  model.is_encoder_decoder: bool
  model.max_positions: int | None
      The longest decoder sequence the model can run (decoder-only: prompt + new tokens, GPT-2's
      n_positions; encoder-decoders: decoder tokens incl. the start token), None = no limit.
  model.new_cache(batch_size: int, max_length: int, encoder_output=None) -> KVCache
      A cache with room for max_length decoder tokens in each of batch_size rows, in the model's
      dtype and device. Encoder-decoders get encoder_output (what model.encode returned for B
      inputs) and store it in the cache, computing every layer's cross-attention K/V once here; when
      batch_size = B * n (beam search: n beams per input), each input's rows are repeated n times
      (repeat_interleave: row b * n + j belongs to input b).
  model.step(input_ids [B, T] long, cache, attention_mask [B, T] | None, last_only: bool) -> logits
      Runs T new decoder tokens against everything already in the cache, appends their K/V
      (cache.length grows by T) and returns logits [B, T, V] ([B, 1, V] for the last token only when
      last_only=True). attention_mask (1 = token, 0 = padding, None = all tokens) covers the T new
      tokens only: the cache remembers the mask of the earlier ones, and a token's position is the
      number of real tokens before it in its row, so left padding does not shift positions (what
      Hugging Face generate computes as attention_mask.cumsum(-1) - 1).
  Encoder-decoders only:
  model.encode(input_ids [B, S] long, attention_mask [B, S] | None) -> encoder_output
      Opaque to generate(): it is handed to new_cache unchanged.
  model.decoder_start_token_id: int
      The first decoder token of every row.
  Optional: model.eos_token_id, model.pad_token_id (int | None): defaults for generate()'s arguments.

The cache (KVCache below; a model may subclass it) is used by generate() only through:

  cache.length: int            decoder tokens written so far (the same for every row; a padding token
                               takes a slot and is masked)
  cache.max_length: int        slots per row
  cache.reorder(index)         index: long [batch_size]; in place, row r becomes old row index[r] in every
                               per-row decoder tensor (self-attention K/V, key mask, positions). Beam
                               search calls it after every step, and index[r] always belongs to the same
                               input as r (rows b * n .. b * n + n - 1), so per-input state (cross-
                               attention K/V, the encoder mask) needs no reordering.

Models implement step() with the KVCache helpers: begin_step() (positions and the key padding mask
for T new tokens), update(layer, k, v) (write the new K/V, get the K/V to attend over) and
end_step(T).

The entry points (all settings keyword-only; bad settings raise ValueError naming the argument):

  generate(model, input_ids [B, S], attention_mask=None, *, max_new_tokens=20, do_sample=False,
           temperature=1.0, top_k=0, top_p=1.0, seed=None, num_beams=1, length_penalty=1.0,
           early_stopping=False, eos_token_id=None, pad_token_id=None) -> long [B, S' + new]
      Greedy (default), sampling (do_sample: temperature, then top-k, then top-p, as transformers
      orders its warpers; top_k=0 and top_p=1.0 are off; seed makes it reproducible without touching
      torch's global generator) or beam search (num_beams > 1; length_penalty and early_stopping
      True / False / "never" as in transformers).
  stream(model, input_ids, attention_mask=None, *, ...the same, without beams...) -> iterator of long [B]
      Yields each step's new token of every row as soon as it is chosen.

What generate() does: a decoder-only prompt [B, S] (left-padded when its rows differ in length:
attention_mask marks the padding) runs through step() once (prefill), then one token per step;
encoder-decoders encode the prompt once and decode from decoder_start_token_id. Rows that produced
eos_token_id are finished and get pad_token_id from then on; decoding stops when every row is
finished or after max_new_tokens. The result is the prompt (decoder-only) or the start token
(encoder-decoders) followed by the new tokens, as Hugging Face generate returns.
"""
import torch
from torch import Tensor


class KVCache:
    """Preallocated self-attention K/V for every layer (static shapes: the buffers never move or grow,
    so a later CUDA-graph capture can reuse their addresses), plus the per-row state decoding needs.

    keys, values: [L, B, Hkv, max_length, D]; key_mask: bool [B, max_length] (True = a real token in
    that slot); positions: long [B], real tokens so far in each row (the next token's position).
    Encoder-decoders fill cross_keys / cross_values [L, B, Hkv, S_enc, D] and cross_mask bool
    [B, S_enc] (True = attend) in their new_cache; decoder-only models leave them None.
    """

    def __init__(self, num_layers: int, batch_size: int, max_length: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device=None):
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"a KV cache needs batch_size >= 1 and max_length >= 1, got {batch_size} and {max_length}")
        shape = (num_layers, batch_size, num_kv_heads, max_length, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # [L, B, Hkv, max_length, D]
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.key_mask = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)  # [B, max_length]
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)  # [B]
        self.cross_keys = self.cross_values = self.cross_mask = None
        self.length = 0
        self.max_length = max_length
        self.batch_size = batch_size

    def begin_step(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Registers T new tokens: returns (position_ids [B, T], key_padding_mask [B, length + T])."""
        batch, new = input_ids.shape
        if batch != self.batch_size:
            raise ValueError(f"input_ids has {batch} rows, the cache was made for {self.batch_size}")
        end = self.length + new
        if end > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} tokens per row; {self.length} written + {new} new "
                             f"do not fit")
        if attention_mask is None:
            self.key_mask[:, self.length:end] = True
            position_ids = self.positions[:, None] + torch.arange(new, device=self.positions.device)  # [B, T]
            self.positions += new
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
            real = attention_mask.bool()
            self.key_mask[:, self.length:end] = real
            counts = real.long().cumsum(-1)  # [B, T] real tokens up to and including each
            # Padding slots get position 0 (their keys are masked and their outputs unused).
            position_ids = (self.positions[:, None] + counts - 1).clamp(min=0) * real  # [B, T]
            self.positions += counts[:, -1]
        return position_ids, self.key_mask[:, :end]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes the new k, v [B, Hkv, T, D] of one layer after the cached ones and returns the keys and
        values to attend over, [B, Hkv, length + T, D] views of the buffers (no copies).

        Slicing rather than attending over all max_length slots with key_mask: on CPU attention cost
        grows with the keys it reads (a 32-token prompt + 64 new tokens reads 96 slots, not 1024).
        A CUDA-graph capture would instead attend over the full buffer with key_mask (unwritten slots
        are False), trading that work for shapes that do not change from step to step.
        """
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def end_step(self, new_tokens: int) -> None:
        self.length += new_tokens

    def reorder(self, index: Tensor) -> None:
        """Row r becomes old row index[r] (beam search), copied into the same buffers. Only the written
        slots move; beams never change input, so per-input state (cross-attention K/V, cross_mask) stays."""
        written = slice(0, self.length)
        self.keys[:, :, :, written] = self.keys[:, :, :, written].index_select(1, index)
        self.values[:, :, :, written] = self.values[:, :, :, written].index_select(1, index)
        self.key_mask.copy_(self.key_mask.index_select(0, index))
        self.positions.copy_(self.positions.index_select(0, index))
