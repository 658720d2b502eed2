"""`fastformer serve`: pipelines behind OpenAI- and TEI-compatible HTTP routes on Ray Serve, with dynamic
batching, backpressure and replicas across a Ray cluster. Needs the `serve` extra (ray[serve])."""
from fastformer.serving.app import app, default_model_dir

__all__ = ["app", "default_model_dir"]
