"""What a running server holds: its options, the model and scheduler once loaded, its metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..scheduler import Scheduler
from .errors import APIError
from .metrics import Metrics

if TYPE_CHECKING:
    from ..batch import Slots
    from ..model import Model

log = logging.getLogger("metallic.server")

DEFAULT_MAX_BODY = 8 << 20  # bytes of a request body
DEFAULT_MAX_QUEUE = 64


@dataclass(frozen=True)
class ServerOptions:
    """The server's settings (the `serve` command's flags)."""

    model_alias: str | None = None  # the name /v1/models and /api/tags report (default: file stem)
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on every route but /health
    max_body: int = DEFAULT_MAX_BODY  # larger request bodies get 413
    max_tokens: int | None = None  # cap on a request's max_tokens (None: the context)
    max_queue: int = DEFAULT_MAX_QUEUE  # requests waiting for a slot; more get 503
    prefill_chunk: int | None = None  # prompt tokens per step while others decode
    chat_template: str | None = None  # overrides the model's (a built-in name, file, Jinja)


Loader = Callable[[], "tuple[Model, Slots]"]


class ServerState:
    """The model and scheduler (None while loading), and what the routes share."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.model: Model | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()  # set when loading ended, either way
        self.started = time.time()
        self.load_seconds = 0.0

    def load(self, loader: Loader) -> None:
        """Runs the loader (on a thread of its own, see app.py) and starts the scheduler."""
        t0 = time.perf_counter()
        try:
            model, slots = loader()
            if "tokenizer.ggml.model" not in model.metadata:
                raise APIError(500, f"{model.path.name} has no tokenizer: it cannot serve text")
            self.scheduler = Scheduler(
                slots,
                model.tokenizer,
                max_queue=self.options.max_queue,
                prefill_chunk=self.options.prefill_chunk,
                observer=self.metrics,
                model=model,
            )
            self.metrics.bind(self.scheduler)
            _prepare_constraints(model)
            self.load_seconds = time.perf_counter() - t0
            self.model = model
        except BaseException as e:  # noqa: BLE001 - reported by /health and the CLI
            self.load_error = e
            log.error("loading the model failed: %s", e)
        finally:
            self.loaded.set()

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close(cancel=True, timeout=30)

    @property
    def name(self) -> str:
        """The model's name in responses."""
        if self.options.model_alias:
            return self.options.model_alias
        return self.model.path.stem if self.model is not None else "loading"

    def ready(self) -> tuple[Model, Scheduler]:
        """The model and scheduler, or the 503 (loading) or 500 (failed to load) answer."""
        if self.model is not None and self.scheduler is not None:
            return self.model, self.scheduler
        if self.load_error is not None:
            raise APIError(500, f"the model failed to load: {self.load_error}", code="load_failed")
        raise APIError(
            503,
            "the model is loading; try again shortly",
            code="model_loading",
            headers={"Retry-After": "1"},
        )

    def names(self) -> set[str]:
        """Names a request may use for the served model."""
        model = self.model
        names = {self.name}
        if model is not None:
            path = Path(model.path)
            names |= {path.name, path.stem, str(path)}
        return names | {f"{n}:latest" for n in names}

    def check_model(self, requested: str | None) -> None:
        """404 unless ``requested`` names the served model."""
        if requested is None or requested in self.names():
            return
        raise APIError(
            404,
            f"the model '{requested}' does not exist; this server serves '{self.name}'",
            param="model",
            code="model_not_found",
        )


def _prepare_constraints(model: Model) -> None:
    """Builds the JSON constraint's token tables now, not at the first request that asks for
    JSON output (about 0.2 s for a 49k vocabulary, holding the GIL)."""
    try:
        from ..constrain import prepare
    except ImportError:
        return
    try:
        prepare(model.tokenizer)
    except ImportError:  # llguidance is not installed: JSON output requests get a 400
        log.info("constrained JSON output is off: llguidance is not installed")
