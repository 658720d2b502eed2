"""Scale-out: `fastformer serve --address` joins a two-node Ray cluster started here with `ray start` (both nodes
on 127.0.0.1, one CPU each), and its two replicas land on different nodes. Everything this test starts is
stopped by PID: the nodes' processes, daemons included, are the ones whose environment carries this test's
marker variable (ray start hands its environment down to every process of the node)."""
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from tests.bert_tiny import save_tiny_bert
from tests.processes import descendants, wait_ready

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports() -> list[str]:
    """The ports one node binds, distinct for each node on the machine."""
    names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    return [arg for name, port in zip(names, free_ports(len(names))) for arg in (name, str(port))]


MARKER = "FASTFORMER_SERVE_CLUSTER_TEST"


def processes_marked(value: str) -> list[int]:
    """The processes whose environment has MARKER=value (those this test started) and all their descendants
    (Ray's agents retitle themselves with setproctitle, which overwrites their /proc environ)."""
    marked, wanted = set(), f"{MARKER}={value}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if wanted in f.read().split(b"\0"):
                    marked.add(int(pid))
        except OSError:
            continue
    return sorted(marked | descendants(*marked))


def stop(pids: list[int]):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in pids):
            time.sleep(0.2)


def ray_start(args: list[str], env: dict):
    done = subprocess.run([RAY, "start", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ray start {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_two_replicas_on_a_two_node_cluster(tmp_path):
    save_tiny_bert(tmp_path / "classify")
    temp_dir = tempfile.mkdtemp(prefix="ffray")  # short: Ray's socket paths live under it
    gcs_port, client_port, http_port = free_ports(3)
    # Loopback only, so no token authentication (Ray 2.60 turns it on by default for `ray start`).
    # The one proxy (HeadOnly: both nodes share 127.0.0.1) would send everything to the head's replica while it
    # keeps up (Ray Serve prefers replicas on the proxy's node); turned off, it picks among both.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0", MARKER: temp_dir}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    server = None
    try:
        ray_start(["--head", "--port", str(gcs_port), "--ray-client-server-port", str(client_port), "--temp-dir",
                   temp_dir, "--include-dashboard", "false", *common, *node_ports()], env)
        ray_start(["--address", f"127.0.0.1:{gcs_port}", "--resources", '{"second_node": 1}', *common,
                   *node_ports()], env)
        server = subprocess.Popen(
            [sys.executable, "-m", "fastformer", "serve", str(tmp_path / "classify"), "--address",
             f"127.0.0.1:{gcs_port}", "--replicas", "2", "--port", str(http_port), "--proxy-location", "HeadOnly",
             "--name", "cluster-test"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{http_port}"
        wait_ready(url, server, 150)
        nodes, deadline = set(), time.monotonic() + 90  # /ready answers once the first replica is up
        while len(nodes) < 2 and time.monotonic() < deadline:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:  # the router picks among the replicas at random
                nodes |= set(pool.map(lambda _: httpx.get(f"{url}/health", timeout=30).json()["node_id"], range(16)))
        assert len(nodes) == 2, nodes  # one replica per one-CPU node
        ranked = httpx.post(f"{url}/predict", json={"inputs": ["w5 w6", "w7"]}, timeout=30).json()
        assert [len(r) for r in ranked] == [3, 3]
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # deletes its application, disconnects
            try:
                server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                stop([server.pid])
        for _ in range(3):  # a dying node may still start a process between scans
            stop(processes_marked(temp_dir))
