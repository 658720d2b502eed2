"""Native T5 (v1.0 and gated v1.1), BART and Marian against Hugging Face transformers, loaded from tiny
random checkpoints saved with save_pretrained (no network)."""
import json

import pytest
import torch

import fastformer as ff
from fastformer.ops import _t5_bias
from fastformer.models import block as block_module
from tests.fused_blocks import count_op_calls
from tests.seq2seq_checkpoints import FAMILIES, VOCAB, save_tiny, source_batch


def assert_close_rel(ours, theirs, rel=1e-4):
    scale = theirs.abs().max().clamp(min=1e-6)
    assert (ours - theirs).abs().max() / scale <= rel, f"max rel diff {((ours - theirs).abs().max() / scale):.3g}"


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_logits_match_transformers_fp32(tmp_path, family, padded):
    # T5 with more decoder than encoder layers (transformers' generate cannot run that one).
    theirs, path = save_tiny(tmp_path, family, **({"num_decoder_layers": 3} if family == "t5" else {}))
    ours = ff.from_pretrained(path)
    assert ours.load_report["task"] == "seq2seq-lm" and not ours.load_report["missing"]
    assert not ours.load_report["unexpected"]
    ids, mask = source_batch(family, padded)
    decoder_ids = torch.randint(3, VOCAB - 1, (3, 24))  # 24 > max_distance: saturated T5 buckets too
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert_close_rel(got, want)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_labels_give_transformers_loss(tmp_path, family):
    theirs, path = save_tiny(tmp_path, family)
    ours = ff.from_pretrained(path)
    ids, mask = source_batch(family, padded=True)
    labels = torch.randint(3, VOCAB - 1, (3, 6))
    labels[2, 4:] = -100  # ignored positions
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, attention_mask=mask, labels=labels)
    assert_close_rel(got.logits, want.logits)
    assert_close_rel(got.loss, want.loss)


# The tiny checkpoints' own forced EOS is switched off so that the plain greedy / beam tests see rows
# end early; test_checkpoint_logits_processors_match_transformers covers the processors.
NO_FORCED = dict(forced_eos_token_id=None)


def generation_pair(tmp_path, family):
    theirs, path = save_tiny(tmp_path, family, **(NO_FORCED if family in ("bart", "marian") else {}))
    return theirs, ff.from_pretrained(path)


def greedy_eos(theirs, ids, mask):
    """An EOS token that ends row 0 after 3 tokens, so finished rows are padded while others go on."""
    return int(theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)[0, 3])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_matches_transformers(tmp_path, family):
    theirs, ours = generation_pair(tmp_path, family)
    ids, mask = source_batch(family, padded=True)
    settings = dict(max_new_tokens=10, eos_token_id=greedy_eos(theirs, ids, mask))  # row 0 ends, the others go on
    want = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **settings)
    got = ours.generate(ids, mask, **settings)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_matches_transformers(tmp_path, family):
    theirs, ours = generation_pair(tmp_path, family)
    ids, mask = source_batch(family, padded=True)
    eos = greedy_eos(theirs, ids, mask)
    settings = dict(max_new_tokens=8, num_beams=3, eos_token_id=eos, length_penalty=0.8)
    want = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False, **settings)
    got = ours.generate(ids, mask, **settings)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_checkpoint_logits_processors_match_transformers(tmp_path, num_beams):
    """The processors real BART / Marian checkpoints set: forced BOS and EOS, min_length, no-repeat n-grams,
    a banned token."""
    theirs, ours = generation_pair(tmp_path, "bart")
    ids, mask = source_batch("bart", padded=True)
    settings = dict(max_new_tokens=9, num_beams=num_beams, eos_token_id=greedy_eos(theirs, ids, mask),
                    forced_bos_token_id=5, forced_eos_token_id=6, min_length=5, no_repeat_ngram_size=2,
                    bad_words_ids=[[7]])
    want = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False, **settings)
    got = ours.generate(ids, mask, **settings)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_stream_and_sampling(tmp_path):
    _, ours = generation_pair(tmp_path, "t5")
    ids, mask = source_batch("t5", padded=True)
    greedy = ours.generate(ids, mask, max_new_tokens=6)
    streamed = torch.stack(list(ours.stream(ids, mask, max_new_tokens=6)), dim=1)
    torch.testing.assert_close(streamed, greedy[:, 1:], rtol=0, atol=0)
    sampled = [ours.generate(ids, mask, max_new_tokens=6, do_sample=True, seed=7, top_p=0.9) for _ in range(2)]
    torch.testing.assert_close(sampled[0], sampled[1], rtol=0, atol=0)
    top1 = ours.generate(ids, mask, max_new_tokens=6, do_sample=True, top_k=1, seed=3)
    torch.testing.assert_close(top1, greedy, rtol=0, atol=0)


def test_cross_attention_keys_are_computed_once_per_input(tmp_path, monkeypatch):
    _, ours = generation_pair(tmp_path, "bart")
    ids, mask = source_batch("bart", padded=True)
    calls = []
    for layer in ours.decoder.layers:
        original = layer.cross_attn.project_memory
        monkeypatch.setattr(layer.cross_attn, "project_memory",
                            lambda memory, original=original: calls.append(memory.shape) or original(memory))
    ours.generate(ids, mask, max_new_tokens=5, num_beams=2)
    assert calls == [(3, ids.shape[1], 64)] * len(ours.decoder.layers)  # once per block, for the 3 inputs


@pytest.mark.parametrize("family", ["bart", "marian"])
def test_source_longer_than_positions_is_rejected(tmp_path, family):
    _, ours = generation_pair(tmp_path, family)
    ids = torch.randint(3, VOCAB - 1, (1, 41))
    with pytest.raises(ValueError, match="input_ids needs 41 positions"):
        ours.generate(ids, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens=40"):
        ours.generate(ids[:, :5], max_new_tokens=40)


def test_bad_inputs_name_the_argument(tmp_path):
    _, ours = generation_pair(tmp_path, "t5")
    ids, mask = source_batch("t5", padded=True)
    with pytest.raises(ValueError, match="input_ids is empty"):
        ours.generate(ids[:, :0])
    with pytest.raises(ValueError, match="attention_mask"):
        ours.generate(ids, mask[:, :3])
    with pytest.raises(ValueError, match=r"decoder_input_ids \(teacher forcing\) or labels"):
        ours(ids, mask)
    with pytest.raises(TypeError, match="decoder_input_ids must be an int64"):
        ours(ids, mask, decoder_input_ids=ids.float())
    with pytest.raises(ValueError, match="num_beams"):
        ours.generate(ids, num_beams=0)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_gradients_match_transformers(tmp_path, family, monkeypatch):
    """Training: the loss gradients reach every weight as in transformers (T5's bias table through the
    in-kernel relative bias, the tied embeddings through encoder, decoder and head)."""
    monkeypatch.setattr(_t5_bias, "_LUT_CACHE", {})  # so that generate() below makes the bucket tables
    theirs, path = save_tiny(tmp_path, family)
    ours = ff.from_pretrained(path)
    ids, mask = source_batch(family, padded=True)
    ours.generate(ids, mask, max_new_tokens=2)  # inference-mode state (T5's cached bucket table) must not leak
    ours.train()
    theirs.train()
    labels = torch.randint(3, VOCAB - 1, (3, 6))
    ours(ids, attention_mask=mask, labels=labels).loss.backward()
    theirs(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    pairs = {"shared.weight": "shared.weight",
             "encoder.layers.1.ffn.down.weight": ("encoder.block.1.layer.1.DenseReluDense.wo.weight"
                                                  if family == "t5" else "model.encoder.layers.1.fc2.weight")}
    if family == "t5":
        pairs["encoder.relative_bias.weight"] = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        pairs["decoder.relative_bias.weight"] = "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    else:
        pairs["shared.weight"] = "model.shared.weight"
    ours_params, their_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    for mine, their in pairs.items():
        assert_close_rel(ours_params[mine].grad, their_params[their].grad, rel=1e-4)


@pytest.mark.parametrize("family, flag", [("bart", "normalize_before"), ("marian", "normalize_embedding")])
def test_unsupported_config_variants_are_rejected(tmp_path, family, flag):
    _, path = save_tiny(tmp_path, family)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, flag: True}))
    with pytest.raises(ValueError, match=f"{flag}=true"):
        ff.from_pretrained(path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_encoder_runs_fused_blocks_where_they_apply(tmp_path, monkeypatch, family, padded):
    """BART's and Marian's post-norm encoder blocks run through the fused encoder op in inference, with the
    Python blocks' output bit for bit; T5's (pre-norm, relative bias) keep their modules."""
    _, path = save_tiny(tmp_path, family)
    model = ff.from_pretrained(path)
    ids, mask = source_batch(family, padded)
    calls = count_op_calls(monkeypatch, "encoder_block")
    with torch.inference_mode():
        fused = model.encode(ids, mask)
        assert len(calls) == (0 if family.startswith("t5") else len(model.encoder.layers))
        monkeypatch.setattr(block_module.TransformerBlock, "encode_args", lambda self, x: None)
        python = model.encode(ids, mask)
    assert torch.equal(fused.hidden, python.hidden)
