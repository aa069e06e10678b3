"""Metallic: LLM inference for Apple Silicon, with a fast CPU backend everywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .model import Model


def load(path: str, backend: str = "auto", n_ctx: int | None = None,
         threads: int | None = None, **kwargs: Any) -> Model:
    """Load a GGUF model. See :func:`metallic.model.load`."""
    from .model import load as _load

    return _load(path, backend=backend, n_ctx=n_ctx, threads=threads, **kwargs)
