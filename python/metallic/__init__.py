"""Metallic: LLM inference for Apple Silicon, with a fast CPU backend everywhere.

import metallic
model = metallic.load("model.gguf")
for tok in model.generate("The capital of France is", max_tokens=16, temperature=0):
    print(tok.text, end="", flush=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ContextError,
    GGUFError,
    InternalError,
    MetallicError,
    ModelBusyError,
    ModelError,
    RequestError,
)

__version__ = "0.1.0"
__all__ = [
    "load",
    "ContextError",
    "GGUFError",
    "InternalError",
    "MetallicError",
    "ModelBusyError",
    "ModelError",
    "RequestError",
    "__version__",
]

if TYPE_CHECKING:
    from .model import Model


def __dir__() -> list[str]:
    # What `dir(metallic)` and completion show: the public names, not our imports.
    return sorted(__all__)


def load(
    path: str,
    backend: str | None = "auto",
    n_ctx: int | None = None,
    threads: int | None = None,
    **kwargs: Any,
) -> Model:
    """Loads a model: a GGUF path, a known name ("smollm2-135m-instruct") or a Hugging Face id
    ("hf:OWNER/REPO:QUANT"); see metallic.model.load for every option."""
    from .model import load as _load

    return _load(path, backend=backend, n_ctx=n_ctx, threads=threads, **kwargs)
