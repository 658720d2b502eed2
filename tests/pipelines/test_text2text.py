"""Translator / Summarizer (strings in and out) and BLEU, with tiny word-level tokenizers built here and
saved beside tiny checkpoints (no downloads), against transformers' generate on the same tokens."""
import pytest

from fastformer.pipelines import Summarizer, Translator, bleu, evaluate_bleu
from tests.seq2seq_checkpoints import VOCAB, save_tiny, save_tokenizer

transformers = pytest.importorskip("transformers")

TASKS = {"translation_en_to_de": {"prefix": "translate English to German: ", "num_beams": 2, "max_length": 8},
         "summarization": {"prefix": "summarize: ", "max_length": 6}}
TEXTS = ["w5 w6 w7", "w9 w10 w11 w12 w13 w14 w15"]


def their_texts(theirs, tokenizer, texts, prefix, **settings):
    batch = tokenizer([prefix + t for t in texts], return_tensors="pt", padding=True)
    out = theirs.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                          **settings)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    theirs, path = save_tiny(tmp_path_factory.mktemp("t5-text"), "t5", task_specific_params=TASKS)
    return theirs, path, save_tokenizer(path, pad=0, eos=1, unk=2)


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory):
    theirs, path = save_tiny(tmp_path_factory.mktemp("marian-text"), "marian", forced_eos_token_id=None)
    return theirs, path, save_tokenizer(path, pad=VOCAB - 1, eos=0, unk=1)


def test_t5_translate_and_summarize_match_transformers(t5_folder):
    theirs, path, tokenizer = t5_folder
    got = Translator(path, source_lang="en", target_lang="de")(TEXTS)  # the task's prefix, 2 beams, 7 tokens
    assert got == their_texts(theirs, tokenizer, TEXTS, "translate English to German: ", num_beams=2, max_new_tokens=7)
    assert all(isinstance(t, str) for t in got)
    summary = Summarizer(path)(TEXTS[1])
    assert summary == their_texts(theirs, tokenizer, TEXTS[1:], "summarize: ", max_new_tokens=5)[0]


def test_marian_translate_stream_and_bleu(marian_folder):
    theirs, path, tokenizer = marian_folder
    translator = Translator(path)
    got = translator(TEXTS, max_new_tokens=6, batch_size=1)
    assert got == their_texts(theirs, tokenizer, TEXTS, "", max_new_tokens=6)
    pieces = list(translator.stream(TEXTS[1], max_new_tokens=6))
    assert "".join(pieces).strip() == got[1]
    result = evaluate_bleu(translator, TEXTS, [got[0], "w1 w2"], max_new_tokens=6)
    assert result["translations"] == got
    assert result["bleu"] == pytest.approx(bleu(got, [got[0], "w1 w2"]))
    with pytest.raises(ValueError, match=r"texts\[1\] is 41 tokens long, more than the model's 40"):
        translator(["w3", " ".join(["w4"] * 40)])


def test_bleu():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert bleu(["the cat sat on the mat"], [["a dog ran", "the cat sat on the mat"]]) == pytest.approx(100.0)
    assert bleu(["the cat"], ["a dog ran far away"]) < 1.0
    with pytest.raises(ValueError, match="one entry per hypothesis"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="hypotheses"):
        bleu([], [])


def test_bad_text_inputs_name_the_argument(t5_folder):
    _, path, _ = t5_folder
    summarizer = Summarizer(path)
    with pytest.raises(ValueError, match="texts is empty"):
        summarizer([])
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        summarizer(["w3", "  "])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string"):
        summarizer([3])
    with pytest.raises(ValueError, match="batch_size"):
        summarizer("w3", batch_size=0)
    with pytest.raises(ValueError, match="source_lang and target_lang"):
        Translator(path)
    with pytest.raises(ValueError, match="translation_en_to_fr"):
        Translator(path, source_lang="en", target_lang="fr")
