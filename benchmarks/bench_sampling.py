"""Per-token sampling cost on a Qwen2-sized logits vector (151,936 entries).

Run: PYTHONPATH=python python -m pytest benchmarks/bench_sampling.py --benchmark-only

Random normal logits are a pessimistic input: the distribution is flat, so top-p keeps
thousands of tokens where a real model's peaked distribution keeps a handful.
"""

from __future__ import annotations

import numpy as np
import pytest

from metallic.sampling import Sampler, SamplerSettings

VOCAB = 151_936


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(VOCAB) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def history() -> list[int]:
    return np.random.default_rng(1).integers(0, VOCAB, 64).tolist()


def test_greedy(benchmark, logits: np.ndarray) -> None:
    benchmark(Sampler(SamplerSettings(temperature=0.0)).sample, logits)


def test_greedy_repeat_penalty(benchmark, logits: np.ndarray, history: list[int]) -> None:
    sampler = Sampler(SamplerSettings(temperature=0.0, repeat_penalty=1.1))
    benchmark(sampler.sample, logits, history)


def test_top_k_top_p(benchmark, logits: np.ndarray) -> None:
    sampler = Sampler(SamplerSettings(top_k=40, top_p=0.95, min_p=0.0, seed=0))
    benchmark(sampler.sample, logits)


def test_top_k_top_p_repeat_penalty(benchmark, logits: np.ndarray, history: list[int]) -> None:
    settings = SamplerSettings(top_k=40, top_p=0.95, min_p=0.0, repeat_penalty=1.1, seed=0)
    benchmark(Sampler(settings).sample, logits, history)


def test_default_chain(benchmark, logits: np.ndarray, history: list[int]) -> None:
    # llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8.
    benchmark(Sampler(SamplerSettings(repeat_penalty=1.1, seed=0)).sample, logits, history)
