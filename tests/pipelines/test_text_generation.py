"""TextGenerator: strings in and out with a tiny GPT-2 and a tiny word-level tokenizer saved beside it."""
import pytest
import torch

from fastformer.pipelines import TextGenerator
from tests.gpt2_tiny import save_tiny_gpt2, save_word_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-text")
    return path, save_tiny_gpt2(path, noise=0.3), save_word_tokenizer(path)


def test_batch_of_strings_matches_transformers(folder):
    path, theirs, tokenizer = folder
    generator = TextGenerator(path)
    prompts = ["w5 w9 w17 w4", "w30", "w8 w8"]
    got = generator(prompts, max_new_tokens=6, num_beams=2)
    tokenizer.padding_side, tokenizer.pad_token = "left", "<eos>"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = theirs.generate(**batch, max_new_tokens=6, num_beams=2, do_sample=False, pad_token_id=2, eos_token_id=2)
    assert got == tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(isinstance(t, str) and t for t in got)
    assert generator("w5 w9 w17 w4", max_new_tokens=6, num_beams=2) == got[0]


def test_stream_pieces_add_up_to_the_text(folder):
    generator = TextGenerator(folder[0])
    pieces = list(generator.stream("w5 w9", max_new_tokens=5))
    assert pieces and "".join(pieces) == generator("w5 w9", max_new_tokens=5)


def test_empty_prompts(folder):
    generator = TextGenerator(folder[0])
    with pytest.raises(ValueError, match="empty"):
        generator(["w5", ""])
    with pytest.raises(ValueError, match="prompts"):
        generator([])
    with pytest.raises(ValueError, match="top_p"):
        generator("w5", top_p=2.0)
    assert torch.is_grad_enabled()  # inference_mode does not leak out of generation


def test_complete_counts_tokens_and_says_why_it_ended(folder):
    path, theirs, _ = folder
    generator = TextGenerator(path)
    completions = generator.complete(["w5 w9 w17 w4", "w30"], max_new_tokens=6)
    assert [c.text for c in completions] == generator(["w5 w9 w17 w4", "w30"], max_new_tokens=6)
    assert [c.prompt_tokens for c in completions] == [4, 1]
    for c in completions:
        assert (c.finish_reason, c.completion_tokens) in {("length", 6)} | {("stop", n) for n in range(1, 7)}
    ids = torch.tensor([[generator.tokenizer.convert_tokens_to_ids("w30")]])
    out = theirs.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2, eos_token_id=2)[0, 1:].tolist()
    assert completions[1].finish_reason == ("stop" if 2 in out else "length")
    assert completions[1].completion_tokens == (out.index(2) + 1 if 2 in out else 6)
