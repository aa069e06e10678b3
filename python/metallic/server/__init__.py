"""`python -m metallic serve`: an OpenAI- and Ollama-compatible HTTP server over the
continuous-batching scheduler (metallic.scheduler). Needs the optional extra ``serve``
(FastAPI, uvicorn, pydantic, prometheus-client).

    app.py            create_app: the routes, the middleware, loading the model
    state.py          ServerOptions, and what a running server holds
    middleware.py     API key, body-size cap, the per-request log line and count
    errors.py         errors in OpenAI's and Ollama's shapes, with their status codes
    generation.py     prompts to ids, parameters to a scheduler Request, streams and disconnects
    openai_*.py       /v1/models, /v1/completions, /v1/chat/completions
    ollama_*.py       /, /api/version, /api/tags, /api/ps, /api/show, /api/generate, /api/chat
    ops_routes.py     /health, /metrics, /tokenize, /detokenize
    metrics.py        Prometheus metrics (a registry per app)
"""

from __future__ import annotations

from .app import create_app
from .state import ServerOptions, ServerState

__all__ = ["ServerOptions", "ServerState", "create_app"]
