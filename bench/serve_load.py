"""Load on `fastformer serve` from this client process over loopback (issue 14, "Measurements"). Every server
runs in its own process on 127.0.0.1 and is stopped (its process tree, by PID) before the next starts.

  python bench/serve_load.py [--parts throughput,overload,faults,overhead,streaming] [--json PATH]

Parts:
  throughput  open-loop embeddings of the real sentences (TEI POST /embed, one sentence per request) at several
              rates, on `fastformer serve` (Ray Serve, dynamic batching, 1 replica) and on the baseline teams
              write by hand (bench/serve_baseline.py: FastAPI + uvicorn + transformers' AutoModel per request,
              no batching), in this same run. The rates are --rate-multiples of the baseline's capacity (its
              closed-loop requests/s). Open loop: request i is sent at its scheduled time (Poisson arrivals,
              or --arrival fixed) whatever the answers, and its latency counts from that time, so a slow server
              cannot slow the client down and hide its queueing. Reports req/s, tokens/s, p50/p90/p99.
  overload    on the throughput part's fastformer server (alone: on its own, after a capacity probe and
              without the baseline): --overload-reference-seconds at 50% of its capacity, then
              --overload-seconds at 3x: every request answered (200 or 503/429; sent == answered) and the p99
              of accepted requests against 2x its 50%-load value. An accepted request waits behind up to
              max ongoing + max queued others (Little's law: their sum / capacity), so --max-ongoing and
              --max-queued set that p99.
  faults      fastformer serve with 2 replicas at --fault-load of its capacity for --fault-seconds; halfway,
              one replica's process (its PID from GET /health, checked to descend from the server process) is
              killed: Ray restarts it; every request is accounted for (200, 503 or 5xx; none lost).
  overhead    one request at a time: `fastformer serve` (--batch-wait-ms 0 so no batch waits to fill) vs the
              same pipeline called in this process; the difference is the server's overhead (target <= 3 ms).
              Also GET /health one at a time: Ray Serve's round trip with no model, the floor of that overhead.
  streaming   GPT-2 (gpt2-small shape, random weights via save_pretrained, a word-level tokenizer) on the
              same server as overhead: POST /v1/completions stream: true; time to first token and tokens/s per
              stream at 1 and 8 concurrent streams.
Every loop is bounded in requests and seconds; every request has a --timeout.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import aiohttp
import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the tiny-tokenizer and process helpers live with the tests

from fastformer.modelbench import machine, report  # noqa: E402
from fastformer.serving.ingress import free_port  # noqa: E402
from tests.gpt2_tiny import save_word_tokenizer  # noqa: E402
from tests.processes import descendants  # noqa: E402

SENTENCES_FILE = os.path.join(ROOT, "fastformer", "modelbench", "sentences.txt")
ACCEPTED_WHEN_OVERLOADED = (200, 429, 503)



def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def _latencies(ms: list[float]) -> dict:
    return {"p50_ms": _percentile(ms, 50), "p90_ms": _percentile(ms, 90), "p99_ms": _percentile(ms, 99)}


class Workload:
    """The real sentences as TEI /embed bodies of per_request sentences each (a string when 1), with their
    token counts (special tokens included)."""

    def __init__(self, model_dir: str, per_request: int = 1):
        import transformers

        self.per_request = per_request
        with open(SENTENCES_FILE) as f:
            self.sentences = [line.strip() for line in f if line.strip()]
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.tokens = [len(ids) for ids in tokenizer(self.sentences)["input_ids"]]

    def _rows(self, i: int) -> range:
        return range(i * self.per_request, (i + 1) * self.per_request)

    def body(self, i: int) -> dict:
        texts = [self.sentences[row % len(self.sentences)] for row in self._rows(i)]
        return {"inputs": texts[0] if self.per_request == 1 else texts}

    def tokens_of(self, i: int) -> int:
        return sum(self.tokens[row % len(self.sentences)] for row in self._rows(i))


NO_ANSWER = (aiohttp.ClientError, asyncio.TimeoutError)  # a timeout or a lost connection


def _client(timeout: float) -> aiohttp.ClientSession:
    """aiohttp (a dependency of Ray's): lighter per request than httpx's async client, so this client takes
    less of the cores the servers share. No connection limit: an open loop never waits for a free one."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                 connector=aiohttp.TCPConnector(limit=0))


async def _post(http: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, bool, float, str | None]:
    """(HTTP status, whether the body is JSON, its Retry-After in seconds or 0, and for a 5xx that is not JSON
    its content type and first 200 bytes, to say where it came from), the whole answer read."""
    async with http.post(url, json=body) as response:
        text = await response.read()
        retry_after = float(response.headers.get("Retry-After", 0)) if response.status in (429, 503) else 0.0
        is_json = response.content_type == "application/json"
        sample = f"{response.content_type}: {text[:200]!r}" if response.status >= 500 and not is_json else None
        return response.status, is_json, retry_after, sample


# ---- servers: started here, stopped by PID with everything they started ----

class Server:
    def __init__(self, name: str, command: list[str], base: str, threads: int):
        self.name, self.command, self.base = name, command, base
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = None

    def __enter__(self):
        started = time.perf_counter()
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log.read()[-3000:].decode(errors='replace')}")
            try:
                if httpx.post(f"{self.base}/embed", json={"inputs": "ready?"}, timeout=10).status_code == 200:
                    self.start_seconds = round(time.perf_counter() - started, 1)
                    print(f"{self.name} up in {self.start_seconds} s", flush=True)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not answer within 300 s")

    def __exit__(self, *_):
        family = descendants(self.process.pid)  # Ray's daemons and workers, to be sure none outlives the run
        self.process.send_signal(signal.SIGINT)  # fastformer serve deletes its app and shuts Ray down
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in family):
            time.sleep(0.2)
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def fastformer_server(args, models: list[str], replicas: int | None = None, batch_wait_ms: float | None = None
                      ) -> Server:
    port = free_port()
    replicas = args.replicas if replicas is None else replicas
    wait = args.batch_wait_ms if batch_wait_ms is None else batch_wait_ms
    command = [sys.executable, "-m", "fastformer", "serve", *models, "--port", str(port),
               "--metrics-port", str(free_port()), "--threads", str(args.threads), "--replicas", str(replicas),
               "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(wait), "--ingress", args.ingress]
    for flag, value in (("--max-ongoing", args.max_ongoing), ("--max-queued", args.max_queued),
                        ("--quantize", args.quantize)):
        if value:
            command += [flag, str(value)]
    return Server(f"fastformer serve ({replicas} replica(s), batch wait {wait} ms, ingress {args.ingress})", command,
                  f"http://127.0.0.1:{port}", args.threads)


def baseline_server(args) -> Server:
    port = free_port()
    threads = args.baseline_threads or args.threads
    command = [sys.executable, os.path.join(ROOT, "bench", "serve_baseline.py"), args.model, "--port", str(port),
               "--threads", str(threads)]
    return Server(f"baseline (FastAPI + uvicorn + AutoModel, {threads} thread(s))", command,
                  f"http://127.0.0.1:{port}", threads)


# ---- clients ----

async def closed_loop(url: str, work: Workload, clients: int, seconds: float, timeout: float) -> dict:
    """clients workers, each sending its next request when its last is answered, for `seconds`: the
    server's capacity in requests/s. A worker turned away (429/503) waits its Retry-After, as real clients
    do; resending at once would measure how fast the server can refuse, not how fast it computes."""
    ok, tokens, statuses = [0], [0], {}
    async with _client(timeout) as http:
        start = time.perf_counter()

        async def worker(i: int):
            while time.perf_counter() - start < seconds:
                try:
                    status, _, retry_after, _ = await _post(http, url, work.body(i))
                except NO_ANSWER as e:
                    status, retry_after = type(e).__name__, 0.0
                if retry_after:  # turned away: wait as told, within the run's time
                    await asyncio.sleep(min(retry_after, max(0.0, seconds - (time.perf_counter() - start))))
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    ok[0] += 1
                    tokens[0] += work.tokens_of(i)
                i += clients

        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return {"clients": clients, "seconds": round(elapsed, 2), "statuses": statuses,
            "requests_per_s": round(ok[0] / elapsed, 2), "tokens_per_s": round(tokens[0] / elapsed, 1)}


def _schedule(rate: float, seconds: float, max_requests: int, arrival: str, seed: int) -> list[float]:
    """Send times (seconds from the start): Poisson (exponential gaps) or a fixed interval of 1/rate."""
    rng, times, t = random.Random(seed), [], 0.0
    while len(times) < max_requests:
        t += rng.expovariate(rate) if arrival == "poisson" else 1 / rate
        if t > seconds:
            break
        times.append(t)
    return times


async def open_loop(url: str, work: Workload, rate: float, args, seconds: float, during=None) -> dict:
    """Requests sent at scheduled times (not waiting for answers) for `seconds` (at most --max-requests);
    latency counts from each request's scheduled time. during(http, start): a coroutine run alongside."""
    times = _schedule(rate, seconds, args.max_requests, args.arrival, args.seed)
    outcomes, lags, not_json = [], [], set()
    async with _client(args.timeout) as http:
        loop = asyncio.get_running_loop()
        start = loop.time()
        side = asyncio.create_task(during(http, start)) if during else None

        async def one(i: int, due: float):
            try:
                status, json_body, _, sample = await _post(http, url, work.body(i))
                if sample is not None:
                    not_json.add(sample)
                outcomes.append((status, (loop.time() - due) * 1000, work.tokens_of(i), json_body))
            except NO_ANSWER as e:
                outcomes.append((type(e).__name__, None, 0, False))

        tasks = []
        for i, offset in enumerate(times):
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append((loop.time() - start - offset) * 1000)
            tasks.append(asyncio.create_task(one(i, start + offset)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        side_result = await side if side else None
    statuses = {}
    for status, *_ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    accepted = [ms for status, ms, _, _ in outcomes if status == 200]
    sent_per_s = len(times) / seconds
    result = {"offered_per_s": round(rate, 2), "arrival": args.arrival, "sent": len(times),
              "sent_per_s": round(sent_per_s, 2), "keeping_up": len(accepted) / elapsed >= 0.9 * sent_per_s,
              "answered": sum(isinstance(status, int) for status, *_ in outcomes), "statuses": statuses,
              "errors_not_json": sum(isinstance(s, int) and s >= 500 and not j for s, _, _, j in outcomes),
              "errors_not_json_samples": sorted(not_json)[:3],
              "seconds": round(elapsed, 2), "requests_per_s": round(len(accepted) / elapsed, 2),
              "tokens_per_s": round(sum(t for status, _, t, _ in outcomes if status == 200) / elapsed, 1),
              **_latencies(accepted), "send_lag_p99_ms": _percentile(lags, 99), "load_average": _load()}
    if side_result is not None:
        result.update(side_result)
    return result


async def one_at_a_time(url: str, work: Workload | None, count: int, timeout: float) -> dict:
    """count requests, each sent when the last is answered: POSTs of work's bodies, or GETs with no work."""
    ms = []
    async with _client(timeout) as http:
        for i in range(count):
            start = time.perf_counter()
            if work is None:
                async with http.get(url) as response:
                    await response.read()
                    status = response.status
            else:
                status, *_ = await _post(http, url, work.body(i))
            if status != 200:
                raise RuntimeError(f"{url} answered {status} to one request at a time")
            ms.append((time.perf_counter() - start) * 1000)
    return {"requests": count, **_latencies(ms)}


# ---- parts ----

def part_throughput(args, work: Workload, results: dict) -> None:
    with baseline_server(args) as baseline:
        url = f"{baseline.base}/embed"
        asyncio.run(closed_loop(url, work, 1, 2, args.timeout))  # warm-up
        capacity = asyncio.run(closed_loop(url, work, args.probe_clients, args.probe_seconds, args.timeout))
        print(f"baseline capacity {capacity}", flush=True)
        rates = [float(r) for r in args.rates.split(",")] if args.rates else \
            [m * capacity["requests_per_s"] for m in args.rate_multiples]
        runs = []
        for rate in rates:
            runs.append(asyncio.run(open_loop(url, work, rate, args, args.rate_seconds)))
            print(f"baseline   {runs[-1]}", flush=True)
        single = asyncio.run(one_at_a_time(url, work, args.single, args.timeout))
        baseline_result = {"start_seconds": baseline.start_seconds, "capacity": capacity, "open_loop": runs,
                           "one_at_a_time": single}
    server = fastformer_server(args, [args.model])
    with server:
        url, capacity = _fastformer_capacity(args, work, server)
        runs = []
        for rate in rates:
            runs.append(asyncio.run(open_loop(url, work, rate, args, args.rate_seconds)))
            print(f"fastformer {runs[-1]}", flush=True)
        results["throughput"] = {"rates_per_s": [round(r, 2) for r in rates], "baseline": baseline_result,
                                 "fastformer": {"start_seconds": server.start_seconds, "capacity": capacity,
                                                "open_loop": runs}}
        results["throughput"]["summary"] = _throughput_summary(results["throughput"])
        print(f"summary {results['throughput']['summary']}", flush=True)
        if "overload" in args.parts:
            part_overload(args, work, url, capacity["requests_per_s"], results)


def _fastformer_capacity(args, work: Workload, server: Server) -> tuple[str, dict]:
    url = f"{server.base}/embed"
    asyncio.run(closed_loop(url, work, 4, 2, args.timeout))  # warm-up
    capacity = asyncio.run(closed_loop(url, work, args.probe_clients, args.probe_seconds, args.timeout))
    print(f"fastformer capacity {capacity}", flush=True)
    return url, capacity


def part_overload_alone(args, work: Workload, results: dict) -> None:
    """overload without the throughput part: its own server and capacity probe, no baseline."""
    server = fastformer_server(args, [args.model])
    with server:
        url, capacity = _fastformer_capacity(args, work, server)
        part_overload(args, work, url, capacity["requests_per_s"], results)


def _sustained(runs: list[dict], p99_at_most: float | None = None, refusals: bool = True) -> dict | None:
    """The run with the most requests/s among those the server kept up with (answered >= 90% of the rate
    actually sent with a 200) and, if given, with p99 <= p99_at_most; refusals=False: and no request turned
    away (only 200s)."""
    kept_up = [r for r in runs if r["keeping_up"] and r["p99_ms"] is not None
               and (p99_at_most is None or r["p99_ms"] <= p99_at_most)
               and (refusals or set(r["statuses"]) == {"200"})]
    return max(kept_up, key=lambda r: r["requests_per_s"]) if kept_up else None


def _throughput_summary(throughput: dict) -> dict:
    """Capacity ratio (closed loop), and the issue's target: the most fastformer sustains at a p99 no higher
    than the baseline's at the most the baseline sustains."""
    base = _sustained(throughput["baseline"]["open_loop"])
    ours = _sustained(throughput["fastformer"]["open_loop"], base and base["p99_ms"])
    ours_all = _sustained(throughput["fastformer"]["open_loop"], base and base["p99_ms"], refusals=False)
    return {"capacity_ratio": round(throughput["fastformer"]["capacity"]["requests_per_s"]
                                    / max(throughput["baseline"]["capacity"]["requests_per_s"], 1e-9), 2),
            "baseline_sustained_requests_per_s": base and base["requests_per_s"],
            "baseline_sustained_p99_ms": base and base["p99_ms"],
            "fastformer_sustained_at_equal_or_lower_p99_requests_per_s": ours and ours["requests_per_s"],
            "fastformer_sustained_at_equal_or_lower_p99_p99_ms": ours and ours["p99_ms"],
            "throughput_ratio_at_equal_or_lower_p99": base and ours and round(
                ours["requests_per_s"] / max(base["requests_per_s"], 1e-9), 2),
            # the same with no request turned away (503/429) at that rate: the stricter reading
            "throughput_ratio_at_equal_or_lower_p99_none_refused": base and ours_all and round(
                ours_all["requests_per_s"] / max(base["requests_per_s"], 1e-9), 2),
            "target": ">= 3x"}


def part_overload(args, work: Workload, url: str, capacity: float, results: dict) -> None:
    reference = asyncio.run(open_loop(url, work, 0.5 * capacity, args, args.overload_reference_seconds))
    print(f"overload reference (50% load) {reference}", flush=True)
    overloaded = asyncio.run(open_loop(url, work, 3 * capacity, args, args.overload_seconds))
    print(f"overload (3x capacity) {overloaded}", flush=True)
    answers_ok = all(int(s) in ACCEPTED_WHEN_OVERLOADED for s in overloaded["statuses"] if s.isdigit())
    results["overload"] = {
        "capacity_per_s": capacity, "reference_at_50_percent": reference, "at_3x_capacity": overloaded,
        "checks": {"sent_equals_answered": overloaded["sent"] == overloaded["answered"],
                   "only_200_503_429": answers_ok and all(s.isdigit() for s in overloaded["statuses"]),
                   "p99_ratio_to_50_percent_load": overloaded["p99_ms"] and reference["p99_ms"] and
                   round(overloaded["p99_ms"] / reference["p99_ms"], 2), "p99_ratio_target": "<= 2"}}
    print(f"overload checks {results['overload']['checks']}", flush=True)


async def _replica_pids(http: aiohttp.ClientSession, base: str, replicas: int, tries: int = 60) -> set[int]:
    """The replicas' PIDs from GET /health (the router picks a replica at random for each request)."""
    pids = set()
    for _ in range(tries):
        async with http.get(f"{base}/health") as response:
            if response.status == 200:
                pids.add((await response.json())["pid"])
        if len(pids) == replicas:
            break
    return pids


def part_faults(args, work: Workload, results: dict) -> None:
    server = fastformer_server(args, [args.model], replicas=2)
    with server:
        url = f"{server.base}/embed"
        asyncio.run(closed_loop(url, work, 4, 2, args.timeout))  # warm-up
        capacity = asyncio.run(closed_loop(url, work, args.probe_clients, args.probe_seconds, args.timeout))

        async def kill_one_replica(http: aiohttp.ClientSession, start: float) -> dict:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, start + args.fault_seconds / 2 - loop.time()))
            before = await _replica_pids(http, server.base, 2)
            victim = min(before)
            if victim not in descendants(server.process.pid):
                raise RuntimeError(f"replica PID {victim} is not a process of the server this run started")
            os.kill(victim, signal.SIGKILL)
            killed_at = loop.time()
            deadline = killed_at + args.timeout * 2
            while loop.time() < deadline:  # restarted: two replicas again, one of them new
                try:
                    now = await _replica_pids(http, server.base, 2, tries=10)
                    if len(now) == 2 and victim not in now:
                        return {"killed_pid": victim, "killed_at_s": round(killed_at - start, 2),
                                "restarted_after_s": round(loop.time() - killed_at, 2)}
                except NO_ANSWER:
                    pass
                await asyncio.sleep(0.25)
            return {"killed_pid": victim, "killed_at_s": round(killed_at - start, 2), "restarted_after_s": None}

        run = asyncio.run(open_loop(url, work, args.fault_load * capacity["requests_per_s"], args,
                                    args.fault_seconds, during=kill_one_replica))
    failed = sum(n for status, n in run["statuses"].items() if status != "200")
    results["faults"] = {"replicas": 2, "capacity": capacity, "run": run, "failed": failed,
                         "lost": run["sent"] - run["answered"]}
    print(f"faults {results['faults']}", flush=True)


def _save_gpt2(path: str) -> None:
    """gpt2-small's shape with random weights, and a word-level tokenizer over its 50257 ids (w4 ...)."""
    import transformers

    vocab = transformers.GPT2Config().vocab_size
    config = transformers.GPT2Config(bos_token_id=1, eos_token_id=2)  # the word tokenizer's <bos> / <eos>
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    save_word_tokenizer(path, vocab_size=vocab)


async def _stream(http: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """One streamed completion: time to the first text, and tokens/s after it (the word-level tokenizer
    makes one token per word)."""
    start = time.perf_counter()
    first, text = None, ""
    async with http.post(url, json=body) as response:
        response.raise_for_status()
        async for raw in response.content:  # server-sent events, one line at a time
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            piece = json.loads(line[len("data: "):])["choices"][0]["text"]
            if piece and first is None:
                first = time.perf_counter()
            text += piece
    end, tokens = time.perf_counter(), len(text.split())
    return {"ttft_ms": (first - start) * 1000 if first else None, "tokens": tokens,
            "tokens_per_s": (tokens - 1) / (end - first) if first and tokens > 1 and end > first else None}


async def streams(url: str, concurrency: int, rounds: int, args) -> dict:
    body = {"prompt": " ".join(f"w{4 + 7 * i}" for i in range(args.stream_prompt_words)),
            "max_tokens": args.stream_tokens, "temperature": 0, "stream": True}
    done = []
    async with _client(args.timeout) as http:
        start = time.perf_counter()
        for _ in range(rounds):
            done += await asyncio.gather(*(_stream(http, url, body) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ttft = [d["ttft_ms"] for d in done if d["ttft_ms"] is not None]
    rates = [d["tokens_per_s"] for d in done if d["tokens_per_s"] is not None]
    return {"concurrent_streams": concurrency, "streams": len(done), "max_tokens": args.stream_tokens,
            "tokens_per_stream_mean": round(sum(d["tokens"] for d in done) / len(done), 1),
            "ttft_p50_ms": _percentile(ttft, 50), "ttft_max_ms": _percentile(ttft, 100),
            "tokens_per_s_per_stream_p50": _percentile(rates, 50), "tokens_per_s_per_stream_min": _percentile(rates, 0),
            "tokens_per_s_all_streams": round(sum(d["tokens"] for d in done) / elapsed, 1), "load_average": _load()}


def part_overhead_and_streaming(args, work: Workload, results: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="ffserve") as tmp:
        models = [args.model]
        if "streaming" in args.parts:
            _save_gpt2(os.path.join(tmp, "gpt2"))
            models.append(os.path.join(tmp, "gpt2"))
        server = fastformer_server(args, models, batch_wait_ms=0)
        with server:
            if "overhead" in args.parts:
                served, direct = asyncio.run(_served_and_direct(f"{server.base}/embed", work, args))
                # GET /health runs no model and no batch: its round trip is Ray Serve's own floor (HTTP proxy,
                # routing, the replica's ASGI app), which the overhead cannot go below.
                health = asyncio.run(one_at_a_time(f"{server.base}/health", None, args.single, args.timeout))
                results["overhead"] = {"server": served, "direct": direct, "health_round_trip": health,
                                       "overhead_p50_ms": round(served["p50_ms"] - direct["p50_ms"], 2),
                                       "target": "<= 3 ms", "load_average": _load()}
                print(f"overhead {results['overhead']}", flush=True)
            if "streaming" in args.parts:
                url = f"{server.base}/v1/completions"
                asyncio.run(streams(url, 1, 1, args))  # warm-up
                results["streaming"] = [asyncio.run(streams(url, c, args.stream_rounds, args)) for c in (1, 8)]
                for line in results["streaming"]:
                    print(f"streaming {line}", flush=True)


async def _served_and_direct(url: str, work: Workload, args) -> tuple[dict, dict]:
    """One sentence at a time through the server and through the pipeline it runs, called in this process, in
    alternation (`args.single` of each after 10 of each to warm up): both see the same load, which on a shared
    VM moves the two medians by more than the overhead between them when they are measured one after the
    other."""
    import torch

    import fastformer as ff

    torch.set_num_threads(args.threads)
    embed = ff.pipelines.Embedder(args.model)
    served, direct = [], []
    async with _client(args.timeout) as http:
        for i in range(10 + args.single):
            body = work.body(i)
            start = time.perf_counter()
            status, *_ = await _post(http, url, body)
            if status != 200:
                raise RuntimeError(f"{url} answered {status} to one request at a time")
            middle = time.perf_counter()
            embed(body["inputs"])
            end = time.perf_counter()
            if i >= 10:
                served.append((middle - start) * 1000)
                direct.append((end - middle) * 1000)
    return {"requests": args.single, **_latencies(served)}, {"requests": args.single, **_latencies(direct)}


PARTS = ("throughput", "overload", "faults", "overhead", "streaming")


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"positive numbers separated by commas, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--model", default=None, help="a sentence-embedding checkpoint folder (default: MiniLM)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server replica (and direct)")
    parser.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                        help="fastformer serve's front door: Ray's Python proxy (default) or HAProxy")
    parser.add_argument("--quantize", choices=["int8", "bf16"], default=None, help="fastformer serve --quantize")
    parser.add_argument("--baseline-threads", type=int, default=None, help="the baseline's torch threads "
                        "(default: --threads); with --replicas 2, 2 gives both servers the machine's 2 cores")
    parser.add_argument("--replicas", type=int, default=1,
                        help="fastformer serve replicas in the throughput, overload and overhead parts (faults: 2)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-ongoing", type=int, default=None, help="default: the server's (max batch size)")
    parser.add_argument("--max-queued", type=int, default=None, help="default: the server's (8)")
    parser.add_argument("--inputs-per-request", type=int, default=1,
                        help="sentences per /embed request (throughput, overload, faults, overhead)")
    parser.add_argument("--arrival", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--seed", type=int, default=0, help="of the Poisson arrivals")
    parser.add_argument("--rate-multiples", type=_floats, default=[0.5, 1, 2, 3],
                        help="open-loop rates as multiples of the baseline's capacity")
    parser.add_argument("--rates", default=None, help="open-loop rates in requests/s (instead of multiples)")
    parser.add_argument("--rate-seconds", type=float, default=6.0, help="seconds of arrivals per rate")
    parser.add_argument("--max-requests", type=int, default=20000, help="requests per open-loop run (at most)")
    parser.add_argument("--probe-clients", type=int, default=32, help="closed-loop clients measuring capacity")
    parser.add_argument("--probe-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take")
    parser.add_argument("--overload-reference-seconds", type=float, default=10.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--fault-seconds", type=float, default=20.0)
    parser.add_argument("--fault-load", type=float, default=0.5, help="offered load as a fraction of capacity")
    parser.add_argument("--single", type=int, default=100, help="one-at-a-time requests (overhead)")
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--stream-prompt-words", type=int, default=16)
    parser.add_argument("--stream-rounds", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    args.parts = args.parts.split(",")
    if not 1 <= args.inputs_per_request <= args.max_batch_size:
        parser.error("--inputs-per-request: from 1 to --max-batch-size")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)} (of {', '.join(PARTS)})")
    if args.rates:
        _floats(args.rates)
    if args.model is None:
        from fastformer.serving import default_model_dir

        args.model = default_model_dir()
    if args.json:
        report.check_writable(args.json, "--json")
    work = Workload(args.model, args.inputs_per_request)
    print(f"{len(work.sentences)} sentences, {sum(work.tokens) / len(work.tokens):.1f} tokens on average; "
          f"load average {_load()} on {os.cpu_count()} CPUs", flush=True)
    results, load_before, started = {}, os.getloadavg(), time.perf_counter()
    if "throughput" in args.parts:
        part_throughput(args, work, results)  # and overload, on the same server
    elif "overload" in args.parts:
        part_overload_alone(args, work, results)
    if "faults" in args.parts:
        part_faults(args, work, results)
    if "overhead" in args.parts or "streaming" in args.parts:
        part_overhead_and_streaming(args, work, results)
    print(f"done in {time.perf_counter() - started:.0f} s; load average {load_before} -> {os.getloadavg()}")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        report.write_json({"meta": {**machine.describe(), "benchmark": "serve-load", "settings": settings,
                                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
                           "results": results}, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
