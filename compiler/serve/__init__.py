"""OpenAI-compatible HTTP server: `create_app(engine)` and `serve(model, host, port, ...)`."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
