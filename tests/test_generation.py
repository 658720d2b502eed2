"""generate() / stream() on native GPT-2 against transformers' generate (greedy and beam search token
for token, batched prompts of mixed lengths), sampling reproducibility, the KV cache, and bad input."""
import pytest
import torch

import fastformer as ff
from fastformer.generation import KVCache, generate, stream
from tests.gpt2_tiny import left_padded_prompts, save_tiny_gpt2

transformers = pytest.importorskip("transformers")

# Not 0: transformers' beam search fills ended rows with pad_token_id only when it is truthy (else EOS),
# while ours always uses pad_token_id.
PAD = 1


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, ours); noise 0.3 makes the tiny model's next token vary from step to step."""
    path = tmp_path_factory.mktemp("gpt2")
    theirs = save_tiny_gpt2(path, noise=0.3)
    return theirs, ff.from_pretrained(path)


def frequent_token(theirs, ids, mask, max_new_tokens):
    """An EOS that transformers' greedy decoding produces in the middle of some rows, so rows finish
    at different steps."""
    out = theirs.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=PAD)[:, ids.shape[1]:]
    return int(out[:, 1:-1].flatten().mode().values)


def hf_generate(theirs, ids, mask, **settings):
    return theirs.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=PAD, **settings)


def test_kv_cache_decode_matches_full_forward(models):
    _, ours = models
    ids, mask = left_padded_prompts([9, 4, 1], 12)
    full_ids = torch.cat([ids, torch.randint(3, 97, (3, 5))], dim=1)  # [3, 17]
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = ours(full_ids, full_mask, position_ids=positions).logits
        cache = ours.new_cache(3, 17)
        got = [ours.step(ids, cache, mask)]
        got += [ours.step(full_ids[:, t:t + 1], cache) for t in range(12, 17)]
    got = torch.cat(got, dim=1)
    keep = full_mask.bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    assert cache.length == 17 and cache.positions.tolist() == [14, 9, 6]


@pytest.mark.parametrize("use_eos", [False, True], ids=["no-eos", "eos"])
def test_greedy_matches_transformers(models, use_eos):
    theirs, ours = models
    ids, mask = left_padded_prompts([7, 3, 5, 1], 7, pad=PAD)
    eos = frequent_token(theirs, ids, mask, 12) if use_eos else None
    want = hf_generate(theirs, ids, mask, max_new_tokens=12, eos_token_id=eos)
    got = generate(ours, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(got, want), f"ours\n{got}\ntransformers\n{want}"
    if use_eos:
        assert (got[:, 7:] == eos).any(), "the test EOS never appeared"


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping", [
    (3, 1.0, False), (4, 0.5, True), (2, 2.0, "never"), (3, -1.0, "never"), (3, 0.0, True)])
def test_beam_search_matches_transformers(models, num_beams, length_penalty, early_stopping):
    theirs, ours = models
    ids, mask = left_padded_prompts([6, 2, 4], 6, pad=PAD)
    eos = frequent_token(theirs, ids, mask, 10)
    settings = dict(max_new_tokens=10, num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, eos_token_id=eos)
    want = hf_generate(theirs, ids, mask, **settings)
    got = ours.generate(ids, mask, pad_token_id=PAD, **settings)
    assert torch.equal(got, want), f"ours\n{got}\ntransformers\n{want}"


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("processors", [
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=7, forced_eos_token_id=4),
    dict(min_length=12, no_repeat_ngram_size=3, bad_words_ids=[[7], [9]]),
], ids=["no-repeat-2", "min-new+forced-eos", "min-length+no-repeat-3+bad-words"])
def test_logits_processors_match_transformers(models, num_beams, processors):
    theirs, ours = models
    ids, mask = left_padded_prompts([6, 2, 4], 6, pad=PAD)
    eos = frequent_token(theirs, ids, mask, 10)
    settings = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=eos, **processors)
    want = hf_generate(theirs, ids, mask, **settings)
    got = ours.generate(ids, mask, pad_token_id=PAD, **settings)
    assert torch.equal(got, want), f"ours\n{got}\ntransformers\n{want}"


def test_sampling_is_reproducible_and_filters(models):
    _, ours = models
    ids, mask = left_padded_prompts([5, 2], 5)
    run = lambda **s: generate(ours, ids, mask, max_new_tokens=8, do_sample=True, eos_token_id=None, **s)  # noqa: E731
    first = run(seed=7, temperature=0.8, top_k=20, top_p=0.9)
    assert torch.equal(first, run(seed=7, temperature=0.8, top_k=20, top_p=0.9))
    assert not torch.equal(run(seed=7, temperature=5.0), run(seed=8, temperature=5.0))
    greedy = generate(ours, ids, mask, max_new_tokens=8, eos_token_id=None)
    assert torch.equal(run(seed=3, top_k=1), greedy)  # one token left: sampling is greedy
    assert torch.equal(run(seed=3, top_p=1e-6), greedy)


def test_stream_yields_the_generated_tokens(models):
    theirs, ours = models
    ids, mask = left_padded_prompts([6, 3], 6)
    eos = frequent_token(theirs, ids, mask, 10)
    steps = list(stream(ours, ids, mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD))
    assert all(t.shape == (2,) for t in steps)
    assert torch.equal(torch.stack(steps, dim=1), generate(ours, ids, mask, max_new_tokens=10, eos_token_id=eos,
                                                           pad_token_id=PAD)[:, 6:])


@pytest.mark.parametrize("setting, value", [
    ("top_p", 0.0), ("top_p", 1.5), ("temperature", 0.0), ("temperature", -1.0), ("top_k", -1), ("num_beams", 0),
    ("max_new_tokens", -1), ("max_new_tokens", 2.5), ("early_stopping", "sometimes"), ("length_penalty", float("nan")),
    ("eos_token_id", -3), ("min_length", -1), ("no_repeat_ngram_size", 1.5), ("forced_eos_token_id", -1),
    ("bad_words_ids", [[3, 4]]), ("bad_words_ids", [3])])
def test_invalid_settings_name_the_argument(models, setting, value):
    _, ours = models
    with pytest.raises(ValueError, match=setting):
        generate(ours, torch.tensor([[5, 6]]), **{setting: value})


def test_bad_prompts(models):
    _, ours = models
    with pytest.raises(ValueError, match="empty"):
        generate(ours, torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):
        generate(ours, torch.tensor([[5, 6], [0, 0]]), torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="left padding"):
        generate(ours, torch.tensor([[5, 6], [7, 0]]), torch.tensor([[1, 1], [1, 0]]))
    with pytest.raises(ValueError, match="longer than the model's context of 48"):
        generate(ours, torch.randint(3, 97, (1, 49)))
    with pytest.raises(ValueError, match="max_new_tokens=20"):
        generate(ours, torch.randint(3, 97, (1, 40)), max_new_tokens=20)
    with pytest.raises(ValueError, match="num_beams"):
        stream(ours, torch.tensor([[5, 6]]), num_beams=2)
    with pytest.raises(TypeError, match="unknown generation settings"):
        generate(ours, torch.tensor([[5, 6]]), max_length=5)


def test_cache_rejects_overflow():
    cache = KVCache(num_layers=1, batch_size=1, max_length=3, num_kv_heads=1, head_dim=32, dtype=torch.float32)
    cache.begin_step(torch.zeros(1, 2, dtype=torch.long), None)
    cache.end_step(2)
    with pytest.raises(ValueError, match="do not fit"):
        cache.begin_step(torch.zeros(1, 2, dtype=torch.long), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cuda_matches_transformers(tmp_path, num_beams):
    theirs = save_tiny_gpt2(tmp_path, noise=0.3).cuda()
    ours = ff.from_pretrained(tmp_path, device="cuda")
    ids, mask = (t.cuda() for t in left_padded_prompts([6, 2, 4], 6, pad=PAD))
    eos = frequent_token(theirs, ids, mask, 10)
    settings = dict(max_new_tokens=10, num_beams=num_beams, eos_token_id=eos)
    assert torch.equal(ours.generate(ids, mask, pad_token_id=PAD, **settings), hf_generate(theirs, ids, mask, **settings))
    half = ff.from_pretrained(tmp_path, device="cuda", dtype=torch.float16)
    out = half.generate(ids, mask, pad_token_id=PAD, **settings)
    assert out.shape[0] == 3 and torch.equal(out[:, :6], ids)
