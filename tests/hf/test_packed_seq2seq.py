"""ff.optimize on T5 / BART / Marian generation models: the encoder stack runs a padded batch on its real tokens only
(fastformer.hf.packed_encoder). The decoder reads the encoder through its padding mask, so logits and generate()
tokens are transformers' own; the encoder's output is transformers' on real positions and zeros on padded ones."""
import pytest
import torch
import transformers

import fastformer as ff
from tests import seq2seq_checkpoints
from tests.models.test_packing import padded_batch

FAMILIES = ["t5", "bart", "marian"]
LENGTHS = {"one-token-row": [13, 1, 7, 4], "no-padding": [13, 13, 13]}
LAYERS = 2  # encoder layers of every tiny checkpoint


def _pair(tmp_path, family):
    """transformers' model (sdpa, unoptimized) and an optimized copy of the same saved checkpoint."""
    reference, path = seq2seq_checkpoints.save_tiny(tmp_path, family)
    optimized = type(reference).from_pretrained(path).eval()
    assert ff.optimization_report(ff.optimize(optimized))["packed_encoder"] == 1
    return reference, optimized


def _source(family, lengths, side="right"):
    pad = seq2seq_checkpoints.FAMILIES[family][1].get("pad_token_id", 0)
    return padded_batch(family, lengths, side, pad=pad, vocab=seq2seq_checkpoints.VOCAB - 1)


def _assert_close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_encoder_output_match_transformers(tmp_path, family, lengths, side, varlen_calls):
    reference, optimized = _pair(tmp_path, family)
    ids, mask = _source(family, lengths, side)
    decoder_ids = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(lengths), 5))
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
        got = optimized(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    _assert_close(got.logits, want.logits)
    real = mask.bool()
    _assert_close(got.encoder_last_hidden_state[real], want.encoder_last_hidden_state[real])
    assert not got.encoder_last_hidden_state[~real].any()  # the packed encoder leaves zeros where it is padded
    assert len(varlen_calls) == (LAYERS if not real.all() else 0)  # one per encoder layer, only when padded


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_gives_transformers_tokens(tmp_path, family, varlen_calls):
    reference, optimized = _pair(tmp_path, family)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    for lengths in LENGTHS.values():
        ids, mask = _source(family, lengths)
        for beams in (1, 3):
            want = reference.generate(input_ids=ids, attention_mask=mask, num_beams=beams, **settings)
            calls_before = len(varlen_calls)
            got = optimized.generate(input_ids=ids, attention_mask=mask, num_beams=beams, **settings)
            assert torch.equal(got, want), (lengths, beams)
            assert len(varlen_calls) - calls_before == (LAYERS if not mask.all() else 0)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_backend_reaches_the_packed_attention(tmp_path, backend, varlen_calls):
    reference, path = seq2seq_checkpoints.save_tiny(tmp_path, "t5")
    optimized = ff.optimize(type(reference).from_pretrained(path).eval(), backend=backend)
    ids, mask = _source("t5", LENGTHS["one-token-row"])
    decoder_ids = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(ids), 3))
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = optimized(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    _assert_close(got, want)
    assert [call["backend"] for call in varlen_calls] == [backend] * LAYERS


@pytest.mark.parametrize("family", FAMILIES)
def test_requested_hidden_states_run_dense(tmp_path, family, varlen_calls):
    reference, optimized = _pair(tmp_path, family)
    ids, mask = _source(family, LENGTHS["one-token-row"])
    decoder_ids = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(ids), 3))
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, output_hidden_states=True)
        got = optimized(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, output_hidden_states=True)
    assert not varlen_calls
    for g, w in zip(got.encoder_hidden_states, want.encoder_hidden_states, strict=True):
        _assert_close(g, w)  # every position, padded ones included


def test_encoder_called_directly_and_layer_drop(tmp_path, varlen_calls):
    """model.get_encoder() called on its own packs too (return_dict=False gives the tuple); layer drop in training
    could skip the first layer, which packs, so it runs dense."""
    reference, optimized = _pair(tmp_path, "bart")
    ids, mask = _source("bart", LENGTHS["one-token-row"])
    real = mask.bool()
    with torch.no_grad():
        want = reference.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = optimized.get_encoder()(input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(got, tuple) and len(varlen_calls) == LAYERS
    _assert_close(got[0][real], want[real])
    assert not got[0][~real].any()
    optimized.train().get_encoder().layerdrop = 1e-6  # on, but no layer is dropped: packing would call varlen
    optimized.get_encoder()(input_ids=ids, attention_mask=mask)
    assert len(varlen_calls) == LAYERS


def test_t5_gradients_match_transformers_with_checkpointing(tmp_path, varlen_calls):
    """The relative bias table gets its gradient through the packed kernel, recomputed under checkpointing."""
    reference, optimized = _pair(tmp_path, "t5")
    ids, mask = _source("t5", LENGTHS["one-token-row"])
    labels = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(ids), 4))
    for model in (reference, optimized):
        model.train()
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert varlen_calls
    for name in ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "shared.weight",
                 "encoder.block.1.layer.1.DenseReluDense.wi.weight"):
        want = reference.get_parameter(name).grad
        torch.testing.assert_close(optimized.get_parameter(name).grad, want, rtol=1e-4,
                                   atol=1e-4 * want.abs().max().item())


BARE = ["T5Model", "BartModel", "MarianModel", "T5EncoderModel"]


@pytest.mark.parametrize("name", BARE)
def test_models_showing_encoder_outputs_pack_only_when_asked(tmp_path, name, varlen_calls):
    """Default: dense. pack_padding=True: the encoder's output on real positions is transformers', zeros elsewhere."""
    family = name[:-len("EncoderModel" if "Encoder" in name else "Model")].lower()
    _, path = seq2seq_checkpoints.save_tiny(tmp_path, family)
    model_cls = getattr(transformers, name)
    reference, dense, packed = (model_cls.from_pretrained(path).eval() for _ in range(3))
    assert ff.optimization_report(ff.optimize(dense)).get("packed_encoder", 0) == 0
    assert ff.optimization_report(ff.optimize(packed, pack_padding=True))["packed_encoder"] == 1
    ids, mask = _source(family, LENGTHS["one-token-row"])
    inputs = dict(input_ids=ids, attention_mask=mask)
    if name != "T5EncoderModel":
        inputs["decoder_input_ids"] = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(ids), 4))
    key = "last_hidden_state" if name == "T5EncoderModel" else "encoder_last_hidden_state"
    with torch.no_grad():
        want, got_dense = reference(**inputs), dense(**inputs)
        assert not varlen_calls
        got = packed(**inputs)
        assert len(varlen_calls) == LAYERS
    real = mask.bool()
    _assert_close(got_dense[key], want[key])
    _assert_close(got[key][real], want[key][real])
    assert not got[key][~real].any()
    if name != "T5EncoderModel":
        _assert_close(got.last_hidden_state, want.last_hidden_state)  # the decoder's: every position
