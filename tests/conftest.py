"""Shared fixtures. Tests import helper modules from this directory (oracle/, real_models)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from small_gguf import write_small_gguf  # noqa: E402


def shared_dir() -> Path:
    return Path(os.environ.get("METALLIC_SHARED", REPO.parent / "shared"))


def pytest_sessionstart(session: pytest.Session) -> None:
    # The tokenizer vectors come from ../shared. Locally their tests skip without it; in CI
    # a missing data set must fail loudly, not turn into a green run that tested less.
    if os.environ.get("CI") and not (shared_dir() / "tokenizer").is_dir():
        raise pytest.UsageError(
            f"CI needs the tokenizer vectors at {shared_dir() / 'tokenizer'} "
            "(set METALLIC_SHARED to the shared/ directory)"
        )


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid qwen2 model (random weights, F16 matrices, no tokenizer)."""
    return write_small_gguf(tmp_path_factory.mktemp("small") / "small.gguf")
