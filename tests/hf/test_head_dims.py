"""Every family at head dims the GPU kernels have no tile for (8 .. 160): ff.from_pretrained and ff.optimize
give transformers' logits and greedy tokens. Tiny one-layer random checkpoints saved with save_pretrained."""
import copy

import pytest
import torch

import fastformer as ff

transformers = pytest.importorskip("transformers")

HEAD_DIMS = [8, 16, 24, 48, 72, 160]
HEADS, VOCAB, PAD, EOS = 2, 99, 0, 2


def _config(family: str, head_dim: int):
    """(transformers config, model class name): one layer, 2 heads of head_dim (T5: d_kv = head_dim, d_model
    32, so the inner width 2 * head_dim differs from d_model)."""
    width = HEADS * head_dim
    tokens = dict(vocab_size=VOCAB, pad_token_id=PAD, eos_token_id=EOS)
    bert = dict(hidden_size=width, num_hidden_layers=1, num_attention_heads=HEADS, intermediate_size=24,
                max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **tokens)
    seq2seq = dict(d_model=width, encoder_layers=1, decoder_layers=1, encoder_attention_heads=HEADS,
                   decoder_attention_heads=HEADS, encoder_ffn_dim=24, decoder_ffn_dim=24, max_position_embeddings=40,
                   dropout=0.0, decoder_start_token_id=EOS, forced_eos_token_id=None, **tokens)
    configs = {
        "bert": (transformers.BertConfig(**bert), "BertForMaskedLM"),
        "roberta": (transformers.RobertaConfig(**dict(bert, pad_token_id=1, max_position_embeddings=42)),
                    "RobertaForMaskedLM"),
        "distilbert": (transformers.DistilBertConfig(dim=width, n_layers=1, n_heads=HEADS, hidden_dim=24,
                                                     max_position_embeddings=40, dropout=0.0, attention_dropout=0.0,
                                                     **tokens), "DistilBertForMaskedLM"),
        "gpt2": (transformers.GPT2Config(n_embd=width, n_layer=1, n_head=HEADS, n_positions=40, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0, **tokens), "GPT2LMHeadModel"),
        "t5": (transformers.T5Config(d_model=32, d_kv=head_dim, d_ff=24, num_layers=1, num_heads=HEADS,
                                     relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                     dropout_rate=0.0, decoder_start_token_id=PAD, **tokens),
               "T5ForConditionalGeneration"),
        "bart": (transformers.BartConfig(**seq2seq), "BartForConditionalGeneration"),
        "marian": (transformers.MarianConfig(**seq2seq), "MarianMTModel"),
    }
    return configs[family]


FAMILIES = ["bert", "roberta", "distilbert", "gpt2", "t5", "bart", "marian"]
GENERATORS = ["gpt2", "t5", "bart", "marian"]


def _save(tmp_path, family: str, head_dim: int):
    """(transformers model in eval mode, checkpoint folder) with fresh values in every parameter."""
    config, name = _config(family, head_dim)
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    with torch.no_grad():  # transformers initializes norms and biases to constants
        for p in model.parameters():
            if p.requires_grad:  # not Marian's fixed sinusoidal tables, which are not saved
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model, tmp_path


def _batch(family: str):
    """Right-padded ids and mask (row 1 shorter); left-padded for GPT-2, which continues prompts."""
    pad = 1 if family == "roberta" else PAD
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    if family == "gpt2":
        mask = mask.flip(1)
    return ids.masked_fill(mask == 0, pad), mask


def _logits(model, family, ids, mask, native: bool):
    kwargs = {}
    if family in ("t5", "bart", "marian"):
        kwargs["decoder_input_ids"] = ids[:, :5]
    if native:
        return model(ids, attention_mask=mask, **kwargs).logits
    return model(input_ids=ids, attention_mask=mask, **kwargs).logits


def _assert_close(got, want, mask):
    keep = mask.bool() if got.shape[1] == mask.shape[1] else slice(None)  # padded positions are read by nobody
    got, want = got[keep], want[keep]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tmp_path, family, head_dim):
    theirs, path = _save(tmp_path, family, head_dim)
    ids, mask = _batch(family)
    ours = ff.from_pretrained(path)
    optimized = ff.optimize(copy.deepcopy(theirs))
    assert ff.optimization_report(optimized)["attention"] > 0
    with torch.no_grad():
        want = _logits(theirs, family, ids, mask, native=False)
        _assert_close(_logits(ours, family, ids, mask, native=True), want, mask)
        _assert_close(_logits(optimized, family, ids, mask, native=False), want, mask)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("family", GENERATORS)
def test_greedy_tokens_match_transformers(tmp_path, family, head_dim):
    theirs, path = _save(tmp_path, family, head_dim)
    ids, mask = _batch(family)
    settings = dict(max_new_tokens=6)
    want = theirs.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **settings)
    got = ff.from_pretrained(path).generate(ids, mask, **settings)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    optimized = ff.optimize(copy.deepcopy(theirs))
    got = optimized.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, **settings)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
