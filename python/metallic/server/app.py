"""The application: FastAPI routes (OpenAI, Ollama, operations) over one scheduler, behind the
server middleware. The model loads on a thread of its own once the server runs, so /health
answers (503) while it loads."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .. import __version__
from . import ollama_routes, openai_routes, ops_routes
from .errors import install_handlers
from .middleware import ServerMiddleware
from .state import Loader, ServerOptions, ServerState


def create_app(
    options: ServerOptions,
    loader: Loader,
    *,
    on_loaded: Callable[[ServerState], None] | None = None,
) -> FastAPI:
    """The server for the model ``loader`` returns (a Model and its Slots, as
    scheduler.make_slots does). ``on_loaded(state)`` runs when loading ends, either way
    (``state.load_error`` says which)."""
    state = ServerState(options)

    def load() -> None:
        state.load(loader)
        if on_loaded is not None:
            on_loaded(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=load, name="metallic-loader", daemon=True).start()
        try:
            yield
        finally:
            # uvicorn has stopped taking connections and waited for the open ones: what is
            # still running is cancelled, and the scheduler's thread joined.
            await run_in_threadpool(state.close)

    app = FastAPI(title="Metallic", version=__version__, lifespan=lifespan)
    app.state.metallic = state
    install_handlers(app)
    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(ops_routes.router)
    app.add_middleware(ServerMiddleware, state=state)
    return app
