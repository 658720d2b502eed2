"""T5, BART and Marian: Hugging Face config -> Seq2SeqConfig, and one key map per family."""
import dataclasses

from fastformer.models.config import ModelConfig
from fastformer.models.seq2seq import Seq2SeqConfig
from fastformer.nn.activation import activation_name

# Generation defaults a checkpoint's config.json may carry (older checkpoints keep them there rather
# than in generation_config.json).
_GENERATION_KEYS = ("max_length", "num_beams", "length_penalty", "no_repeat_ngram_size", "early_stopping",
                    "forced_bos_token_id", "forced_eos_token_id", "min_length", "bad_words_ids",
                    "task_specific_params")


def _generation(hf: dict) -> dict:
    return {k: hf[k] for k in _GENERATION_KEYS if hf.get(k) is not None}


def _eos(hf: dict, default: int) -> int | None:
    """generate() stops on one EOS token; a config listing several (allowed by transformers) gives its first."""
    eos = hf.get("eos_token_id", default)
    return eos[0] if isinstance(eos, list) and eos else eos


def _t5_activation(feed_forward_proj: str) -> tuple[str, bool]:
    """(activation, gated) from T5's feed_forward_proj: "relu", "gated-gelu" (tanh GELU, kept so for
    compatibility), "gated-silu", ..."""
    parts = feed_forward_proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"unsupported feed_forward_proj {feed_forward_proj!r} in config.json")
    if feed_forward_proj == "gated-gelu":
        return "gelu_tanh", True
    return activation_name(parts[-1], "feed_forward_proj"), gated


def t5_config(hf: dict) -> Seq2SeqConfig:
    activation, gated = _t5_activation(hf.get("feed_forward_proj", "relu"))
    encoder = ModelConfig(
        model_type="t5", vocab_size=hf["vocab_size"], hidden_size=hf["d_model"], num_layers=hf["num_layers"],
        num_heads=hf["num_heads"], intermediate_size=hf["d_ff"], attention_head_dim=hf["d_kv"],
        activation=activation, gated_ffn=gated, norm="rms", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        pre_norm=True, embedding_norm=False, position="relative", pad_token_id=hf.get("pad_token_id", 0) or 0,
        embedding_padding_idx=False, bias=False, attention_scale=False, dropout=hf.get("dropout_rate", 0.1),
        attention_dropout=hf.get("dropout_rate", 0.1))
    decoder = dataclasses.replace(encoder, num_layers=hf.get("num_decoder_layers") or hf["num_layers"])
    tied = hf.get("tie_word_embeddings", True) is not False
    return Seq2SeqConfig(
        encoder=encoder, decoder=decoder, pad_token_id=encoder.pad_token_id,
        decoder_start_token_id=hf.get("decoder_start_token_id", encoder.pad_token_id) or 0,
        eos_token_id=_eos(hf, 1), tie_lm_head=tied,
        # transformers 5 writes scale_decoder_outputs; older configs imply it by tie_word_embeddings.
        logits_scale=hf["d_model"] ** -0.5 if hf.get("scale_decoder_outputs", tied) else 1.0,
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), generation=_generation(hf))


def bart_config(hf: dict) -> Seq2SeqConfig:
    """BART and Marian: post-norm LayerNorm blocks; BART has learned positions (offset 2) and a
    LayerNorm on the embeddings, Marian fixed sinusoidal positions and scaled embeddings."""
    marian = hf["model_type"] == "marian"
    # Flags of older configs (fairseq ports) for variants these classes no longer build: pre-norm (mBART),
    # a final LayerNorm, a separate logits bias, a LayerNorm on Marian's embeddings.
    unsupported = ["normalize_before", "add_final_layer_norm", "add_bias_logits"]
    if marian:
        unsupported.append("normalize_embedding")
    for key in unsupported:
        if hf.get(key):
            raise ValueError(f"{hf['model_type']} with {key}=true in config.json is not supported")
    d_model = hf["d_model"]
    encoder = ModelConfig(
        model_type=hf["model_type"], vocab_size=hf["vocab_size"], hidden_size=d_model,
        num_layers=hf["encoder_layers"], num_heads=hf["encoder_attention_heads"],
        intermediate_size=hf["encoder_ffn_dim"],
        activation=activation_name(hf.get("activation_function", "gelu"), "activation_function"),
        norm_eps=1e-5, embedding_norm=not marian, position="sinusoidal" if marian else "learned",
        max_positions=hf.get("max_position_embeddings", 1024), pad_token_id=hf.get("pad_token_id", 1),
        dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0))
    # transformers 5 ties nothing when tie_word_embeddings is false: the encoder and decoder then read their
    # own embed_tokens (and `shared` is unused), the head its own lm_head.
    tied = hf.get("tie_word_embeddings", True) is not False
    share = hf.get("share_encoder_decoder_embeddings", True) and tied
    decoder = dataclasses.replace(
        encoder, num_layers=hf["decoder_layers"], num_heads=hf["decoder_attention_heads"],
        intermediate_size=hf["decoder_ffn_dim"],
        vocab_size=hf["vocab_size"] if share else (hf.get("decoder_vocab_size") or hf["vocab_size"]))
    return Seq2SeqConfig(
        encoder=encoder, decoder=decoder, pad_token_id=encoder.pad_token_id,
        decoder_start_token_id=hf.get("decoder_start_token_id", 2), eos_token_id=_eos(hf, 2),
        embedding_scale=d_model ** 0.5 if hf.get("scale_embedding", False) else 1.0,
        position_offset=0 if marian else 2, share_embeddings=share,
        tie_lm_head=tied, final_logits_bias=True,
        generation=_generation(hf))


def _stack_keys(ours: str, theirs: str, self_attn: str, cross_attn: str | None, ffn: tuple, norms: tuple,
                projections: tuple) -> list:
    """Key-map lines for one stack. theirs: the checkpoint's layer prefix; self_attn / cross_attn: their
    attention module paths; ffn: (up, gate, down) paths, up may be a tuple of alternatives; norms: their
    norm paths in our order (attn_norm, [cross_norm,] ffn_norm); projections: (q, k, v, out) names."""
    q, k, v, o = projections
    layer = f"{ours}.layers.{{i}}."
    lines = [(layer + "attn.qkv.{w}", tuple(f"{theirs}{self_attn}.{n}.{{w}}" for n in (q, k, v))),
             (layer + "attn.out.{w}", f"{theirs}{self_attn}.{o}.{{w}}")]
    if cross_attn is not None:
        lines += [(layer + "cross_attn.q.{w}", f"{theirs}{cross_attn}.{q}.{{w}}"),
                  (layer + "cross_attn.kv.{w}", tuple(f"{theirs}{cross_attn}.{n}.{{w}}" for n in (k, v))),
                  (layer + "cross_attn.out.{w}", f"{theirs}{cross_attn}.{o}.{{w}}")]
    ups, gate, down = ffn
    lines += [(layer + "ffn.up.{w}", f"{theirs}{up}.{{w}}") for up in (ups if isinstance(ups, tuple) else (ups,))]
    if gate is not None:
        lines.append((layer + "ffn.gate.{w}", f"{theirs}{gate}.{{w}}"))
    lines.append((layer + "ffn.down.{w}", f"{theirs}{down}.{{w}}"))
    ours_norms = ("attn_norm", "cross_norm", "ffn_norm") if cross_attn is not None else ("attn_norm", "ffn_norm")
    lines += [(layer + f"{n}.{{w}}", f"{theirs}{t}.{{w}}") for n, t in zip(ours_norms, norms)]
    return lines


def _embedding_keys(prefix_theirs: str) -> list:
    """Our names of the token tables (shared = the encoder's, the decoder's) and the LM head, which alias
    one another when tied: the checkpoint may store the table under `shared` or under each stack's
    embed_tokens (untied, these are what the stacks read: `shared` is then unused), and the head as
    lm_head (untied) or not at all (tied to the decoder's table)."""
    shared, enc, dec = (f"{prefix_theirs}{n}.weight" for n in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"))
    return [("shared.weight", enc), ("shared.weight", shared),
            ("encoder.embeddings.word.weight", enc), ("encoder.embeddings.word.weight", shared),
            ("decoder.embeddings.word.weight", dec), ("decoder.embeddings.word.weight", shared),
            ("lm_head.weight", "lm_head.weight"), ("lm_head.weight", dec), ("lm_head.weight", shared)]


_T5_PROJECTIONS = ("q", "k", "v", "o")


def _t5_ffn(sublayer: int) -> tuple:
    """(up alternatives, gate, down) of T5's feed-forward sublayer: wi (v1.0) or wi_1 with gate wi_0 (v1.1)."""
    ff = f"layer.{sublayer}.DenseReluDense."
    return (ff + "wi", ff + "wi_1"), ff + "wi_0", ff + "wo"


T5_KEYS = [
    *_embedding_keys("{p}"),
    ("encoder.relative_bias.weight", "{p}encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("decoder.relative_bias.weight", "{p}decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
    *_stack_keys("encoder", "{p}encoder.block.{i}.", "layer.0.SelfAttention", None, _t5_ffn(1),
                 ("layer.0.layer_norm", "layer.1.layer_norm"), _T5_PROJECTIONS),
    *_stack_keys("decoder", "{p}decoder.block.{i}.", "layer.0.SelfAttention", "layer.1.EncDecAttention",
                 _t5_ffn(2), ("layer.0.layer_norm", "layer.1.layer_norm", "layer.2.layer_norm"), _T5_PROJECTIONS),
    ("encoder.final_norm.weight", "{p}encoder.final_layer_norm.weight"),
    ("decoder.final_norm.weight", "{p}decoder.final_layer_norm.weight"),
]

_BART_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
BART_KEYS = [
    *_embedding_keys("{p}"),
    ("encoder.embeddings.position.weight", "{p}encoder.embed_positions.weight"),
    ("decoder.embeddings.position.weight", "{p}decoder.embed_positions.weight"),
    ("encoder.embeddings.norm.{w}", "{p}encoder.layernorm_embedding.{w}"),
    ("decoder.embeddings.norm.{w}", "{p}decoder.layernorm_embedding.{w}"),
    *_stack_keys("encoder", "{p}encoder.layers.{i}.", "self_attn", None, ("fc1", None, "fc2"),
                 ("self_attn_layer_norm", "final_layer_norm"), _BART_PROJECTIONS),
    *_stack_keys("decoder", "{p}decoder.layers.{i}.", "self_attn", "encoder_attn", ("fc1", None, "fc2"),
                 ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm"), _BART_PROJECTIONS),
    ("final_logits_bias", "final_logits_bias"),
]

# model_type -> (config adapter, key map, base-model prefix, checkpoint keys that carry nothing we need)
FAMILIES = {
    "t5": (t5_config, T5_KEYS, "", (r"EncDecAttention\.relative_attention_bias\.",)),
    # Untied (tie_word_embeddings false), the stacks read their own embed_tokens and `shared` is unused.
    "bart": (bart_config, BART_KEYS, "model.", (r"^model\.shared\.weight$",)),
    # Marian's sinusoidal tables are fixed (some older checkpoints still store them).
    "marian": (bart_config, BART_KEYS, "model.", (r"embed_positions\.weight$", r"^model\.shared\.weight$")),
}
