"""Where the tests and benchmarks find their data: the one place that knows.

- ``shared_dir()``: the shared data sets (tokenizer vectors and vocabularies): ``$METALLIC_SHARED``,
  else ``shared/`` beside the repository checkout.
- ``cache_dir()``: files the tests fetch or build once and keep (real models, references, the
  oracle's models, the benchmark model): ``$METALLIC_TEST_CACHE``, else ``tests/`` in Metallic's
  own model cache (``metallic.models.cache_dir()``: ``$METALLIC_CACHE``, else
  ``~/.cache/metallic``), where the packaged models it assembles also live.

Test modules and conftest files import these; nothing else reads those variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from metallic.models import cache_dir as metallic_cache_dir

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE_ENV = "METALLIC_TEST_CACHE"


def shared_dir() -> Path:
    return Path(os.environ.get("METALLIC_SHARED") or REPO.parent / "shared")


def cache_dir(*parts: str) -> Path:
    """The test cache, or a folder in it (created)."""
    root = os.environ.get(TEST_CACHE_ENV)
    path = Path(root) if root else metallic_cache_dir() / "tests"
    path = path.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_is_persistent() -> bool:
    """Whether a cache was asked for explicitly. The oracle's models are cheap to rebuild and
    keyed by their generator's fingerprint, so without one they go to a temporary folder."""
    return bool(os.environ.get(TEST_CACHE_ENV))
