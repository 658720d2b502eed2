"""The embedding server teams write by hand, the baseline of bench/serve_load.py: FastAPI + uvicorn calling
transformers' AutoModel once per request, no batching. The route is `async`, so requests run one at a time
on the event loop, as the model would anyway on these cores. TEI's POST /embed body and answer (mean
pooling, L2-normalized), so the same client drives both servers.

  python bench/serve_baseline.py MODEL_DIR --port PORT [--threads 1]
"""
import argparse

import torch
import transformers
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


def build(model_dir: str) -> FastAPI:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    api = FastAPI()

    class Embed(BaseModel):
        inputs: str | list[str]

    @api.post("/embed")
    async def embed(body: Embed):
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state  # [B, S, H]
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # [B, H]
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    return api


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(build(args.model_dir), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
