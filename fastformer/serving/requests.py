"""Request bodies of every route, as pydantic models that reject unknown fields and wrong types (HTTP 422).

Field names follow the APIs clients already speak: OpenAI's /v1/embeddings and /v1/completions, Text
Embeddings Inference's /embed and /predict."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Texts = StrictStr | list[StrictStr]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(Strict):
    """OpenAI POST /v1/embeddings. The openai client asks for base64 (little-endian float32) by default."""
    input: Texts
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: StrictStr | None = None


class CompletionRequest(Strict):
    """OpenAI POST /v1/completions (one choice per prompt; temperature 0 is greedy decoding)."""
    prompt: Texts
    model: StrictStr | None = None
    max_tokens: StrictInt = Field(16, ge=1)
    temperature: StrictFloat | StrictInt = Field(1.0, ge=0, le=2)
    top_p: StrictFloat | StrictInt = Field(1.0, gt=0, le=1)
    stop: Texts | None = None
    stream: StrictBool = False
    seed: StrictInt | None = None
    n: Literal[1] = 1
    user: StrictStr | None = None


class EmbedRequest(Strict):
    """Text Embeddings Inference POST /embed."""
    inputs: Texts
    normalize: StrictBool = True
    truncate: StrictBool = False


class PredictRequest(Strict):
    """Text Embeddings Inference POST /predict: every label with its score, best first."""
    inputs: Texts
    truncate: StrictBool = False


class TokenClassificationRequest(Strict):
    inputs: Texts
    truncate: StrictBool = False


class QuestionAnsweringRequest(Strict):
    question: StrictStr
    context: StrictStr
    truncate: StrictBool = False


class Text2TextRequest(Strict):
    """Translation or summarization with the served T5 / BART / Marian model."""
    inputs: Texts
    model: StrictStr | None = None
    max_new_tokens: StrictInt | None = Field(None, ge=1)
    num_beams: StrictInt | None = Field(None, ge=1, le=8)
