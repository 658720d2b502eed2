"""Every valid Hugging Face configuration of the seven families loads and runs (issue 15): awkward but valid
configs (odd head dims, one or several layers, tied and untied embeddings, each family's activation
functions, T5 v1.0 / v1.1 feed-forwards, BART / Marian embedding variants, vocab sizes, head classes), saved
by transformers with random weights, give transformers' fp32 outputs through ff.from_pretrained, and the
generators its greedy tokens; the structural cases also through ff.optimize. Each model is one to three tiny
layers (~0.3 s a case here, ~60 s the file at load average 6)."""
import copy

import pytest
import torch

import fastformer as ff

transformers = pytest.importorskip("transformers")

VOCAB = 61
# transformers' stateless activations (transformers/activations.py ACT2CLS; prelu and xielu carry weights).
ACTIVATIONS = ["gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
               "gelu_accurate", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2",
               "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh"]

BASE = {  # family -> (config class, tiny config)
    "bert": ("BertConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=37, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)),
    "roberta": ("RobertaConfig", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=37, max_position_embeddings=42, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, pad_token_id=1)),
    "distilbert": ("DistilBertConfig", dict(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=37,
                                            max_position_embeddings=40, dropout=0.0, attention_dropout=0.0)),
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=40, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, eos_token_id=2, bos_token_id=2)),
    "t5": ("T5Config", dict(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=37, num_layers=1, num_heads=2,
                            relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
    "bart": ("BartConfig", dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                decoder_ffn_dim=37, max_position_embeddings=40, dropout=0.0, pad_token_id=1,
                                bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)),
    "marian": ("MarianConfig", dict(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                    decoder_ffn_dim=37, max_position_embeddings=40, dropout=0.0, pad_token_id=VOCAB - 1,
                                    eos_token_id=0, decoder_start_token_id=VOCAB - 1, forced_eos_token_id=None)),
}
MODEL_CLASS = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM", "distilbert": "DistilBertForMaskedLM",
               "gpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration", "bart": "BartForConditionalGeneration",
               "marian": "MarianMTModel"}
GENERATORS = ("gpt2", "t5", "bart", "marian")
SEQ2SEQ = ("t5", "bart", "marian")


def _case(family, overrides=None, model_class=None):
    return family, overrides or {}, model_class or MODEL_CLASS[family]


def _activation_cases():
    """Each family's activations (through from_pretrained only: ff.optimize keeps transformers' own)."""
    cases = {}
    for act in ACTIVATIONS:
        cases[f"bert-{act}"] = _case("bert", dict(hidden_act=act))
    for family, key in (("roberta", "hidden_act"), ("distilbert", "activation"), ("gpt2", "activation_function"),
                        ("bart", "activation_function"), ("marian", "activation_function")):
        for act in ("relu", "gelu", "gelu_new", "gelu_fast", "silu", "quick_gelu", "tanh"):
            cases[f"{family}-{act}"] = _case(family, {key: act})
    for proj in ("relu", "gelu", "gelu_new", "silu", "gated-gelu", "gated-silu", "gated-relu", "gated-gelu_new",
                 "gated-gelu_fast"):
        cases[f"t5-{proj}"] = _case("t5", dict(feed_forward_proj=proj))
    return cases


def _structure_cases():
    return {
        # odd head dims (5, 1), several layers, untied heads, tiny and odd vocabularies, other eps
        "bert-head-dim-5": _case("bert", dict(hidden_size=15, num_attention_heads=3)),
        "bert-head-dim-1": _case("bert", dict(hidden_size=7, num_attention_heads=7)),
        "bert-3-layers": _case("bert", dict(num_hidden_layers=3)),
        "bert-untied": _case("bert", dict(tie_word_embeddings=False)),
        "bert-one-token-type": _case("bert", dict(type_vocab_size=1)),
        "bert-five-token-types": _case("bert", dict(type_vocab_size=5)),
        "bert-vocab-5": _case("bert", dict(vocab_size=5)),
        "bert-eps-1e-3": _case("bert", dict(layer_norm_eps=1e-3)),
        "bert-ffn-1": _case("bert", dict(intermediate_size=1)),
        "bert-no-pad": _case("bert", dict(pad_token_id=None)),
        "bert-base": _case("bert", model_class="BertModel"),
        "bert-regression": _case("bert", dict(num_labels=1), "BertForSequenceClassification"),
        "bert-3-labels": _case("bert", dict(num_labels=3), "BertForSequenceClassification"),
        "bert-token-classification": _case("bert", dict(num_labels=5), "BertForTokenClassification"),
        "bert-qa": _case("bert", model_class="BertForQuestionAnswering"),
        "roberta-pad-0": _case("roberta", dict(pad_token_id=0)),
        "roberta-pad-3": _case("roberta", dict(pad_token_id=3, max_position_embeddings=44)),
        "roberta-untied": _case("roberta", dict(tie_word_embeddings=False)),
        "roberta-head-dim-5": _case("roberta", dict(hidden_size=15, num_attention_heads=3)),
        "roberta-one-token-type": _case("roberta", dict(type_vocab_size=1)),
        "roberta-classification": _case("roberta", dict(num_labels=3), "RobertaForSequenceClassification"),
        "roberta-qa": _case("roberta", model_class="RobertaForQuestionAnswering"),
        "distilbert-sinusoidal": _case("distilbert", dict(sinusoidal_pos_embds=True)),
        "distilbert-untied": _case("distilbert", dict(tie_word_embeddings=False)),
        "distilbert-head-dim-5": _case("distilbert", dict(dim=15, n_heads=3)),
        "distilbert-3-layers": _case("distilbert", dict(n_layers=3)),
        "distilbert-classification": _case("distilbert", dict(num_labels=3), "DistilBertForSequenceClassification"),
        "distilbert-token-classification": _case("distilbert", model_class="DistilBertForTokenClassification"),
        "distilbert-qa": _case("distilbert", model_class="DistilBertForQuestionAnswering"),
        "gpt2-head-dim-5": _case("gpt2", dict(n_embd=15, n_head=3)),
        "gpt2-3-layers": _case("gpt2", dict(n_layer=3)),
        "gpt2-untied": _case("gpt2", dict(tie_word_embeddings=False)),
        "gpt2-n-inner-7": _case("gpt2", dict(n_inner=7)),
        "gpt2-unscaled": _case("gpt2", dict(scale_attn_weights=False)),
        "gpt2-scale-by-layer": _case("gpt2", dict(n_layer=3, scale_attn_by_inverse_layer_idx=True)),
        "gpt2-upcast": _case("gpt2", dict(reorder_and_upcast_attn=True)),
        "gpt2-eps-1e-3": _case("gpt2", dict(layer_norm_epsilon=1e-3)),
        "gpt2-no-pad": _case("gpt2", dict(pad_token_id=None)),
        "gpt2-classification": _case("gpt2", dict(num_labels=3), "GPT2ForSequenceClassification"),
        "gpt2-base": _case("gpt2", model_class="GPT2Model"),
        "t5-head-dim-5": _case("t5", dict(d_kv=5, num_heads=3)),
        "t5-odd-width": _case("t5", dict(d_model=31, d_kv=7)),
        "t5-decoder-layers-2": _case("t5", dict(num_decoder_layers=2)),
        "t5-3-layers": _case("t5", dict(num_layers=3)),
        "t5-untied": _case("t5", dict(tie_word_embeddings=False)),
        "t5-v1.1": _case("t5", dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
        "t5-default-buckets": _case("t5", dict(relative_attention_num_buckets=32, relative_attention_max_distance=128)),
        "t5-eps-1e-3": _case("t5", dict(layer_norm_epsilon=1e-3)),
        "t5-odd-buckets": _case("t5", dict(relative_attention_num_buckets=9, relative_attention_max_distance=7)),
        "bart-scaled-embeddings": _case("bart", dict(scale_embedding=True)),
        "bart-untied": _case("bart", dict(tie_word_embeddings=False)),
        "bart-uneven": _case("bart", dict(encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                          decoder_attention_heads=2, encoder_ffn_dim=11, decoder_ffn_dim=23)),
        "bart-head-dim-5": _case("bart", dict(d_model=15, encoder_attention_heads=3, decoder_attention_heads=3)),
        "bart-vocab-7": _case("bart", dict(vocab_size=7)),
        "marian-unscaled": _case("marian", dict(scale_embedding=False)),
        "marian-scaled": _case("marian", dict(scale_embedding=True)),
        "marian-untied": _case("marian", dict(tie_word_embeddings=False)),
        "marian-own-decoder-vocab": _case("marian", dict(share_encoder_decoder_embeddings=False,
                                                         decoder_vocab_size=VOCAB + 6, tie_word_embeddings=False)),
        "marian-uneven": _case("marian", dict(encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                                              decoder_ffn_dim=11)),
        "marian-head-dim-5": _case("marian", dict(d_model=15, encoder_attention_heads=3, decoder_attention_heads=3)),
    }


STRUCTURE_CASES = _structure_cases()
CASES = {**_activation_cases(), **STRUCTURE_CASES}


def _save(tmp_path, family, overrides, model_class):
    config_class, base = BASE[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**base, **overrides})
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # fresh values where transformers initializes constants (norms, biases)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.add_(0.5 * torch.randn_like(model.final_logits_bias))
    model.save_pretrained(tmp_path)
    return model, config


def _batch(family, config):
    """Two rows, the second padded (left-padded for GPT-2, which continues prompts)."""
    vocab, pad = config.vocab_size, config.pad_token_id
    pad = 0 if pad is None else pad
    ids = torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(1)) if vocab > 3 else \
        torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    if family == "gpt2":
        mask = mask.flip(1)
    return ids.masked_fill(mask == 0, pad), mask


def _outputs(out) -> dict:
    names = ("logits", "start_logits", "end_logits", "last_hidden_state")
    if isinstance(out, torch.Tensor):
        return {"last_hidden_state": out}
    return {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}


def _compare(name: str, tmp_path, model_fn):
    """Saves case `name`, builds our model with model_fn(folder, transformers model), and checks its outputs on a
    padded batch against transformers'. Returns (family, transformers model, ours, ids, mask, generate kwargs)."""
    family, overrides, model_class = CASES[name]
    theirs, config = _save(tmp_path, family, overrides, model_class)
    ids, mask = _batch(family, config)
    ours = model_fn(tmp_path, theirs)
    kwargs = {"decoder_input_ids": ids[:, :5]} if family in SEQ2SEQ else {}
    # transformers 5.25's T5 sizes its cache by num_layers and fails with more decoder layers (IndexError).
    uncached = {"use_cache": False} if family == "t5" else {}
    with torch.no_grad():
        want = _outputs(theirs(input_ids=ids, attention_mask=mask, **kwargs, **uncached))
        ours_uncached = uncached if isinstance(ours, transformers.PreTrainedModel) else {}
        got = _outputs(ours(input_ids=ids, attention_mask=mask, **kwargs, **ours_uncached))
    assert sorted(got) == sorted(want), f"{name}: outputs {sorted(got)}, transformers gives {sorted(want)}"
    keep = mask.bool() if family not in SEQ2SEQ else slice(None)  # padded positions are read by nobody
    for key, w in want.items():
        g = got[key]
        if w.dim() >= 2 and w.shape[:2] == mask.shape:
            w, g = w[keep], g[keep]
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * max(1.0, w.abs().max().item()),
                                   msg=lambda m: f"{name} {key}: {m}")
    generates = family in GENERATORS and model_class == MODEL_CLASS[family]
    return theirs, ours, ids, mask, (dict(max_new_tokens=5, **uncached) if generates else None)


@pytest.mark.parametrize("name", CASES)
def test_config_runs_like_transformers(tmp_path, name):
    theirs, ours, ids, mask, generate = _compare(name, tmp_path, lambda folder, _: ff.from_pretrained(folder))
    # Every weight transformers saved is used, and none is made up.
    assert ours.load_report["missing"] == [] and ours.load_report["unexpected"] == [], ours.load_report
    if generate is not None:
        expected = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **generate)
        generate.pop("use_cache", None)
        torch.testing.assert_close(ours.generate(ids, mask, **generate), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", STRUCTURE_CASES)
def test_optimized_config_runs_like_transformers(tmp_path, name):
    """ff.optimize on the transformers model itself: the same outputs and greedy tokens."""
    theirs, optimized, ids, mask, generate = _compare(name, tmp_path,
                                                      lambda _, model: ff.optimize(copy.deepcopy(model)))
    if generate is not None:
        settings = dict(do_sample=False, num_beams=1, **generate)
        expected = theirs.generate(input_ids=ids, attention_mask=mask, **settings)
        torch.testing.assert_close(optimized.generate(input_ids=ids, attention_mask=mask, **settings), expected,
                                   rtol=0, atol=0)
