"""Benchmark fixtures: the models are made (Qwen2.5-0.5B shape, random weights) or fetched
(the two real models) once and cached; see models.py and tests/real_models.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from models import benchmark_models  # noqa: E402

MODELS = benchmark_models()


@pytest.fixture(scope="session", params=list(MODELS))
def model_file(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, MODELS[request.param]()
