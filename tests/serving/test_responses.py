"""The embedding routes' response pieces (fastformer/serving/server.py), without a server."""
import json
import math

import pytest
import torch

from fastformer.serving.server import ApiError, FastJSONResponse, finite_embeddings


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
