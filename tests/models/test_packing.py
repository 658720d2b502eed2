"""Padding removal (fastformer.models.packing): padded batches run on their real tokens only, with outputs
equal to transformers' on every real token, whatever the mix of lengths."""
import warnings

import pytest
import torch

import fastformer as ff
from fastformer.models.packing import PackedBatch
from tests import seq2seq_checkpoints
from tests.gpt2_tiny import save_tiny_gpt2
from tests.models.test_encoders import FAMILIES, assert_close_rel, save_tiny

transformers = pytest.importorskip("transformers")

SEQ = 13
LENGTHS = {  # name -> real tokens per row
    "one-token-row": [13, 1, 7],
    "no-padding": [13, 13, 13],
    "mostly-padding": [2, 1, 3, 13],
    "ratios": [13, 11, 9, 6, 4, 2],
}


def padded_batch(family, lengths, side, pad=None, vocab=99):
    pad = (1 if family == "roberta" else 0) if pad is None else pad
    ids = torch.randint(3, vocab, (len(lengths), SEQ))
    mask = torch.zeros(len(lengths), SEQ, dtype=torch.long)
    for row, length in enumerate(lengths):
        real = slice(0, length) if side == "right" else slice(SEQ - length, SEQ)
        mask[row, real] = 1
    ids[mask == 0] = pad
    return ids, mask


def test_from_mask_builds_offsets_and_round_trips():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    packed = PackedBatch.from_mask(mask)
    assert packed.cu_seqlens.tolist() == [0, 3, 5, 5] and packed.cu_seqlens.dtype == torch.int32
    assert packed.max_seqlen == 3 and packed.index.tolist() == [0, 1, 2, 6, 7]
    x = torch.randn(3, 4, 5)  # [B, S, hidden]
    assert packed.pack(x).shape == (5, 5)
    torch.testing.assert_close(packed.unpack(packed.pack(x)), x * mask[..., None])


@pytest.mark.parametrize("mask", [None, torch.ones(2, 5, dtype=torch.bool),
                                  torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)],
                         ids=["no-mask", "no-padding", "hole"])
def test_from_mask_keeps_the_dense_path(mask):
    assert PackedBatch.from_mask(mask) is None


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_encoder_matches_transformers(tmp_path, monkeypatch, family, lengths, side):
    packs = []
    monkeypatch.setattr(PackedBatch, "pack", lambda self, x, pack=PackedBatch.pack: packs.append(1) or pack(self, x))
    torch.manual_seed(1)
    theirs, path = save_tiny(tmp_path, family, "ForTokenClassification")
    ours = ff.from_pretrained(path)
    ids, mask = padded_batch(family, lengths, side)
    with torch.no_grad():
        got, want = ours(ids, attention_mask=mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close_rel(got[real], want[real])
    assert len(packs) == (0 if min(lengths) == SEQ else 1)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max", "cls_last4"])
def test_pooled_heads_ignore_padding(tmp_path, pooling):
    """Pooling over a packed encoder's output equals pooling each sequence run alone, unpadded."""
    _, path = save_tiny(tmp_path, "bert", "ForSequenceClassification", num_hidden_layers=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ff.from_pretrained(path, task="sequence-classification", pooling=pooling)
    notes = [str(w.message) for w in caught]
    if pooling != "cls":  # the checkpoint's pooler and classifier serve CLS pooling only: the loader says so
        assert any("newly initialized" in n for n in notes) and any("not used" in n for n in notes), notes
    ids, mask = padded_batch("bert", LENGTHS["ratios"], "right")
    with torch.no_grad():
        batched = model(ids, mask).logits
        alone = torch.cat([model(ids[i:i + 1, :n]).logits for i, n in enumerate(LENGTHS["ratios"])])
    assert_close_rel(batched, alone)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("family", seq2seq_checkpoints.FAMILIES)
def test_packed_seq2seq_encoder_matches_transformers(tmp_path, family, lengths, side):
    """The encoder of T5 (relative bias per sequence), BART and Marian runs packed; the decoder's logits,
    which read every source token through cross-attention, match transformers'."""
    theirs, path = seq2seq_checkpoints.save_tiny(tmp_path, family)
    ours = ff.from_pretrained(path)
    pad = seq2seq_checkpoints.FAMILIES[family][1].get("pad_token_id", 0)
    ids, mask = padded_batch(family, lengths, side, pad=pad, vocab=seq2seq_checkpoints.VOCAB - 1)
    decoder_ids = torch.randint(3, seq2seq_checkpoints.VOCAB - 1, (len(lengths), 5))
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        got = ours(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert_close_rel(got, want)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_packed_gpt2_matches_transformers(tmp_path, lengths, side):
    theirs = save_tiny_gpt2(tmp_path, pad_token_id=0)
    ours = ff.from_pretrained(tmp_path)
    ids, mask = padded_batch("gpt2", lengths, side, pad=0, vocab=97)
    with torch.no_grad():
        got, want = ours(ids, attention_mask=mask).logits, theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert_close_rel(got[real], want[real])


def test_gpt2_prefill_runs_packed_and_generates_transformers_tokens(tmp_path, monkeypatch):
    """generate's prefill of left-padded prompts runs packed, writes the cache, and the greedy tokens
    that follow are transformers'."""
    packs = []
    monkeypatch.setattr(PackedBatch, "pack", lambda self, x, pack=PackedBatch.pack: packs.append(1) or pack(self, x))
    theirs = save_tiny_gpt2(tmp_path, pad_token_id=0)
    ours = ff.from_pretrained(tmp_path)
    ids, mask = padded_batch("gpt2", LENGTHS["ratios"], "left", pad=0, vocab=97)
    want = theirs.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    got = ours.generate(ids, mask, max_new_tokens=8, pad_token_id=0)
    assert packs == [1]
    assert torch.equal(got, want)
