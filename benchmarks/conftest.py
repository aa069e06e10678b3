"""Benchmark fixtures: the models are made (Qwen2.5-0.5B shape, random weights) or fetched
(the two real models) once and cached; see models.py and tests/real_models.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from models import bench_model  # noqa: E402
from real_models import gemma3_gguf, smollm2_gguf  # noqa: E402

MODELS = {
    "qwen2.5-0.5b-shape-F16": lambda: bench_model("F16"),
    "qwen2.5-0.5b-shape-Q8_0": lambda: bench_model("Q8_0"),
    "smollm2-135m-Q4_1": smollm2_gguf,
    "gemma3-270m-Q4_K_M": gemma3_gguf,
}


@pytest.fixture(scope="session", params=list(MODELS))
def model_file(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, MODELS[request.param]()
