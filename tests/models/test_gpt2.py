"""Native GPT-2 (causal LM, sequence classification, bare body) against Hugging Face transformers,
loaded from tiny random checkpoints (no network)."""
import importlib
import types

import pytest
import torch

import fastformer as ff
from tests.gpt2_tiny import left_padded_prompts, save_tiny_gpt2

transformers = pytest.importorskip("transformers")


def assert_close_rel(ours, theirs, rel=1e-4):
    scale = theirs.abs().max().clamp(min=1e-6)
    assert (ours - theirs).abs().max() / scale <= rel, f"max rel diff {((ours - theirs).abs().max() / scale):.3g}"


def right_padded(lengths, seq, pad):
    ids = torch.randint(3, 97, (len(lengths), seq))
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("head, task", [("LMHeadModel", "causal-lm"), ("ForSequenceClassification",
                                                                      "sequence-classification"), ("Model", "base")])
def test_matches_transformers_fp32(tmp_path, head, task, padding):
    theirs = save_tiny_gpt2(tmp_path, head, pad_token_id=0, num_labels=3)
    ours = ff.from_pretrained(tmp_path)
    assert ours.load_report["task"] == task and not ours.load_report["missing"]
    assert not ours.load_report["unexpected"]
    lengths = [17, 9, 1]
    if padding == "none":
        ids, mask = right_padded([17] * 3, 17, 0)
    else:
        ids, mask = (right_padded if padding == "right" else left_padded_prompts)(lengths, 17, pad=0)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask)
    keep = mask.bool()  # padded positions are not outputs anyone reads
    if head == "Model":
        assert_close_rel(got[keep], want.last_hidden_state[keep])
    elif head == "LMHeadModel":
        assert_close_rel(got.logits[keep], want.logits[keep])
    else:  # pooled at each row's last non-padding token
        assert_close_rel(got.logits, want.logits)


def test_causal_lm_loss_and_position_ids(tmp_path):
    theirs = save_tiny_gpt2(tmp_path)
    ours = ff.from_pretrained(tmp_path)
    ids, mask = left_padded_prompts([11, 6], 11)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        got = ours(ids, mask, position_ids=positions, labels=labels)
        want = theirs(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
    assert_close_rel(got.logits[mask.bool()], want.logits[mask.bool()])
    assert_close_rel(got.loss, want.loss)


def test_tied_and_untied_lm_head(tmp_path):
    save_tiny_gpt2(tmp_path / "tied")
    tied = ff.from_pretrained(tmp_path / "tied")
    assert tied.lm_head.weight is tied.decoder.embeddings.word.weight
    theirs = save_tiny_gpt2(tmp_path / "untied", tie_word_embeddings=False)
    untied = ff.from_pretrained(tmp_path / "untied")
    assert untied.lm_head.weight is not untied.decoder.embeddings.word.weight
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert_close_rel(untied(ids).logits, theirs(input_ids=ids).logits)


def test_decode_step_streams_each_weight_in_place(tmp_path, monkeypatch):
    """A batch-1 decode step hands the single-row kernel every linear's own weight, the LM head the tied embedding
    itself: no weight is copied, transposed or repacked per token (GPT-2-small's LM head is 154 MB)."""
    gemv_module = importlib.import_module("fastformer.ops.gemv")
    save_tiny_gpt2(tmp_path)
    model = ff.from_pretrained(tmp_path)
    streamed = []
    real = gemv_module._ops.gemv.default
    kernel = lambda x, weight, bias: streamed.append(weight) or real(x, weight, bias)  # noqa: E731
    monkeypatch.setattr(gemv_module, "_ops", types.SimpleNamespace(gemv=types.SimpleNamespace(default=kernel)))
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model.step(torch.tensor([[5, 6, 7]]), cache, last_only=True)
        streamed.clear()
        model.step(torch.tensor([[8]]), cache, last_only=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # qkv, out, up, down per layer; head
    assert len(streamed) == len(linears) == 4 * len(model.decoder.layers) + 1
    for weight, linear in zip(streamed, linears):
        assert weight.data_ptr() == linear.weight.data_ptr() and weight.stride() == linear.weight.stride()
    assert streamed[-1].data_ptr() == model.decoder.embeddings.word.weight.data_ptr()


def test_sequence_classification_needs_pad_token_for_batches(tmp_path):
    theirs = save_tiny_gpt2(tmp_path, "ForSequenceClassification")  # no pad_token_id
    ours = ff.from_pretrained(tmp_path)
    one = torch.randint(3, 97, (1, 5))
    with torch.no_grad():
        assert_close_rel(ours(one).logits, theirs(input_ids=one).logits)
    with pytest.raises(ValueError, match="pad_token_id"):
        ours(torch.randint(3, 97, (2, 5)))


def test_cross_attention_config_is_refused(tmp_path):
    save_tiny_gpt2(tmp_path, add_cross_attention=True)
    with pytest.raises(ValueError, match="add_cross_attention"):
        ff.from_pretrained(tmp_path)


def test_bad_inputs(tmp_path):
    save_tiny_gpt2(tmp_path)
    model = ff.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="longer|positions"):
        model(torch.randint(3, 97, (1, 49)))  # n_positions is 48
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(3, 97, (2, 5)), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.randint(3, 97, (1, 4)), position_ids=torch.tensor([[0, 1, 2, 48]]))
    with pytest.raises(ValueError, match="task must be one of"):
        ff.from_pretrained(tmp_path, task="masked-lm")
