"""The server's own Prometheus metrics (ray.util.metrics: exported with Ray's on each node's metrics port,
prefixed "ray_"), tagged by model and by route kind ("encode", "generate", "text2text")."""
from ray.util import metrics

_TAGS = ("model", "kind")


class ServerMetrics:
    def __init__(self):
        self.batch_size = metrics.Histogram(
            "fastformer_batch_size", "inputs per dynamic batch",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=_TAGS)
        self.forwards = metrics.Counter("fastformer_forwards", "model forwards run (a batch is cut by length)",
                                        tag_keys=_TAGS)
        self.real_tokens = metrics.Counter("fastformer_real_tokens", "tokens of the inputs", tag_keys=_TAGS)
        self.padded_tokens = metrics.Counter("fastformer_padded_tokens", "tokens computed, padding included",
                                             tag_keys=_TAGS)
        self.generated_tokens = metrics.Counter("fastformer_generated_tokens", "tokens generated", tag_keys=_TAGS)
        self.tokens_per_second = metrics.Gauge(
            "fastformer_tokens_per_second", "input tokens (encoders) or generated tokens per second of the last batch",
            tag_keys=_TAGS)
        self.queue_depth = metrics.Gauge("fastformer_queue_depth", "requests in this replica waiting for a batch")

    def record_batch(self, model: str, kind: str, inputs: int, seconds: float, stats=None, generated: int = 0):
        tags = {"model": model, "kind": kind}
        self.batch_size.observe(inputs, tags=tags)
        tokens = generated
        if stats is not None:
            self.forwards.inc(stats.batches, tags=tags)
            self.real_tokens.inc(stats.real_tokens, tags=tags)
            self.padded_tokens.inc(stats.padded_tokens, tags=tags)
            tokens = stats.real_tokens
        if generated:
            self.generated_tokens.inc(generated, tags=tags)
        self.tokens_per_second.set(tokens / max(seconds, 1e-9), tags=tags)
