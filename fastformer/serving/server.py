"""FastformerServer: the Ray Serve deployment behind `fastformer serve` (one FastAPI ingress, every route).

Each replica loads every served model's pipeline once. Requests wait in one of three DynamicBatcher queues
(encoders, text generation, text2text; see batcher.py for why not @serve.batch); a batch is cut into
length-sorted forwards (see EncoderPipeline.run) and runs in a worker thread, so the event loop keeps
answering /health and queueing while the model computes. Limits are checked before a request joins a batch,
so one bad input never fails the others in its batch.
"""
import asyncio
import base64
import os
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import pydantic_core
import ray
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from fastformer.pipelines import InputTooLong, check_texts, pipeline
from fastformer.serving import requests as api_requests
from fastformer.serving.batcher import DynamicBatcher
from fastformer.serving.metrics import ServerMetrics
from fastformer.serving.streaming import completion_events, cut_at_stop

# The padding a length-sorted forward may carry before the batch is cut (0.25: 1 padded token per 4 real).
MAX_PADDING = 0.25
# How long a thread may hold the GIL while another waits (Python's default: 5 ms). The forward runs in a worker
# thread as ~250 short torch calls, each taking the GIL back, while Ray's and FastAPI's event loops want it
# for every request: with 5 ms turns each side stalls the other. Closed loop of 32 clients on one replica
# (1 thread, 2-core VM at load 4.5-5.6, two interleaved pairs): 68.7 / 69.8 req/s at 0.5 ms vs 62.4 / 54.4.
GIL_SWITCH_S = 0.0005
ENCODER_TASKS = ("sentence-embedding", "sequence-classification", "token-classification", "question-answering")


class ApiError(Exception):
    """An answer other than 200: HTTP status, an error type, and the limit it hit (name and value)."""

    def __init__(self, status: int, message: str, kind: str, limit: str | None = None, value=None):
        super().__init__(message)
        self.status, self.kind, self.limit, self.value = status, kind, limit, value


class ModelJSONResponse(JSONResponse):
    """The response of every route that returns plain content (FastAPI's default response class here). json.dumps
    refuses a NaN or infinity in a model's answer (a score of a faulty model) with a ValueError, which the
    ValueError handler below would answer as the request's fault (422); it is the model's: a 500."""

    def render(self, content) -> bytes:
        try:
            return super().render(content)
        except ValueError as e:
            raise ApiError(500, f"the model produced an answer JSON cannot carry: {e}", "server_error") from e


api = FastAPI(title="fastformer", description="fastformer serve: OpenAI- and TEI-compatible routes",
              default_response_class=ModelJSONResponse)


def _error(status: int, message: str, kind: str, limit=None, value=None) -> JSONResponse:
    error = {"message": message, "type": kind}
    if limit is not None:
        error.update(limit=limit, value=value)
    return JSONResponse({"error": error}, status_code=status)


@api.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError):
    return _error(e.status, str(e), e.kind, e.limit, e.value)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, e: RequestValidationError):
    # Malformed JSON, wrong types, unknown fields: 422 with pydantic's description of each problem.
    details = [{"loc": list(d.get("loc", ())), "msg": d.get("msg"), "type": d.get("type")} for d in e.errors()]
    return JSONResponse({"error": {"message": "invalid request body", "type": "invalid_request", "detail": details}},
                        status_code=422)


@api.exception_handler(InputTooLong)
async def _too_long(request: Request, e: InputTooLong):
    return _error(413, str(e), "input_too_long", "max_tokens", e.limit)


@api.exception_handler(ValueError)
async def _bad_value(request: Request, e: ValueError):
    return _error(422, str(e), "invalid_request")


@api.exception_handler(TypeError)
async def _bad_type(request: Request, e: TypeError):
    return _error(422, str(e), "invalid_request")


class FastJSONResponse(JSONResponse):
    """A JSONResponse rendered by pydantic-core's serializer: 23 us for one 384-float embedding instead of the
    193 us of json.dumps (in process, 2-core VM), each of which the event loop spends per request. It writes a
    NaN as NaN (not JSON) where json.dumps raised: content must be finite (see finite_embeddings)."""

    def render(self, content) -> bytes:
        return pydantic_core.to_json(content)


def finite_embeddings(vectors: list, normalize: bool) -> list:
    """The vectors (L2-normalized if asked), or a 500 naming the problem if one holds a NaN or infinity: a model
    fault, not a request's (json.dumps raised ValueError there, which answered 422)."""
    vectors = [torch.nn.functional.normalize(v, dim=-1) if normalize else v for v in vectors]
    if not all(bool(torch.isfinite(v).all()) for v in vectors):
        raise ApiError(500, "the model produced a non-finite embedding", "server_error")
    return vectors


@dataclass
class Served:
    name: str
    task: str
    pipeline: object


@dataclass
class Item:
    """One request's share of a batch: the model, its inputs and the settings that must match to share a
    forward (truncate for encoders, generation settings for decoders)."""
    model: str
    inputs: list
    settings: tuple = ()


@serve.deployment
@serve.ingress(api)
class FastformerServer:
    def __init__(self, models: list, max_batch_size: int = 32, batch_wait_ms: float = 5.0, threads: int = 1,
                 max_inputs: int | None = None, max_new_tokens: int = 256, quantize: str | None = None):
        """models: (name, checkpoint folder, task or None) triples. max_inputs: inputs per request (at most
        max_batch_size, the default). max_new_tokens: the most tokens one request may generate. quantize:
        None, "int8" or "bf16": every model is loaded so (fastformer.hf.from_pretrained)."""
        torch.set_num_threads(threads)
        sys.setswitchinterval(GIL_SWITCH_S)
        self.models = {}
        for name, path, task in models:
            task, loaded = pipeline(path, task, quantize=quantize)
            self.models[name] = Served(name, task, loaded)
        self.max_batch_size = max_batch_size
        self.max_inputs = min(max_inputs or max_batch_size, max_batch_size)
        self.max_new_tokens = max_new_tokens
        self.quantize = quantize
        self.metrics = ServerMetrics()
        self.batchers = {kind: DynamicBatcher(partial(self._run_batch, kind, run), max_batch_size, batch_wait_ms / 1000,
                                              self._queue_depth_changed)
                         for kind, run in (("encode", self._encode), ("generate", self._generate),
                                           ("text2text", self._text2text))}

    # ---- choosing a model, checking inputs, waiting for a batch ----

    def _served(self, tasks, name: str | None) -> Served:
        tasks = (tasks,) if isinstance(tasks, str) else tasks
        candidates = [m for m in self.models.values() if m.task in tasks]
        if not candidates:
            served = {m.name: m.task for m in self.models.values()}
            raise ApiError(404, f"this route needs a {' or '.join(tasks)} model; this server serves {served}",
                           "model_not_found")
        chosen = [m for m in candidates if m.name == name]
        if chosen or len(candidates) == 1:
            return (chosen or candidates)[0]
        raise ApiError(404, f"model {name!r} is not served here; pass one of {[m.name for m in candidates]}",
                       "model_not_found")

    def _texts(self, texts, name: str = "inputs") -> list:
        texts = check_texts(texts, name)
        if len(texts) > self.max_inputs:
            raise ApiError(413, f"{len(texts)} inputs in one request; the limit is {self.max_inputs} (max_inputs)",
                           "too_many_inputs", "max_inputs", self.max_inputs)
        return texts

    async def _batched(self, kind: str, item: Item):
        return await self.batchers[kind].submit(item, len(item.inputs))

    def _queue_depth_changed(self):
        self.metrics.queue_depth.set(sum(batcher.depth for batcher in self.batchers.values()))

    async def _run_batch(self, kind: str, run, items: list) -> list:
        return await asyncio.to_thread(self._run_groups, items, kind, run)

    def _run_groups(self, items: list, kind: str, run) -> list:
        """Runs run(served, inputs, settings) -> (outputs, stats, generated) once per (model, settings) group
        and hands each item its outputs (or the group's exception)."""
        results = [None] * len(items)
        groups = defaultdict(list)
        for i, item in enumerate(items):
            groups[(item.model, item.settings)].append(i)
        for (name, settings), rows in groups.items():
            inputs = [x for i in rows for x in items[i].inputs]
            start = time.perf_counter()
            try:
                outputs, stats, generated = run(self.models[name], inputs, dict(settings))
            except Exception as e:  # noqa: BLE001 - the requests of this group get the error, the replica lives on
                for i in rows:
                    results[i] = e
                continue
            self.metrics.record_batch(name, kind, len(inputs), time.perf_counter() - start, stats, generated)
            first = 0
            for i in rows:
                results[i] = outputs[first: first + len(items[i].inputs)]
                first += len(items[i].inputs)
        return results

    # ---- what a batch of each queue runs: run(served, inputs, settings) -> (outputs, stats, generated) ----

    def _encode(self, served, inputs, settings):
        outputs, stats = served.pipeline.run(inputs, self.max_batch_size, max_padding=MAX_PADDING, **settings)
        return outputs, stats, 0

    @staticmethod
    def _generate(served, prompts, settings):
        completions = served.pipeline.complete(prompts, **settings)
        return completions, None, sum(c.completion_tokens for c in completions)

    def _text2text(self, served, texts, settings):
        return served.pipeline(texts, batch_size=self.max_batch_size, **settings), None, 0

    async def _encoded(self, served: Served, inputs: list, truncate: bool) -> tuple[list, int]:
        """The pipeline's outputs for inputs, and their token count (limits checked before batching)."""
        tokens = sum(served.pipeline.count_tokens(inputs, truncate))
        return await self._batched("encode", Item(served.name, inputs, (("truncate", truncate),))), tokens

    # ---- routes ----

    @api.get("/health")
    async def health(self):
        return {"status": "ok", "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    @api.get("/ready")
    async def ready(self):
        return {"ready": True, "models": {m.name: m.task for m in self.models.values()}}

    @api.get("/v1/models")
    async def list_models(self):
        return {"object": "list", "data": [{"id": m.name, "object": "model", "owned_by": "fastformer",
                                            "task": m.task, "quantize": self.quantize}
                                           for m in self.models.values()]}

    @api.post("/v1/embeddings")
    async def embeddings(self, body: api_requests.EmbeddingsRequest):
        served = self._served("sentence-embedding", body.model)
        vectors, tokens = await self._encoded(served, self._texts(body.input, "input"), truncate=False)
        data = []
        for i, vector in enumerate(finite_embeddings(vectors, normalize=True)):
            encoded = (base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
                       if body.encoding_format == "base64" else vector.tolist())
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        return FastJSONResponse({"object": "list", "data": data, "model": served.name,
                                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @api.post("/embed")
    async def embed(self, body: api_requests.EmbedRequest):
        served = self._served("sentence-embedding", None)
        vectors, _ = await self._encoded(served, self._texts(body.inputs), body.truncate)
        # A response object skips FastAPI's jsonable_encoder, which walks every float again: 0.59 ms of the
        # replica's time for one 384-float vector.
        return FastJSONResponse([v.tolist() for v in finite_embeddings(vectors, body.normalize)])

    @api.post("/predict")
    async def predict(self, body: api_requests.PredictRequest):
        served = self._served("sequence-classification", None)
        ranked, _ = await self._encoded(served, self._texts(body.inputs), body.truncate)
        return ranked[0] if isinstance(body.inputs, str) else ranked

    @api.post("/v1/token-classification")
    async def token_classification(self, body: api_requests.TokenClassificationRequest):
        served = self._served("token-classification", None)
        tokens, _ = await self._encoded(served, self._texts(body.inputs), body.truncate)
        return {"model": served.name, "results": tokens}

    @api.post("/v1/question-answering")
    async def question_answering(self, body: api_requests.QuestionAnsweringRequest):
        served = self._served("question-answering", None)
        pair = (check_texts(body.question, "question")[0], check_texts(body.context, "context")[0])
        (answer,), _ = await self._encoded(served, [pair], body.truncate)
        if answer is None:
            return {"model": served.name, "answer": None, "start": None, "end": None, "score": None}
        return {"model": served.name, "answer": answer.text, "start": answer.start, "end": answer.end,
                "score": answer.score}

    @api.post("/v1/text2text")
    async def text2text(self, body: api_requests.Text2TextRequest):
        served = self._served("seq2seq-lm", body.model)
        texts = self._texts(body.inputs)
        settings = {k: v for k, v in (("max_new_tokens", body.max_new_tokens), ("num_beams", body.num_beams))
                    if v is not None}
        if settings.get("max_new_tokens", 0) > self.max_new_tokens:
            raise ApiError(413, f"max_new_tokens {body.max_new_tokens} is over the limit of {self.max_new_tokens} "
                           "(max_new_tokens)", "too_many_tokens", "max_new_tokens", self.max_new_tokens)
        served.pipeline.count_tokens(texts)  # InputTooLong (413) over the model's source positions
        outputs = await self._batched("text2text", Item(served.name, texts, tuple(sorted(settings.items()))))
        return {"model": served.name, "outputs": outputs}

    @api.post("/v1/completions")
    async def completions(self, body: api_requests.CompletionRequest):
        served = self._served("causal-lm", body.model)
        prompts = self._texts(body.prompt, "prompt")
        if body.max_tokens > self.max_new_tokens:
            raise ApiError(413, f"max_tokens {body.max_tokens} is over the limit of {self.max_new_tokens} "
                           "(max_new_tokens)", "too_many_tokens", "max_new_tokens", self.max_new_tokens)
        generator = served.pipeline
        positions = generator.model.max_positions
        for prompt in prompts:
            needed = generator.count_tokens(prompt) + body.max_tokens
            if positions is not None and needed > positions:
                raise ApiError(413, f"prompt tokens + max_tokens = {needed}, more than the model's {positions} "
                               "positions (max_positions)", "too_many_tokens", "max_positions", positions)
        settings = {"max_new_tokens": body.max_tokens, "do_sample": body.temperature > 0}
        if body.temperature > 0:
            settings.update(temperature=float(body.temperature), top_p=float(body.top_p), seed=body.seed)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if body.stream:
            if len(prompts) != 1:
                raise ApiError(422, "stream: true takes one prompt", "invalid_request")
            events = completion_events(generator, prompts[0], settings, stops, identity)
            return StreamingResponse(events, media_type="text/event-stream")
        completions = await self._batched("generate", Item(served.name, prompts, tuple(sorted(settings.items()))))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for i, completion in enumerate(completions):
            text, stopped = cut_at_stop(completion.text, stops)
            choices.append({"text": text, "index": i, "logprobs": None,
                            "finish_reason": "stop" if stopped else completion.finish_reason})
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.completion_tokens
        return {"object": "text_completion", **identity, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}
