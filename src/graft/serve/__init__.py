"""Serving: an OpenAI-compatible HTTP API (FastAPI + uvicorn) and a playground page over the
generation engine (`graft.infer.engine`). `graft serve` runs `serve`; `create_app` builds the app
around an engine you own, for embedding or testing."""

from graft.serve.app import ServeOptions, create_app, serve
from graft.serve.model_info import ModelInfo, describe_model

__all__ = ["ModelInfo", "ServeOptions", "create_app", "describe_model", "serve"]
