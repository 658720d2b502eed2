"""Embedder: sentence embeddings from strings (sentence-transformers folders such as all-MiniLM-L6-v2)."""
import torch

from fastformer.pipelines.encoding import EncoderPipeline


class Embedder(EncoderPipeline):
    """Embedder(path)(texts) -> float32 [N, hidden] (mean-pooled, L2-normalized unless normalize=False);
    a single string gives [hidden]."""

    task = "sentence-embedding"

    def _outputs(self, out, rows, encoding, inputs):
        return list(out.embeddings.float().cpu())

    def _gather(self, outputs: list) -> torch.Tensor:
        return torch.stack(outputs)  # [N, hidden]
