"""The config.json fields the family adapters read, checked before they run: a field of the wrong type or
out of range is a CheckpointError naming the file and the field (not a model with -1 layers that silently
computes nothing, nor an error deep inside torch), a size field the file lacks gets transformers' default
(the value its config class would use), and a hidden size that the head count does not divide says so.

FIELDS: model_type -> {field: (kind, transformers' default or None)}; a field with a default is filled in
when missing, one without is checked only when present. Kinds: "size" (int >= 1), "optional size"
(int >= 1 or null), "probability" (number in [0, 1], or null for "optional probability"), "epsilon"
(number > 0).
"""
from fastformer.hf.checkpoint import CheckpointError

_BERT = {
    "vocab_size": ("size", 30522), "hidden_size": ("size", 768), "num_hidden_layers": ("size", 12),
    "num_attention_heads": ("size", 12), "intermediate_size": ("size", 3072),
    "max_position_embeddings": ("size", None), "type_vocab_size": ("size", None), "layer_norm_eps": ("epsilon", None),
    "hidden_dropout_prob": ("probability", None), "attention_probs_dropout_prob": ("probability", None),
    "classifier_dropout": ("optional probability", None),
}
_BART = {
    "vocab_size": ("size", 50265), "d_model": ("size", 1024), "encoder_layers": ("size", 12),
    "decoder_layers": ("size", 12), "encoder_attention_heads": ("size", 16), "decoder_attention_heads": ("size", 16),
    "encoder_ffn_dim": ("size", 4096), "decoder_ffn_dim": ("size", 4096), "max_position_embeddings": ("size", None),
    "decoder_vocab_size": ("optional size", None), "dropout": ("probability", None),
    "attention_dropout": ("probability", None),
}
FIELDS = {
    "bert": _BERT,
    "roberta": {**_BERT, "vocab_size": ("size", 50265)},
    "distilbert": {
        "vocab_size": ("size", 30522), "dim": ("size", 768), "n_layers": ("size", 6), "n_heads": ("size", 12),
        "hidden_dim": ("size", 3072), "max_position_embeddings": ("size", None), "dropout": ("probability", None),
        "attention_dropout": ("probability", None), "seq_classif_dropout": ("probability", None),
        "qa_dropout": ("probability", None),
    },
    "gpt2": {
        "vocab_size": ("size", 50257), "n_embd": ("size", 768), "n_layer": ("size", 12), "n_head": ("size", 12),
        "n_inner": ("optional size", None), "n_positions": ("size", None), "layer_norm_epsilon": ("epsilon", None),
        "resid_pdrop": ("probability", None), "attn_pdrop": ("probability", None),
        "summary_first_dropout": ("optional probability", None),
    },
    "t5": {
        "vocab_size": ("size", 32128), "d_model": ("size", 512), "d_kv": ("size", 64), "d_ff": ("size", 2048),
        "num_layers": ("size", 6), "num_heads": ("size", 8), "num_decoder_layers": ("optional size", None),
        "relative_attention_num_buckets": ("size", None), "relative_attention_max_distance": ("size", None),
        "layer_norm_epsilon": ("epsilon", None), "dropout_rate": ("probability", None),
    },
    "bart": _BART,
    "marian": {**_BART, "vocab_size": ("size", 58101)},
}
# model_type -> (hidden size field, head count fields): attention splits the hidden size into equal heads
# (T5 sizes its heads with d_kv instead).
HEAD_SPLITS = {
    "bert": ("hidden_size", ("num_attention_heads",)), "roberta": ("hidden_size", ("num_attention_heads",)),
    "distilbert": ("dim", ("n_heads",)), "gpt2": ("n_embd", ("n_head",)),
    "bart": ("d_model", ("encoder_attention_heads", "decoder_attention_heads")),
    "marian": ("d_model", ("encoder_attention_heads", "decoder_attention_heads")),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(kind: str, value) -> str | None:
    """Why `value` is not a valid `kind`, or None."""
    if value is None and kind.startswith("optional "):
        return None
    kind = kind.removeprefix("optional ")
    if kind == "size":
        return None if _is_int(value) and value >= 1 else "must be an integer >= 1"
    if kind == "probability":
        return None if _is_number(value) and 0.0 <= value <= 1.0 else "must be a number in [0, 1]"
    if kind == "epsilon":
        return None if _is_number(value) and value > 0.0 else "must be a number > 0"
    raise AssertionError(kind)


def checked_config(hf: dict, config_file: str) -> dict:
    """hf (config.json's contents) with its model_type's FIELDS checked and missing sizes defaulted as
    transformers does; other model_types pass through unchanged."""
    fields = FIELDS.get(hf.get("model_type"))
    if fields is None:
        return hf
    checked = dict(hf)
    for name, (kind, default) in fields.items():
        if name not in checked:
            if default is None:
                continue
            checked[name] = default
        problem = _problem(kind, checked[name])
        if problem:
            raise CheckpointError(f"{config_file}: {name} {problem}, got {checked[name]!r} "
                                  f"({type(checked[name]).__name__})")
    hidden_field, head_fields = HEAD_SPLITS.get(hf["model_type"], (None, ()))
    for heads_field in head_fields:
        if checked[hidden_field] % checked[heads_field]:
            raise CheckpointError(f"{config_file}: {hidden_field}={checked[hidden_field]} is not divisible by "
                                  f"{heads_field}={checked[heads_field]} (attention splits it into equal heads)")
    return checked
