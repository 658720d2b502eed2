"""Embedder: sentence embeddings from strings (sentence-transformers folders such as all-MiniLM-L6-v2)."""
import torch
import torch.nn.functional as F

from fastformer.pipelines.encoding import EncoderPipeline
from fastformer.pipelines.texts import check_texts


class Embedder(EncoderPipeline):
    """Embedder(path)(texts) -> float32 [N, hidden], mean-pooled and L2-normalized as sentence-transformers
    does (normalize=False: not normalized); a single string gives [hidden]. run() gives the unnormalized
    vectors, so a server can choose per request."""

    task = "sentence-embedding"

    def __init__(self, path, dtype=None, device=None, quantize=None):
        super().__init__(path, dtype=dtype, device=device, quantize=quantize, normalize=False)

    def _outputs(self, out, rows, encoding, inputs):
        return list(out.embeddings.float().cpu())

    def __call__(self, texts, batch_size: int = 32, truncate: bool = False, normalize: bool = True):
        outputs, _ = self.run(check_texts(texts), batch_size, truncate)
        vectors = torch.stack(outputs)  # [N, hidden]
        vectors = F.normalize(vectors, dim=-1) if normalize else vectors
        return vectors[0] if isinstance(texts, str) else vectors
