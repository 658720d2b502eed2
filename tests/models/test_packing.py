"""Padding removal (fastformer.models.packing): padded batches run on their real tokens only, with outputs
equal to transformers' on every real token, whatever the mix of lengths."""
import pytest
import torch

import fastformer as ff
from fastformer.models.packing import PackedBatch
from tests.models.test_encoders import FAMILIES, assert_close_rel, save_tiny

transformers = pytest.importorskip("transformers")

SEQ = 13
LENGTHS = {  # name -> real tokens per row
    "one-token-row": [13, 1, 7],
    "no-padding": [13, 13, 13],
    "mostly-padding": [2, 1, 3, 13],
    "ratios": [13, 11, 9, 6, 4, 2],
}


def padded_batch(family, lengths, side):
    pad = 1 if family == "roberta" else 0
    ids = torch.randint(3, 99, (len(lengths), SEQ))
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
    model = ff.from_pretrained(path, task="sequence-classification", pooling=pooling)
    ids, mask = padded_batch("bert", LENGTHS["ratios"], "right")
    with torch.no_grad():
        batched = model(ids, mask).logits
        alone = torch.cat([model(ids[i:i + 1, :n]).logits for i, n in enumerate(LENGTHS["ratios"])])
    assert_close_rel(batched, alone)
