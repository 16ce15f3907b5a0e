"""An OpenAI-compatible HTTP server on one base with many adapters (FastAPI + uvicorn, the `serve` extra)."""

from lora_rlhf.serve.app import create_app
from lora_rlhf.serve.server import BackgroundServer, run_server

__all__ = ["BackgroundServer", "create_app", "run_server"]
