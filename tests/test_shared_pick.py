"""The shared seeded pick (cpp/engine/top_k_pick.h, _core.pick_token), which the sampler uses for
settings without penalties and with top-k <= PICK_TOP_K_MAX, and which GPU-resident decoding runs
on the GPU (its kernel is checked against pick_token in test_metal_sample.py). Here the rule
itself: its draws follow the sampler's float64 distribution, ties go to the smaller index, the
stream is a pure function of seed and counter, and bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest

from metallic import _core
from metallic.errors import ModelError, RequestError
from metallic.sampling import PICK_TOP_K_MAX, Sampler, SamplerSettings

rng = np.random.default_rng(17)
N = 20_000  # draws per distribution check: 5 standard errors are at most 0.018


def _frequencies(sampler: Sampler, x: np.ndarray, n: int = N) -> np.ndarray:
    counts = np.zeros(x.size)
    for _ in range(n):
        counts[sampler.sample(x)] += 1
    return counts / n


@pytest.mark.parametrize(
    "settings",
    [
        SamplerSettings(seed=1),  # llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05, T 0.8
        SamplerSettings(seed=2, temperature=1.5, top_k=10, top_p=1.0, min_p=0.0),
        SamplerSettings(seed=3, temperature=0.7, top_k=PICK_TOP_K_MAX, top_p=0.6, min_p=0.0),
        SamplerSettings(seed=4, temperature=2.0, top_k=30, top_p=1.0, min_p=0.1),
    ],
)
def test_draws_follow_the_samplers_distribution(settings):
    x = (2 * rng.standard_normal(300)).astype(np.float32)
    sampler = Sampler(settings)
    assert settings.shared_pick
    tokens, probs = sampler.distribution(x)
    p = np.zeros(x.size)
    p[tokens] = probs
    f = _frequencies(sampler, x)
    assert sampler.draws == N
    assert np.all(f[p == 0] == 0), "a token outside the filters was drawn"
    tol = 5 * np.sqrt(p * (1 - p) / N) + 2e-3
    assert np.all(np.abs(f - p) <= tol), np.max(np.abs(f - p) - tol)


def test_ties_go_to_the_smaller_index():
    # Eight equal logits, top-k 3, no temperature: exactly tokens 2, 4, 5 are candidates (0 and 1
    # are lower), each a third of the time.
    x = np.array([0, 0, 5, 1, 5, 5, 5, 5, 5, 5, 5, 5], np.float32)
    seen = [_core.pick_token(x, 3, 1.0, 0.0, 0.0, 9, c)[0] for c in range(3000)]
    counts = np.bincount(seen, minlength=x.size)
    assert set(np.flatnonzero(counts)) == {2, 4, 5}
    assert np.all(np.abs(counts[[2, 4, 5]] / 3000 - 1 / 3) < 0.04)


def test_masked_candidates_are_never_drawn():
    x = np.full(100, -np.inf, np.float32)
    x[[7, 50]] = [1.0, 0.5]  # fewer unmasked tokens than top-k
    seen = {_core.pick_token(x, 40, 1.0, 0.0, 1.0, 3, c)[0] for c in range(2000)}
    assert seen == {7, 50}


def test_the_stream_is_a_function_of_seed_and_counter():
    x = (2 * rng.standard_normal(500)).astype(np.float32)
    a = [_core.pick_token(x, 40, 0.95, 0.05, 1.25, 2**64 - 1, c)[0] for c in range(200)]
    b = [_core.pick_token(x, 40, 0.95, 0.05, 1.25, 2**64 - 1, c)[0] for c in range(200)]
    other = [_core.pick_token(x, 40, 0.95, 0.05, 1.25, 2**63 - 1, c)[0] for c in range(200)]
    assert a == b
    assert a != other  # the seed's high bits matter
    s1, s2 = Sampler(SamplerSettings(seed=2**70)), Sampler(SamplerSettings(seed=2**70))
    assert [s1.sample(x) for _ in range(50)] == [s2.sample(x) for _ in range(50)]
    fresh = [Sampler(SamplerSettings(temperature=3.0)).sample(x) for _ in range(20)]
    assert len(set(fresh)) > 1  # no seed: a fresh stream each time


def test_unusable_logits_raise_the_host_errors():
    s = Sampler(SamplerSettings(seed=0))
    bad = np.zeros(10, np.float32)
    bad[3] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        s.sample(bad)
    with pytest.raises(RequestError, match="-inf"):
        s.sample(np.full(10, -np.inf, np.float32))
    assert s.draws == 0  # a refused pick makes no draw


def test_other_settings_and_float64_logits_draw_on_the_host():
    x = rng.standard_normal(50)
    for settings in (
        SamplerSettings(seed=0, top_k=0),
        SamplerSettings(seed=0, top_k=PICK_TOP_K_MAX + 1),
        SamplerSettings(seed=0, repeat_penalty=1.2),
        SamplerSettings(temperature=0),
    ):
        assert not settings.shared_pick
        assert Sampler(settings).resident_pick() is None
    s = Sampler(SamplerSettings(seed=0))
    s.sample(x)  # float64: numpy's generator
    assert s.draws == 0
    s.sample(x.astype(np.float32))
    assert s.draws == 1


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((0, 1.0, 0.0, 1.0), "top_k"),
        ((PICK_TOP_K_MAX + 1, 1.0, 0.0, 1.0), "top_k"),
        ((40, 0.0, 0.0, 1.0), "top_p"),
        ((40, 1.5, 0.0, 1.0), "top_p"),
        ((40, 1.0, -0.1, 1.0), "min_p"),
        ((40, 1.0, 0.0, float("nan")), "inv_temp"),
        ((40, 1.0, 0.0, -1.0), "inv_temp"),
    ],
)
def test_bad_settings_are_refused(args, what):
    with pytest.raises(RequestError, match=what):
        _core.pick_token(np.zeros(10, np.float32), *args, 0, 0)
