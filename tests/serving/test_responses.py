"""The routes' response pieces (fastformer/serving/server.py), without a server: the embedding routes' own JSON
response, and what every other route answers when a model's output holds a NaN."""
import json
import math

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fastformer.serving.server import ApiError, FastJSONResponse, api, finite_embeddings


def test_fast_json_response_reads_back_as_the_standard_library_writes_it():
    vectors = [torch.randn(384, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    content = {"object": "list", "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
               "usage": {"prompt_tokens": 7, "total_tokens": 7}, "name": "naïve ✓"}
    rendered = FastJSONResponse(content).body
    assert json.loads(rendered) == json.loads(json.dumps(content)) == content  # every float64 exactly
    assert FastJSONResponse(content).headers["content-type"] == "application/json"


def test_finite_embeddings_normalizes_when_asked_and_refuses_a_non_finite_vector_with_a_500():
    vectors = [torch.tensor([3.0, 4.0]), torch.tensor([0.5, -1.0])]
    normalized = finite_embeddings(vectors, normalize=True)
    for got, v in zip(normalized, vectors):
        torch.testing.assert_close(got, v / v.norm(), rtol=0, atol=1e-7)
    assert all(got is v for got, v in zip(finite_embeddings(vectors, normalize=False), vectors))
    for bad in (math.nan, math.inf):
        with pytest.raises(ApiError, match="non-finite embedding") as error:
            finite_embeddings([vectors[0], torch.tensor([1.0, bad])], normalize=False)
        assert error.value.status == 500


def test_a_non_finite_model_answer_is_a_500_and_a_bad_value_still_a_422():
    """The routes that return plain content (/predict, token classification, QA, completions) render through the
    app's default response class; a NaN score from a faulty model is the server's fault. An app with the server's
    response class and error handlers, so that the handlers' order and precedence are the server's."""
    app = FastAPI(default_response_class=api.router.default_response_class)
    app.exception_handlers.update(api.exception_handlers)

    @app.post("/score")
    async def score(value: float):
        if value < 0:
            raise ValueError("value must be >= 0")  # what a request check raises: still the client's fault
        return {"label": "POSITIVE", "score": math.inf if value > 1e300 else math.sqrt(value)}

    with TestClient(app) as client:
        assert client.post("/score", params={"value": 0.25}).json() == {"label": "POSITIVE", "score": 0.5}
        for bad in ("nan", "1e308"):  # NaN from sqrt(nan); 1e308 -> inf
            answer = client.post("/score", params={"value": bad})
            assert answer.status_code == 500
            assert answer.json()["error"]["type"] == "server_error"
        refused = client.post("/score", params={"value": -1})
        assert refused.status_code == 422 and refused.json()["error"]["message"] == "value must be >= 0"
