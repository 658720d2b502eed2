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
  Optional: model.eos_token_id, model.pad_token_id (int | None): defaults for generate()'s arguments;
  model.vocab_size (int): the prompt's token ids must lie in [0, vocab_size), checked once per call on
  every device (fastformer/_token_ids.py).

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
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from fastformer._padding_mask import padding_mask
from fastformer._token_ids import check_dtype, check_token_ids


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
            real = padding_mask(attention_mask, input_ids)
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


# ---- settings ------------------------------------------------------------------------------------

_NO_SCORE = -1.0e9  # the score of impossible beams and empty finished slots (transformers uses the same)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Logits processors, with transformers' semantics (real BART / Marian checkpoints set several):
    min_length: int = 0  # no EOS while the sequence (prompt or decoder start included) is shorter
    min_new_tokens: int = 0  # no EOS before this many new tokens
    no_repeat_ngram_size: int = 0  # no n-gram of this size occurs twice in a sequence (prompt included)
    bad_words_ids: tuple | None = None  # single-token entries [[id], ...]: those ids are never generated
    forced_bos_token_id: int | None = None  # the first new token of an encoder-decoder (sequence length 1)
    forced_eos_token_id: int | None = None  # the token at the last position the length limit allows

    def __post_init__(self):
        def integer(name, low):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")

        integer("max_new_tokens", 0)
        integer("min_length", 0)
        integer("min_new_tokens", 0)
        integer("no_repeat_ngram_size", 0)
        integer("top_k", 0)
        integer("num_beams", 1)
        number("temperature")
        number("top_p")
        number("length_penalty")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (do_sample=False decodes greedily), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError(f"num_beams={self.num_beams} with do_sample=True (beam sampling) is not supported")
        if self.bad_words_ids is not None and not (
                isinstance(self.bad_words_ids, (list, tuple))
                and all(isinstance(w, (list, tuple)) and len(w) == 1 and isinstance(w[0], int) and not isinstance(w[0], bool)
                        and w[0] >= 0 for w in self.bad_words_ids)):
            raise ValueError(f"bad_words_ids must be a list of single-token lists [[id], ...] (multi-token bad words "
                             f"are not supported), got {self.bad_words_ids!r}")
        for name in ("eos_token_id", "pad_token_id", "seed", "forced_bos_token_id", "forced_eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None or an integer >= 0, got {value!r}")


def _settings(model, options: dict) -> GenerationSettings:
    unknown = set(options) - {f.name for f in fields(GenerationSettings)}
    if unknown:
        raise TypeError(f"unknown generation settings: {sorted(unknown)}")
    eos = options.get("eos_token_id", getattr(model, "eos_token_id", None))
    pad = options.get("pad_token_id", getattr(model, "pad_token_id", None))
    # Finished rows need a filler token; like transformers, the EOS token when there is no padding token.
    return GenerationSettings(**{**options, "eos_token_id": eos, "pad_token_id": eos if pad is None else pad})


# ---- the decoding loop ---------------------------------------------------------------------------

def _start(model, input_ids, attention_mask, settings: GenerationSettings):
    """Checks the prompt, builds the cache (rows repeated num_beams times) and runs the prefill.
    Returns (decoder prompt [B * n, S'], cache, logits of the last prompt token [B * n, V])."""
    vocab_size = getattr(model, "vocab_size", None)
    if vocab_size is None:
        check_dtype(input_ids, "input_ids")
    else:
        check_token_ids(input_ids, vocab_size, "input_ids", on_any_device=True)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a [batch, seq] tensor, got shape {tuple(input_ids.shape)}")
    input_ids = input_ids.long()
    batch, prompt_len = input_ids.shape
    if batch == 0 or prompt_len == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): every prompt needs at least one token")
    if attention_mask is not None:
        real = padding_mask(attention_mask, input_ids)
        if not bool(real.any(dim=1).all()):
            raise ValueError("attention_mask has a row with no tokens: an empty prompt")
        if not model.is_encoder_decoder and not bool(real[:, -1].all()):
            raise ValueError("attention_mask pads a prompt on the right; decoder-only generation needs left padding "
                             "(the new tokens follow each prompt's last token)")
    beams = settings.num_beams
    expand = (lambda t: t.repeat_interleave(beams, dim=0)) if beams > 1 else (lambda t: t)
    limit = model.max_positions
    if model.is_encoder_decoder:
        encoder_output = model.encode(input_ids, attention_mask)
        prompt = torch.full((batch * beams, 1), model.decoder_start_token_id, dtype=torch.long, device=input_ids.device)
        prompt_mask = None
        cache_args = (encoder_output,)
    else:
        if limit is not None and prompt_len > limit:
            raise ValueError(f"input_ids has {prompt_len} tokens, longer than the model's context of {limit} positions")
        prompt, prompt_mask = expand(input_ids), None if attention_mask is None else expand(attention_mask)
        cache_args = ()
    length = prompt.shape[1] + settings.max_new_tokens
    if limit is not None and length > limit:
        raise ValueError(f"max_new_tokens={settings.max_new_tokens} does not fit: {prompt.shape[1]} prompt tokens + "
                         f"{settings.max_new_tokens} new ones exceed the model's {limit} positions")
    cache = model.new_cache(batch * beams, length, *cache_args)
    logits = model.step(prompt, cache, prompt_mask, last_only=True)[:, -1]  # [B * n, V]
    return prompt, cache, logits


def _filter_logits(logits: Tensor, settings: GenerationSettings) -> Tensor:
    """Temperature, then top-k, then top-p (nucleus), in transformers' order; removed tokens get -inf."""
    if settings.temperature != 1.0:
        logits = logits / settings.temperature
    if 0 < settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)  # [B, V]
        drop = cumulative <= 1 - settings.top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _process_scores(scores: Tensor, length: int, sequences: Tensor | None, max_length: int, prompt_length: int,
                    settings: GenerationSettings) -> Tensor:
    """transformers' logits processors, in its order: scores [rows, V] (logits, or log-probabilities in
    beam search) for the token after `length` tokens (prompt or decoder start included; sequences
    [rows, length] holds them when no_repeat_ngram_size needs them); removed tokens get -inf, a forced
    token gets 0 and every other token -inf."""
    n = settings.no_repeat_ngram_size
    if 0 < n <= length:
        # A token is banned where the last n - 1 tokens already occurred followed by it.
        windows = sequences.unfold(1, n, 1)  # [rows, length - n + 1, n]
        prefix = sequences[:, length - n + 1:]  # [rows, n - 1]
        seen = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # [rows, length - n + 1]
        vocab = scores.shape[-1]
        banned = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(seen, windows[:, :, -1].clamp(max=vocab), vocab), True)
        scores = scores.masked_fill(banned[:, :vocab], float("-inf"))
    if settings.bad_words_ids:
        scores = scores.index_fill(-1, torch.tensor([w[0] for w in settings.bad_words_ids], device=scores.device),
                                   float("-inf"))
    eos = settings.eos_token_id
    if eos is not None and (length < settings.min_length or length - prompt_length < settings.min_new_tokens):
        scores = scores.index_fill(-1, torch.tensor([eos], device=scores.device), float("-inf"))
    for forced, at_length in ((settings.forced_bos_token_id, 1), (settings.forced_eos_token_id, max_length - 1)):
        if forced is not None and length == at_length:
            scores = torch.full_like(scores, float("-inf")).index_fill(
                -1, torch.tensor([forced], device=scores.device), 0.0)
    return scores


def _next_tokens(model, cache, logits: Tensor, settings: GenerationSettings, prompt: Tensor):
    """Greedy or sampled decoding after the prefill (logits of the last prompt token [B, V]): yields
    each step's tokens [B] (pad_token_id in finished rows)."""
    generator = None
    if settings.do_sample:
        generator = torch.Generator(device=logits.device)
        generator.manual_seed(settings.seed if settings.seed is not None else int(torch.randint(2**62, ()).item()))
    unfinished = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)  # [B]
    prompt_length = prompt.shape[1]
    max_length = prompt_length + settings.max_new_tokens
    sequences = prompt if settings.no_repeat_ngram_size > 0 else None  # [B, L], only when a processor reads it
    for step in range(settings.max_new_tokens):
        logits = _process_scores(logits, prompt_length + step, sequences, max_length, prompt_length, settings)
        if settings.do_sample:
            probs = _filter_logits(logits.float(), settings).softmax(dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [B]
        else:
            tokens = logits.argmax(dim=-1)  # [B]
        if settings.eos_token_id is not None:
            tokens = torch.where(unfinished, tokens, settings.pad_token_id)
            unfinished &= tokens.ne(settings.eos_token_id)
        if sequences is not None:
            sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        yield tokens
        # The one device sync per token: whether every row has finished.
        if step + 1 == settings.max_new_tokens or (settings.eos_token_id is not None and not bool(unfinished.any())):
            return
        logits = model.step(tokens[:, None], cache, None, last_only=True)[:, -1]


def _beam_search(model, input_ids, attention_mask, settings: GenerationSettings) -> Tensor:
    """Beam search with transformers' semantics: each step keeps the 2n best continuations of the n
    live beams; those that end (EOS, or the length limit) among the best n enter the n finished
    hypotheses with score sum(log p) / generated_length ** length_penalty; the rest stay live.
    early_stopping True stops an input once it has n finished hypotheses, False once the best live
    beam at its current length cannot beat the worst finished one, "never" once it could not even
    at the longest length (or the current one when length_penalty <= 0). Positions after a
    hypothesis ends hold pad_token_id (transformers' beam search puts the EOS token there when
    pad_token_id is 0)."""
    beams, eos, fill = settings.num_beams, settings.eos_token_id, settings.pad_token_id
    prompt, cache, logits = _start(model, input_ids, attention_mask, settings)
    batch, device = input_ids.shape[0], prompt.device
    prompt_len = prompt.shape[1]
    max_len = prompt_len + settings.max_new_tokens
    keep = 2 * beams  # candidates per input: enough that n stay live even if n of them just ended
    live = torch.full((batch, beams, max_len), fill if fill is not None else 0, dtype=torch.long, device=device)
    live[:, :, :prompt_len] = prompt.view(batch, beams, prompt_len)  # [B, n, max_len]
    live_scores = torch.zeros(batch, beams, device=device)  # [B, n]
    live_scores[:, 1:] = _NO_SCORE  # the n copies of a prompt are one beam until the first step
    done, done_scores = live.clone(), torch.full((batch, beams), _NO_SCORE, device=device)
    done_flags = torch.zeros(batch, beams, dtype=torch.bool, device=device)  # [B, n] slot holds a hypothesis
    done_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)  # generated tokens of each
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)  # [B, 1]
    first_n = torch.arange(keep, device=device) < beams  # [2n]
    row_offset = torch.arange(batch, device=device)[:, None] * beams  # [B, 1]
    for cur in range(prompt_len, max_len):
        vocab = logits.shape[-1]
        log_probs = _process_scores(torch.log_softmax(logits.float(), dim=-1), cur, live[:, :, :cur].reshape(-1, cur),
                                    max_len, prompt_len, settings)
        log_probs = log_probs.view(batch, beams, vocab) + live_scores[:, :, None]
        cand_scores, cand_index = torch.topk(log_probs.view(batch, beams * vocab), keep)  # [B, 2n]
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        cand = live.gather(1, cand_beam[:, :, None].expand(-1, -1, max_len))  # [B, 2n, max_len], a copy
        cand[:, :, cur] = cand_token
        ended = torch.full_like(cand_token, cur + 1 >= max_len, dtype=torch.bool)  # [B, 2n]
        if eos is not None:
            ended |= cand_token.eq(eos)
        # The n best candidates that did not end stay live.
        live_cand_scores = cand_scores + ended.float() * _NO_SCORE
        pick = torch.topk(live_cand_scores, beams).indices  # [B, n]
        live = cand.gather(1, pick[:, :, None].expand(-1, -1, max_len))
        live_scores = live_cand_scores.gather(1, pick)
        parents = cand_beam.gather(1, pick)  # [B, n]
        # Ended candidates among the best n join the finished hypotheses if they beat the worst one.
        # The -1e9 penalties are added one by one, as transformers does, so ties round the same way.
        just_done = ended & first_n
        generated = cur + 1 - prompt_len
        final_scores = cand_scores / (generated ** settings.length_penalty)
        final_scores += (done_flags.all(dim=-1, keepdim=True) & (settings.early_stopping is True)).float() * _NO_SCORE
        final_scores += (~improvable).float() * _NO_SCORE
        final_scores += (~just_done).float() * _NO_SCORE
        merged_scores = torch.cat([done_scores, final_scores], dim=1)  # [B, 3n]
        best = torch.topk(merged_scores, beams).indices  # [B, n]
        done = torch.cat([done, cand], dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))
        done_scores = merged_scores.gather(1, best)
        done_flags = torch.cat([done_flags, just_done], dim=1).gather(1, best)
        done_lengths = torch.cat([done_lengths, torch.full_like(cand_token, generated)], dim=1).gather(1, best)
        # Can a live beam still beat the worst finished hypothesis?
        never = settings.early_stopping == "never" and settings.length_penalty > 0.0
        best_length = settings.max_new_tokens if never else generated
        best_live = live_scores[:, :1] / (best_length ** settings.length_penalty)  # [B, 1]
        worst_done = torch.where(done_flags, done_scores.min(dim=1, keepdim=True).values, _NO_SCORE)  # [B, n]
        improvable &= (best_live > worst_done).any(dim=-1, keepdim=True)
        all_full = settings.early_stopping is True and bool(done_flags.all())
        if not bool(improvable.any()) or all_full or bool(ended.all()):
            break
        cache.reorder((parents + row_offset).flatten())
        logits = model.step(live[:, :, cur].reshape(-1, 1), cache, None, last_only=True)[:, -1]  # [B * n, V]
    out_len = prompt_len + int(done_lengths[:, 0].max())
    return done[:, 0, :out_len]


# ---- entry points --------------------------------------------------------------------------------

def generate(model, input_ids: Tensor, attention_mask: Tensor | None = None, **settings) -> Tensor:
    """Greedy, sampling or beam-search generation for a model that follows this module's protocol.

    input_ids [B, S] long, left-padded for decoder-only models with attention_mask (1 = token,
    0 = padding) marking the padding; settings as GenerationSettings (keyword-only; see the module
    docstring). Returns long [B, S' + new]: the prompt (decoder-only) or the decoder start token
    (encoder-decoders) followed by the generated tokens; rows that ended early are filled with
    pad_token_id (the EOS token when the model has no padding token).
    """
    config = _settings(model, settings)
    with torch.inference_mode():
        if config.num_beams > 1:
            return _beam_search(model, input_ids, attention_mask, config)
        prompt, cache, logits = _start(model, input_ids, attention_mask, config)
        tokens = list(_next_tokens(model, cache, logits, config, prompt))
        return torch.cat([prompt, *(t[:, None] for t in tokens)], dim=1)


def stream(model, input_ids: Tensor, attention_mask: Tensor | None = None, **settings):
    """Like generate() without beams, yielding each step's new tokens (long [B]) as soon as they are
    chosen; stops when every row has produced EOS or after max_new_tokens steps."""
    config = _settings(model, settings)
    if config.num_beams != 1:
        raise ValueError(f"stream() yields one token per step, so it cannot do beam search; got "
                         f"num_beams={config.num_beams}")
    with torch.inference_mode():  # the prompt is checked and prefilled here, before the first token is asked for
        prompt, cache, logits = _start(model, input_ids, attention_mask, config)
    return _inference_steps(_next_tokens(model, cache, logits, config, prompt))


def _inference_steps(tokens):
    """Runs each step of the token iterator under inference_mode, leaving the caller's code between
    tokens outside it."""
    while True:
        with torch.inference_mode():
            token = next(tokens, None)
        if token is None:
            return
        yield token
