"""Whole-model numerics against Hugging Face transformers (float32, CPU) on tiny random models.

For quantized files (F16, BF16, Q8_0) the reference runs the weights exactly as stored in the
file (dequantized), so these tests measure the engine's arithmetic, not quantization error.
Tolerances as in DESIGN.md: F32 max relative error 1e-4; F16/BF16 NMSE 1e-5; Q8_0 NMSE 5e-4
(the engine quantizes activations to int8 for Q8_0 dot products).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import metallic  # noqa: E402
import metallic.model  # noqa: E402
from oracle.reference import dequantized_copy, greedy_continuation, reference_logits  # noqa: E402
from oracle.tiny_models import VARIANTS, tiny_gguf  # noqa: E402

FTYPES = ("F32", "F16", "BF16", "Q8_0")
CASES = [(a, v, f) for (a, v) in VARIANTS for f in FTYPES]
N_STEPS = 32


def nmse(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean((got - want) ** 2) / np.mean(want**2))


def max_rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def assert_close(got: np.ndarray, want: np.ndarray, ftype: str, what: str) -> None:
    assert got.shape == want.shape, what
    if ftype == "F32":
        err = max_rel(got, want)
        assert err < 1e-4, f"{what}: max relative error {err:.2e}"
    else:
        limit = 5e-4 if ftype == "Q8_0" else 1e-5
        err = nmse(got, want)
        assert err < limit, f"{what}: NMSE {err:.2e} >= {limit:.0e}"


@cache
def reference_model(arch: str, variant: str, ftype: str):  # noqa: ANN201
    _, model = tiny_gguf(arch, ftype, variant)
    return model if ftype == "F32" else dequantized_copy(model, ftype)


def prompt(n_vocab: int, n: int = 23, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(0, n_vocab, n)]


@pytest.mark.parametrize(("arch", "variant", "ftype"), CASES, ids=["-".join(c) for c in CASES])
def test_prompt_logits(arch: str, variant: str, ftype: str) -> None:
    path, _ = tiny_gguf(arch, ftype, variant)
    ref_model = reference_model(arch, variant, ftype)
    m = metallic.load(path, n_ctx=96)
    ids = prompt(m.n_vocab)
    assert_close(m.prefill_all(ids), reference_logits(ref_model, ids), ftype, "prompt logits")


@pytest.mark.parametrize(("arch", "variant", "ftype"), CASES, ids=["-".join(c) for c in CASES])
def test_decode_steps_and_greedy(arch: str, variant: str, ftype: str) -> None:
    path, _ = tiny_gguf(arch, ftype, variant)
    ref_model = reference_model(arch, variant, ftype)
    m = metallic.load(path, n_ctx=96)
    ids = prompt(m.n_vocab, seed=1)
    ref_tokens, ref_steps = greedy_continuation(ref_model, ids, N_STEPS)

    # Teacher-forced on the reference's tokens, so every step compares the same inputs.
    ours = [m.prefill(ids).copy()]
    for tok in ref_tokens[:-1]:
        ours.append(m.decode(tok).copy())
    steps = np.stack(ours)
    assert_close(steps, ref_steps, ftype, f"{N_STEPS} decode steps")

    # Greedy choices: identical for F32; for F16/BF16 identical wherever the reference's own
    # top two are at least 1e-3 apart (closer than that, rounding may flip them).
    if ftype in ("F32", "F16", "BF16"):
        top2 = np.sort(ref_steps, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) >= (0.0 if ftype == "F32" else 1e-3)
        ours_greedy = steps.argmax(axis=1)
        mismatch = [i for i in range(N_STEPS) if decided[i] and ours_greedy[i] != ref_tokens[i]]
        assert not mismatch, f"greedy token differs at steps {mismatch}"


def test_generate_greedy_equals_transformers() -> None:
    """The public generate() path, end to end, on an F32 model: same 32 tokens."""
    path, model = tiny_gguf("qwen2", "F32", "gqa2-untied")
    m = metallic.load(path, n_ctx=96)
    ids = prompt(m.n_vocab, seed=2)
    ref_tokens, _ = greedy_continuation(model, ids, N_STEPS)
    got = [t.id for t in m.generate(ids, N_STEPS, temperature=0, stop_ids=[]) if t.id >= 0]
    assert got == ref_tokens


@pytest.mark.parametrize("ftype", ["F16", "Q8_0"])
def test_prefill_equals_decode_steps(ftype: str) -> None:
    """Prefill of N tokens (matrix-matrix path) gives the logits of N single decode steps.

    Float formats run the same arithmetic both ways, summed in a different order (decode keeps
    four accumulators per row): equal to float rounding. Block formats differ by design in the
    activations (decode: int16 blocks for integer dot products; prefill: floats against
    dequantized weights), which must stay far inside the oracle tolerance.
    """
    path, _ = tiny_gguf("llama", ftype, "gqa2-untied")
    m = metallic.load(path, n_ctx=64)
    ids = prompt(m.n_vocab, n=19, seed=3)
    batched = m.prefill_all(ids)
    m.reset()
    single = np.stack([m.decode(t).copy() for t in ids])
    if ftype == "F16":
        assert max_rel(batched, single) < 1e-5
    else:
        assert nmse(batched, single) < 1e-6


def test_results_do_not_depend_on_threads_or_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three threads split the work unevenly even where the machine has fewer CPUs: lift load()'s
    # cap at the logical CPUs, which is about speed, not results.
    monkeypatch.setattr(metallic.model, "logical_cpus", lambda: 64)
    path, _ = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")
    ids = prompt(320, n=30, seed=4)
    runs = []
    # (batches of one token take the decode path, so no split here leaves a single token)
    for threads, max_batch in ((1, 512), (2, 512), (2, 7), (3, 4)):
        m = metallic.load(path, n_ctx=64, threads=threads, max_batch=max_batch)
        assert m.threads == threads
        runs.append(m.prefill_all(ids))
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0], other)


def test_cache_truncate_and_reuse() -> None:
    """Truncating the cache and continuing equals running from scratch."""
    path, _ = tiny_gguf("llama", "F32", "mha-tied")
    m = metallic.load(path, n_ctx=64)
    a = prompt(m.n_vocab, n=12, seed=5)
    b = prompt(m.n_vocab, n=6, seed=6)
    m.prefill(a + b)
    m.truncate(len(a))
    got = m.prefill(prompt(m.n_vocab, n=5, seed=7)).copy()
    m.reset()
    want = m.prefill(a + prompt(m.n_vocab, n=5, seed=7)).copy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # generate() reuses the cached prefix: only the new tokens run
    list(m.generate(a + b, 1, temperature=0, stop_ids=[]))
    list(m.generate(a + b + [3, 4], 1, temperature=0, stop_ids=[]))
    assert m.last_stats.cached_tokens == len(a + b)
