"""fastformer.serving.proxy_errors in process (no Ray): the plain-text errors Ray Serve's proxy writes come
out as JSON with their status and headers; everything else passes through byte for byte."""
import asyncio
import contextlib
import json

import pytest

httpx = pytest.importorskip("httpx")
starlette = pytest.importorskip("starlette")
pytest.importorskip("ray.serve")  # fastformer.serving needs it (and imports it like test_serve.py does)

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from fastformer.serving.proxy_errors import JsonServerErrors, proxy_middlewares  # noqa: E402

BACKPRESSURE = "Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1)."


async def backpressure(request):
    return PlainTextResponse(BACKPRESSURE, status_code=503, headers={"Retry-After": "1"})


async def died(request):
    async def chunks():  # a body in two messages: both must be collected before the JSON is written
        yield b"Internal "
        yield b"Server Error"
    return StreamingResponse(chunks(), status_code=500, media_type="text/plain")


async def ours(request):
    return JSONResponse({"error": {"message": "no", "type": "invalid_request"}}, status_code=500)


async def fine(request):
    return PlainTextResponse("hello")


APP = JsonServerErrors(Starlette(routes=[Route(p, f) for p, f in
                                         (("/backpressure", backpressure), ("/died", died), ("/ours", ours),
                                          ("/fine", fine))]))


def get(path: str, app=APP) -> httpx.Response:
    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get(path)
    return asyncio.run(call())


def test_backpressure_503_becomes_json_and_keeps_retry_after():
    response = get("/backpressure")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.json() == {"error": {"message": BACKPRESSURE, "type": "overloaded", "code": 503}}


def test_a_streamed_plain_500_becomes_one_json_body():
    response = get("/died")
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "Internal Server Error", "type": "server_error", "code": 500}}


async def raises(scope, receive, send):  # a bare ASGI app, as Ray's proxy is: no Starlette error page
    raise RuntimeError("ActorDiedError: the replica's actor died")


async def cancelled(scope, receive, send):  # the proxy's request task cancelled while it waited
    raise asyncio.CancelledError


async def returns_without_answering(scope, receive, send):  # Ray's proxy when a replica died under a request
    return None


async def raises_after_a_plain_start(scope, receive, send):  # a text 5xx started, its body never sent
    await send({"type": "http.response.start", "status": 502, "headers": [(b"content-type", b"text/plain")]})
    raise RuntimeError("ActorDiedError: the replica's actor died")


@pytest.mark.parametrize("proxy_app, error, status", [(raises, RuntimeError, 500),
                                                      (cancelled, asyncio.CancelledError, 500),
                                                      (returns_without_answering, None, 500),
                                                      (raises_after_a_plain_start, RuntimeError, 502)])
def test_an_app_that_fails_before_answering_gets_a_json_error_and_the_error_still_propagates(proxy_app, error,
                                                                                              status):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/raises", "headers": [], "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("test", 80), "http_version": "1.1"}
    with pytest.raises(error) if error else contextlib.nullcontext():  # an error still reaches the server
        asyncio.run(JsonServerErrors(proxy_app)(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == status and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": {"message": "Internal Server Error", "type": "server_error",
                                                    "code": status}}


@pytest.mark.parametrize("path", ["/ours", "/fine"])
def test_json_errors_and_successes_pass_through_unchanged(path):
    reference, response = get(path, APP.app), get(path)  # without and with the middleware
    assert (response.status_code, response.content) == (reference.status_code, reference.content)
    assert response.headers["content-type"] == reference.headers["content-type"]


def test_the_callback_returns_what_ray_serve_accepts():
    from starlette.middleware import Middleware

    middlewares = proxy_middlewares()
    assert [type(m) for m in middlewares] == [Middleware] and middlewares[0].cls is JsonServerErrors
