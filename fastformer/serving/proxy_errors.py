"""JSON bodies for the errors Ray Serve's HTTP proxy writes itself.

Our routes answer every error as {"error": {...}} JSON, but two answers never reach them: the 503 the proxy
sends when max_queued_requests is full ("Request dropped due to backpressure ...") and the 500 for a request
whose replica died (uvicorn's "Internal Server Error", written when the proxy's app raises, is cancelled or
returns without answering); both are text/plain. Clients then have to parse two formats, and the fault
benchmark counted 999 of 1000 answers as JSON only because of this. The proxy loads
middlewares from RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH when it starts; `fastformer serve` points that
at proxy_middlewares() below, which rewrites such answers as JSON with the same status and headers
(Retry-After kept)."""
import asyncio
import json

from starlette.middleware import Middleware

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "fastformer.serving.proxy_errors:proxy_middlewares"
ERROR_TYPES = {503: "overloaded", 504: "timeout"}  # any other 5xx: "server_error"


def _is_json(headers) -> bool:
    return any(name.lower() == b"content-type" and value.startswith(b"application/json") for name, value in headers)


def json_error_body(status: int, text: str) -> bytes:
    return json.dumps({"error": {"message": text, "type": ERROR_TYPES.get(status, "server_error"),
                                 "code": status}}).encode()


class JsonServerErrors:
    """Pure ASGI middleware: a 5xx answer that is not JSON is held until its body is complete and sent as
    json_error_body, and an app that raises, is cancelled or returns before an answer went out gets a JSON 500
    (or the held answer's status as JSON); every other answer passes through untouched (one comparison per
    message)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held, chunks, answered = None, [], False

        async def send_json_errors(message):
            nonlocal held, answered
            if message["type"] == "http.response.start":
                if message["status"] >= 500 and not _is_json(message.get("headers", ())):
                    held = message
                    return
                answered = True
            if held is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = json_error_body(held["status"], b"".join(chunks).decode(errors="replace").strip())
            headers = [(name, value) for name, value in held.get("headers", ())
                       if name.lower() not in (b"content-type", b"content-length")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            answered = True
            await send({**held, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        async def answer_if_unanswered():
            if not answered:  # a held start keeps its status and headers (Retry-After); its partial body is the message
                start = held or {"type": "http.response.start", "status": 500, "headers": []}
                text = b"".join(chunks) or b"Internal Server Error"
                chunks.clear()
                await send_json_errors(start)
                await send_json_errors({"type": "http.response.body", "body": text})

        try:
            await self.app(scope, receive, send_json_errors)
        except (Exception, asyncio.CancelledError):
            # The proxy raises, or its request task is cancelled, when the replica holding the request dies;
            # uvicorn would then write its own text/plain 500 outside every middleware (it does so for any
            # exception, cancellation included, while no answer has gone out). Answer first, then let it log
            # and close. `answered`, not "a start was seen": a held 5xx start has not gone out yet.
            await answer_if_unanswered()
            raise
        # Ray's proxy also returns without a word when a replica died under a request (it answers only 408, 429
        # and 503 itself), and uvicorn then writes the same text/plain 500 ("ASGI callable returned without
        # starting response"): 1 in ~700 answers of a fault run of bench/serve_load.py.
        await answer_if_unanswered()


def proxy_middlewares() -> list:
    """The callback Ray Serve's proxy calls at start (see CALLBACK_ENV)."""
    return [Middleware(JsonServerErrors)]
