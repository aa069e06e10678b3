"""Sampling: the chain against a direct, sort-everything reference of llama.cpp's formulas."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from metallic.errors import ModelError, RequestError
from metallic.sampling import (
    GREEDY_BELOW,
    REPEAT_PENALTY_RANGE,
    Sampler,
    SamplerSettings,
    _top_superset,
    apply_penalties,
)

VOCAB = 151_936  # Qwen2's vocabulary, the size the fast paths are built for
GREEDY = SamplerSettings(temperature=0.0)
PLAIN = SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


# --- the reference: llama.cpp's samplers written as plainly as possible -----------------------


def ref_penalize(logits: np.ndarray, history: list[int], s: SamplerSettings) -> np.ndarray:
    out = logits.astype(np.float32).copy()
    if s.penalty_last_n == 0:
        return out
    window = history if s.penalty_last_n == -1 else history[-s.penalty_last_n :]
    counts: dict[int, int] = {}
    for t in window:
        counts[t] = counts.get(t, 0) + 1
    rp, fp, pp = (
        np.float32(v) for v in (s.repeat_penalty, s.frequency_penalty, s.presence_penalty)
    )
    for t, c in counts.items():
        v = out[t]
        v = v * rp if v <= 0 else v / rp
        out[t] = v - (np.float32(c) * fp + pp)
    return out


def ref_distribution(
    logits: np.ndarray,
    s: SamplerSettings,
    history: list[int] = (),  # type: ignore[assignment]
) -> dict[int, float]:
    """Token -> probability after penalties, top-k, top-p, min-p and temperature."""
    x = ref_penalize(logits, list(history), s).astype(np.float64)
    order = np.argsort(-x, kind="stable")
    if s.temperature == 0:
        return {int(order[0]): 1.0}
    if s.top_k > 0:
        order = order[: s.top_k]
    if s.top_p < 1:
        p = np.exp(x[order] - x[order[0]])
        cum = np.cumsum(p / p.sum())
        n = next((i + 1 for i, c in enumerate(cum) if c >= s.top_p), len(order))
        order = order[:n]
    if s.min_p > 0:
        order = order[x[order] >= x[order[0]] + math.log(s.min_p)]
    w = np.exp((x[order] - x[order[0]]) / s.temperature)
    return {int(t): float(q) for t, q in zip(order, w / w.sum(), strict=True)}


def as_dict(tokens: np.ndarray, probs: np.ndarray) -> dict[int, float]:
    assert len(set(tokens.tolist())) == tokens.size, "a token appears twice"
    return {int(t): float(q) for t, q in zip(tokens, probs, strict=True) if q > 0}


def assert_same_distribution(got: dict[int, float], want: dict[int, float]) -> None:
    want = {t: q for t, q in want.items() if q > 0}
    assert got.keys() == want.keys(), (
        f"extra {sorted(got.keys() - want.keys())[:10]}, "
        f"missing {sorted(want.keys() - got.keys())[:10]}"
    )
    for t in want:
        assert got[t] == pytest.approx(want[t], rel=1e-6, abs=1e-12), t


def frequencies(sampler: Sampler, logits: np.ndarray, n: int, history=()) -> np.ndarray:
    counts = np.zeros(logits.size)
    for _ in range(n):
        counts[sampler.sample(logits, history)] += 1
    return counts / n


def assert_frequencies(freq: np.ndarray, want: dict[int, float], n: int) -> None:
    p = np.zeros(freq.size)
    for t, q in want.items():
        p[t] = q
    # Five standard deviations of a binomial count: a fixed seed makes this deterministic, the
    # margin makes it insensitive to the seed.
    tol = 5 * np.sqrt(p * (1 - p) / n) + 1e-9
    assert np.all(np.abs(freq - p) <= tol), np.c_[freq, p]
    assert freq[p == 0].sum() == 0, "sampled a token the filters removed"


def random_logits(seed: int, n: int = VOCAB, peaked: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * (2.0 if peaked else 3.0)).astype(np.float32)
    if peaked:  # a few strong candidates over a long tail, as language models produce
        x[rng.integers(0, n, 12)] += rng.uniform(6, 14, 12).astype(np.float32)
    return x


SMALL = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0], dtype=np.float32)


# --- greedy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed: int) -> None:
    x = random_logits(seed)
    x[np.random.default_rng(seed).integers(0, VOCAB, 1000)] = -np.inf
    assert Sampler(GREEDY).sample(x) == int(np.argmax(x))
    assert Sampler(GREEDY).sample(x.astype(np.float64)) == int(np.argmax(x))


def test_greedy_ties_take_the_lowest_id_like_argmax() -> None:
    assert Sampler(GREEDY).sample(np.array([1, 3, 0, 3], dtype=np.float32)) == 1


@pytest.mark.parametrize("temperature", [0.1, 0.8, 1.0, 5.0])
def test_top_k_1_is_greedy_at_any_temperature(temperature: float) -> None:
    sampler = Sampler(SamplerSettings(temperature=temperature, top_k=1, seed=3))
    for seed in range(5):
        x = random_logits(seed)
        assert sampler.sample(x) == int(np.argmax(x))


# --- the distribution each setting produces ---------------------------------------------------

SETTINGS = {
    "plain": PLAIN,
    "temperature": replace(PLAIN, temperature=0.5),
    "hot": replace(PLAIN, temperature=2.0),
    "top_k": replace(PLAIN, top_k=3),
    "top_p": replace(PLAIN, top_p=0.8),
    "min_p": replace(PLAIN, min_p=0.2),
    "top_k_min_p": replace(PLAIN, top_k=6, min_p=0.2),
    "default_chain": SamplerSettings(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05),
    "top_p_min_p": replace(PLAIN, top_p=0.9, min_p=0.1, temperature=0.7),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_distribution_small_vocab(name: str) -> None:
    s = SETTINGS[name]
    got = Sampler(s).distribution(SMALL)
    assert_same_distribution(as_dict(*got), ref_distribution(SMALL, s))


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p", "min_p", "default_chain"])
def test_sample_frequencies_match_the_distribution(name: str) -> None:
    s = replace(SETTINGS[name], seed=1234)
    n = 8_000
    assert_frequencies(frequencies(Sampler(s), SMALL, n), ref_distribution(SMALL, s), n)


LARGE_SETTINGS = {
    "default": SamplerSettings(),
    "top_k_only": replace(PLAIN, top_k=40),
    "top_k_top_p": SamplerSettings(top_k=40, top_p=0.9, min_p=0.0),
    "top_p_only": replace(PLAIN, top_p=0.95),
    "top_p_low": replace(PLAIN, top_p=0.3),
    "top_p_min_p": replace(PLAIN, top_p=0.95, min_p=0.05),
    "min_p_only": replace(PLAIN, min_p=0.1),
    "big_k": replace(PLAIN, top_k=5000, top_p=0.99),
}


@pytest.mark.parametrize("peaked", [False, True], ids=["flat", "peaked"])
@pytest.mark.parametrize("name", LARGE_SETTINGS)
def test_distribution_full_vocab(name: str, peaked: bool) -> None:
    # The fast paths (threshold supersets, partitions) must select exactly what sorting the
    # whole vocabulary selects.
    s = LARGE_SETTINGS[name]
    x = random_logits(7, peaked=peaked)
    got = Sampler(s).distribution(x)
    assert_same_distribution(as_dict(*got), ref_distribution(x, s))


def test_top_p_nucleus_with_flat_tail_reaches_the_safe_bound() -> None:
    # Half the mass in two tokens, the rest spread thinly: the cheap cut-offs fail and the
    # provable bound (1 - top_p) * Z / n must still hold the whole nucleus.
    x = np.zeros(VOCAB, dtype=np.float32)
    x[[5, 9]] = math.log(VOCAB / 2)
    s = replace(PLAIN, top_p=0.6)
    got = as_dict(*Sampler(s).distribution(x))
    assert_same_distribution(got, ref_distribution(x, s))
    assert len(got) > 1000


def test_top_k_with_adversarial_layout_and_masks() -> None:
    # The strided sample sees only low values, so its threshold admits nearly everything and
    # the full partition must take over; masked (-inf) tokens must never be candidates.
    x = random_logits(11)
    x[::18] = -50.0
    x[1::2] = -np.inf
    s = replace(PLAIN, top_k=40)
    assert_same_distribution(as_dict(*Sampler(s).distribution(x)), ref_distribution(x, s))
    # Falling back rather than carrying a huge candidate set is what keeps this fast.
    assert _top_superset(x, 40).size < 1000


def test_fewer_finite_logits_than_top_k() -> None:
    x = np.full(VOCAB, -np.inf, dtype=np.float32)
    x[[10, 20, 30]] = [1.0, 2.0, 3.0]
    s = replace(PLAIN, top_k=40, seed=0)
    tokens, probs = Sampler(s).distribution(x)
    assert sorted(tokens.tolist()) == [10, 20, 30]  # no masked tokens padding out the top 40
    assert _top_superset(x, 40).size == 3  # nor in the candidates (a partition would be wasted)
    assert_same_distribution(as_dict(tokens, probs), ref_distribution(x, s))
    assert {Sampler(replace(s, seed=i)).sample(x) for i in range(50)} <= {10, 20, 30}


# --- penalties --------------------------------------------------------------------------------

PENALTIES = SamplerSettings(
    repeat_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.25, penalty_last_n=64
)


def test_penalties_match_llama_cpp_formulas() -> None:
    x = np.array([3.0, -2.0, 0.0, 1.5, -0.5, 4.0, 2.0, -1.0], dtype=np.float32)
    history = [0, 1, 1, 2, 3, 3, 3, 4]
    got = apply_penalties(x, history, PENALTIES)
    assert np.array_equal(got, ref_penalize(x, history, PENALTIES))
    # Independent of the reference: positive divided, negative multiplied, zero stays 0 before
    # the additive terms; tokens outside the history untouched.
    assert got[0] == pytest.approx(3.0 / 1.3 - 0.25 - 0.4, abs=1e-5)
    assert got[1] == pytest.approx(-2.0 * 1.3 - 2 * 0.25 - 0.4, abs=1e-5)
    assert got[2] == pytest.approx(0.0 - 0.25 - 0.4, abs=1e-5)
    assert got[3] == pytest.approx(1.5 / 1.3 - 3 * 0.25 - 0.4, abs=1e-5)
    assert np.array_equal(got[5:], x[5:])


def test_penalty_window() -> None:
    x = np.linspace(-2, 2, 10, dtype=np.float32)
    history = [9, 8, 7, 6, 9]
    changed = lambda s: set(np.flatnonzero(apply_penalties(x, history, s) != x).tolist())  # noqa: E731
    s = replace(PENALTIES, frequency_penalty=0.0, presence_penalty=0.0)
    assert changed(replace(s, penalty_last_n=2)) == {6, 9}
    assert changed(replace(s, penalty_last_n=4)) == {6, 7, 8, 9}
    assert changed(replace(s, penalty_last_n=-1)) == {6, 7, 8, 9}
    assert changed(replace(s, penalty_last_n=0)) == set()
    assert changed(replace(s, penalty_last_n=1000)) == {6, 7, 8, 9}
    # Counts only within the window: token 9 is seen once in the last 4, twice overall.
    f = replace(PENALTIES, repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=1.0)
    assert apply_penalties(x, history, replace(f, penalty_last_n=4))[9] == x[9] - 1
    assert apply_penalties(x, history, replace(f, penalty_last_n=-1))[9] == x[9] - 2


@pytest.mark.parametrize("seed", range(30))
def test_greedy_with_penalties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = random_logits(seed, n=4096)
    top = np.argsort(-x)[:8]
    # Histories that hold the argmax, runners-up, or neither; penalties that demote and promote.
    history = rng.choice(np.r_[top, rng.integers(0, 4096, 8)], 16).tolist()
    s = replace(
        PENALTIES,
        temperature=0.0,
        repeat_penalty=float(rng.choice([0.5, 1.5, 3.0])),
        presence_penalty=float(rng.uniform(-1, 1)),
    )
    want = int(np.argmax(ref_penalize(x, history, s)))
    assert Sampler(s).sample(x, history) == want
    assert Sampler(s).sample(x, np.array(history)) == want


def test_greedy_penalty_tie_takes_the_lowest_id() -> None:
    # A negative presence penalty lifts a token to tie the raw maximum (token 2 here).
    lift = replace(GREEDY, presence_penalty=-2.0)
    x = np.array([3.0, 1.0, 5.0, 0.0], dtype=np.float32)
    assert Sampler(lift).sample(x, [0]) == 0  # the lifted token has the lower id
    x = np.array([1.0, 0.0, 5.0, 3.0], dtype=np.float32)
    assert Sampler(lift).sample(x, [3]) == 2  # the lifted token has the higher id
    # The raw maximum itself is penalized down to a tie.
    lower = replace(GREEDY, presence_penalty=2.0)
    assert Sampler(lower).sample(np.array([0.0, 3.0, 2.0, 5.0], dtype=np.float32), [3]) == 1
    assert Sampler(lower).sample(np.array([0.0, 5.0, 2.0, 3.0], dtype=np.float32), [1]) == 1


@pytest.mark.parametrize("n", [VOCAB, 3000])  # the sampled threshold, the exact partition
@pytest.mark.parametrize("repeat", [0.3, 2.0])
def test_top_k_with_penalties_moves_tokens_across_the_cut(repeat: float, n: int) -> None:
    x = random_logits(5, n=n)
    order = np.argsort(-x)
    # Tokens ranked just inside and just outside the top 40, plus far down the list.
    history = [*order[30:45].tolist(), *order[2000:2010].tolist(), int(order[0])]
    s = replace(
        SamplerSettings(top_k=40, top_p=0.95, min_p=0.0),
        repeat_penalty=repeat,
        frequency_penalty=0.1,
    )
    got = as_dict(*Sampler(s).distribution(x, history))
    assert_same_distribution(got, ref_distribution(x, s, history))


def test_penalties_with_top_p_over_full_vocab() -> None:
    x = random_logits(9, peaked=True)
    history = np.argsort(-x)[:20].tolist()
    s = replace(PENALTIES, top_k=0, top_p=0.9, min_p=0.0)
    assert_same_distribution(
        as_dict(*Sampler(s).distribution(x, history)), ref_distribution(x, s, history)
    )


def test_penalized_sampling_frequencies() -> None:
    s = replace(PENALTIES, temperature=1.0, top_k=4, top_p=1.0, min_p=0.0, seed=5)
    history = [0, 0, 2, 7]
    n = 8_000
    freq = frequencies(Sampler(s), SMALL, n, history)
    assert_frequencies(freq, ref_distribution(SMALL, s, history), n)


def test_inputs_are_not_modified() -> None:
    x = random_logits(2)
    x[:100] = -np.inf
    before = x.copy()
    history = np.argsort(-x)[:64]
    hist_before = history.copy()
    for s in [GREEDY, SamplerSettings(), replace(PLAIN, top_p=0.9), replace(PLAIN, min_p=0.1)]:
        for pen in (1.0, 1.5):
            Sampler(replace(s, repeat_penalty=pen, presence_penalty=0.5)).sample(x, history)
    assert np.array_equal(x, before)
    assert np.array_equal(history, hist_before)


# --- seeds, errors ----------------------------------------------------------------------------


def test_seed_reproducibility() -> None:
    x = random_logits(4, n=1000)

    def run(seed: int | None) -> list[int]:
        s = Sampler(SamplerSettings(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        return [s.sample(x) for _ in range(50)]

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert run(None) != run(None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -0.1, "temperature"),
        ("temperature", math.nan, "temperature"),
        ("temperature", math.inf, "temperature"),
        ("top_k", -1, "top_k"),
        ("top_k", 2.5, "top_k"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.01, "top_p"),
        ("top_p", math.nan, "top_p"),
        ("min_p", -0.01, r"min_p must be in \[0, 1\]"),
        ("min_p", 1.5, "min_p"),
        ("repeat_penalty", 0.0, r"repeat_penalty must be in \[0.01, 100\]"),
        ("repeat_penalty", -1.0, "repeat_penalty"),
        ("repeat_penalty", math.nan, "repeat_penalty"),
        ("presence_penalty", math.nan, "presence_penalty"),
        ("frequency_penalty", math.inf, "frequency_penalty"),
        ("penalty_last_n", -2, "penalty_last_n must be >= -1"),
        ("seed", -5, "seed"),
        ("temperature", "hot", "temperature"),
        ("top_k", True, "top_k"),
    ],
)
def test_bad_settings_raise(field: str, value: object, message: str) -> None:
    # Refused where the settings are made, before any Sampler sees them.
    with pytest.raises(RequestError, match=message):
        replace(SamplerSettings(), **{field: value})
    with pytest.raises(RequestError, match=message):
        SamplerSettings(**{field: value})  # type: ignore[arg-type]


def test_default_settings_are_valid() -> None:
    SamplerSettings().validate()
    SamplerSettings(temperature=0, top_k=0, top_p=1.0, min_p=1.0, penalty_last_n=-1).validate()


@pytest.mark.parametrize(
    "settings",
    [GREEDY, SamplerSettings(), replace(PLAIN, top_p=0.9), PLAIN, replace(PLAIN, min_p=0.1)],
    ids=["greedy", "top_k", "top_p", "plain", "min_p"],
)
@pytest.mark.parametrize("n", [8, VOCAB])
def test_non_finite_logits_raise(settings: SamplerSettings, n: int) -> None:
    sampler = Sampler(settings)
    x = random_logits(1, n=n)
    for bad, message in [(math.nan, "NaN"), (math.inf, r"\+inf")]:
        y = x.copy()
        y[n // 3] = bad
        with pytest.raises(ValueError, match=message):
            sampler.sample(y)
    with pytest.raises(ValueError, match="all logits are -inf"):
        sampler.sample(np.full(n, -np.inf, dtype=np.float32))


def test_masked_tokens_are_never_sampled() -> None:
    x = SMALL.copy()
    x[[0, 2]] = -np.inf
    sampler = Sampler(replace(PLAIN, temperature=3.0, seed=0))
    assert not {sampler.sample(x) for _ in range(2000)} & {0, 2}
    # top_k + the penalized tokens covering the whole vocabulary takes another path.
    s = replace(PLAIN, top_k=7, repeat_penalty=1.5)
    tokens, probs = Sampler(s).distribution(x, [1])
    assert sorted(tokens.tolist()) == [1, 3, 4, 5, 6, 7] and np.all(probs > 0)


def test_bad_inputs_raise() -> None:
    sampler = Sampler(replace(SamplerSettings(), repeat_penalty=1.1))
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        sampler.sample(np.zeros(8, dtype=np.int32))
    with pytest.raises(ValueError, match="token id 8, outside the vocabulary"):
        sampler.sample(SMALL, [1, 8])
    with pytest.raises(ValueError, match="token id -1"):
        sampler.sample(SMALL, [-1])


# --- extreme temperatures and penalties -------------------------------------------------------

EXTREME_SETTINGS = [PLAIN, SamplerSettings(), replace(PLAIN, top_p=0.9), replace(PLAIN, min_p=0.1)]


@pytest.mark.parametrize("temperature", [GREEDY_BELOW / 2, 1e-39, 1e-45, 1e-46, 1e-300, 5e-324])
@pytest.mark.parametrize("settings", EXTREME_SETTINGS, ids=["plain", "top_k", "top_p", "min_p"])
def test_temperatures_below_float32_normals_are_greedy(
    settings: SamplerSettings, temperature: float
) -> None:
    # Float32 cannot divide by such a temperature (it is subnormal or 0 there): without the
    # greedy rule the probabilities were NaN and the draw always the last token.
    s = replace(settings, temperature=temperature, seed=0)
    x = SMALL.copy()
    x[5] = -np.inf
    tokens, probs = Sampler(s).distribution(x)
    assert tokens.tolist() == [0] and probs.tolist() == [1.0]
    assert {Sampler(replace(s, seed=i)).sample(x) for i in range(20)} == {0}


@pytest.mark.parametrize(
    "temperature", [GREEDY_BELOW, 1e-37, 1e-9, 0.7, 3e38, 3.5e38, 1e39, 1e300, 1.7e308]
)
@pytest.mark.parametrize("settings", EXTREME_SETTINGS, ids=["plain", "top_k", "top_p", "min_p"])
def test_no_positive_temperature_gives_nan(settings: SamplerSettings, temperature: float) -> None:
    s = replace(settings, temperature=temperature, seed=0)
    for x in (SMALL, random_logits(3)):
        x = x.copy()
        x[1::3] = -np.inf  # masked tokens: -inf / inf would be NaN
        tokens, probs = Sampler(s).distribution(x)
        assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0)
        assert not np.any(probs[np.isin(tokens, np.flatnonzero(np.isinf(x)))])
        assert x[Sampler(s).sample(x)] > -np.inf


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("repeat_penalty", 1e39, r"repeat_penalty must be in \[0.01, 100\]"),
        ("repeat_penalty", 100.5, r"repeat_penalty must be in \[0.01, 100\]"),
        ("repeat_penalty", 1e-3, r"repeat_penalty must be in \[0.01, 100\]"),
        ("presence_penalty", 1e39, r"presence_penalty must be in \[-100, 100\]"),
        ("presence_penalty", -101.0, r"presence_penalty must be in \[-100, 100\]"),
        ("frequency_penalty", 1e38, r"frequency_penalty must be in \[-100, 100\]"),
        ("frequency_penalty", -1e30, r"frequency_penalty must be in \[-100, 100\]"),
    ],
)
def test_penalties_out_of_range_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        SamplerSettings(**{field: value})  # type: ignore[arg-type]


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "settings",
    [GREEDY, *EXTREME_SETTINGS],
    ids=["greedy", "plain", "top_k", "top_p", "min_p"],
)
def test_accepted_penalties_never_make_logits_non_finite(settings: SamplerSettings) -> None:
    # A finite logit near float32's maximum divided by a repeat penalty below 1 (or a very
    # negative one multiplied by a penalty above 1) overflowed float32 and was reported as
    # "the model produced non-finite values".
    lo, hi = REPEAT_PENALTY_RANGE
    x = SMALL.copy()
    x[3] = F32_MAX
    s = replace(settings, repeat_penalty=lo, frequency_penalty=-100.0, seed=0)
    assert Sampler(s).sample(x, [3, 3, 3]) == 3
    tokens, probs = Sampler(s).distribution(x, [3, 3, 3])
    assert np.all(np.isfinite(probs)) and as_dict(tokens, probs)[3] == pytest.approx(1.0)
    assert np.isfinite(apply_penalties(x, [3], s)).all()
    # Every token penalized towards -inf: none of them may become masked.
    y = np.full(8, -F32_MAX, dtype=np.float32)
    y[6] = -F32_MAX / 2
    s = replace(settings, repeat_penalty=hi, presence_penalty=100.0, seed=0)
    assert Sampler(s).sample(y, list(range(8))) == 6
    tokens, probs = Sampler(s).distribution(y, list(range(8)))
    assert np.all(np.isfinite(probs)) and as_dict(tokens, probs)[6] == pytest.approx(1.0)


def test_non_finite_is_blamed_on_the_model_only_when_the_logits_are() -> None:
    s = replace(PLAIN, repeat_penalty=0.01, presence_penalty=-100.0)
    for bad in (math.inf, math.nan):
        x = SMALL.copy()
        x[2] = bad
        for settings in (s, replace(s, temperature=0.0), replace(s, top_k=3)):
            with pytest.raises(ModelError, match="the model produced non-finite values"):
                Sampler(settings).sample(x, [2, 4])


def test_penalties_round_like_float32_where_float32_can_hold_them() -> None:
    # Where float32 overflows the penalties are redone in float64; the other logits of the
    # window must still round exactly as llama.cpp's float32 arithmetic rounds them.
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(4000) * 10.0 ** rng.integers(-3, 37, 4000)).astype(np.float32)
    x[:2] = [F32_MAX, -F32_MAX]  # overflow with any repeat penalty but 1
    history = [0, 1, *rng.integers(0, 4000, 3000).tolist()]
    for repeat in (0.01, 0.37, 0.9, 1.1, 3.3, 100.0):
        s = SamplerSettings(
            repeat_penalty=repeat,
            presence_penalty=float(rng.uniform(-100, 100)),
            frequency_penalty=float(rng.uniform(-100, 100)),
            penalty_last_n=-1,
        )
        with np.errstate(over="ignore"):
            want = ref_penalize(x, history, s)
        got = apply_penalties(x, history, s)
        finite = np.isfinite(want)
        assert not finite.all()  # float32 overflowed: the float64 path ran
        assert np.array_equal(got[finite], want[finite])
        assert np.isfinite(got).all()
