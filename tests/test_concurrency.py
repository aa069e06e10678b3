"""One model shared by threads, and several models side by side.

The engine releases the GIL for every step, so threads really do run at once. What sharing
means (see metallic.model.Model): calls take turns, a generation holds the model from its first
token to its last, and `model.hold()` keeps it for a block of calls. Reproduced before the lock
existed: two threads prefilling one model segfaulted, left n_past above n_ctx or deadlocked in
the thread pool, and four threads running generate got 15-18 of 20 greedy outputs right.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import ModelBusyError
from oracle.tiny_models import tiny_gguf

PROMPTS = [
    "Hello world",
    "The quick brown fox",
    "One two three four five",
    "abc def ghi",
    "Metal kernels on a CPU",
    "tokens tokens tokens",
]
N_GEN = 12


@pytest.fixture(scope="module")
def model_path() -> Path:
    return tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]


def run_threads(n: int, work: Callable[[int], None], timeout: float = 120.0) -> None:
    """Runs work(i) on n threads started together; re-raises the first failure. A thread
    still running after the timeout is a deadlock and fails the test."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads deadlocked on a shared model"
    if errors:
        raise errors[0]


def greedy(model: metallic.model.Model, prompt: str) -> list[int]:
    return [t.id for t in model.generate(prompt, max_tokens=N_GEN, temperature=0)]


def seeded(model: metallic.model.Model, prompt: str) -> list[int]:
    # llama.cpp's default sampler settings with a seed: the shared pick, GPU-resident on metal-sim.
    return [t.id for t in model.generate(prompt, max_tokens=N_GEN, seed=7)]


def test_two_threads_prefilling_one_model(model_path: Path) -> None:
    # The reproducer: unsynchronized prefills raced on n_past and the thread pool. Now each
    # prefill runs whole; the cache never holds more than n_ctx tokens, and a prefill that no
    # longer fits fails cleanly with ContextError instead of writing past the cache.
    model = metallic.load(model_path, backend="cpu", n_ctx=256, threads=2)
    ids = list(range(5, 45))
    fits = []

    def work(i: int) -> None:
        for _ in range(10):
            try:
                model.prefill(ids)
                fits.append(True)
            except metallic.ContextError:
                fits.append(False)
            assert model.n_past <= model.n_ctx

    run_threads(2, work)
    assert model.n_past == 40 * sum(fits) == 240  # 6 of 20 prefills fit, in whatever order
    assert len(model.cached_tokens) == model.n_past


def test_four_threads_generating_match_serial(model_path: Path) -> None:
    model = metallic.load(model_path, backend="cpu", n_ctx=256, threads=2)
    expected = {p: greedy(model, p) for p in PROMPTS[:4]}
    got: dict[tuple[int, int], list[int]] = {}

    def work(i: int) -> None:
        for j in range(5):
            got[i, j] = greedy(model, PROMPTS[(i + j) % 4])

    run_threads(4, work)
    wrong = [(k, v) for k, v in got.items() if v != expected[PROMPTS[(k[0] + k[1]) % 4]]]
    assert len(got) == 20 and not wrong


@pytest.mark.parametrize("backend", ["cpu", "metal-sim"])
def test_sixteen_threads_mixed_calls(model_path: Path, backend: str) -> None:
    """generate, held prefill/decode sequences, bare prefills, resets and truncates from 16
    threads at once; every result that has a serial reference matches it exactly. On metal-sim
    the greedy and seeded generations are GPU-resident; on both, some threads run a burst that
    queues the next one and leave it unclaimed, for the next call from any thread to wait for
    and discard."""
    model = metallic.load(model_path, backend=backend, n_ctx=512, threads=2)
    tok = model.tokenizer
    prompt_ids = {p: tok.encode(p) for p in PROMPTS}
    gen_ref = {p: greedy(model, p) for p in PROMPTS}
    seeded_ref = {p: seeded(model, p) for p in PROMPTS}
    step_ref: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for p, ids in prompt_ids.items():
        model.reset()
        first = model.prefill(ids).copy()
        step_ref[p] = (first, model.decode(int(np.argmax(first))).copy())
    burst_ref: dict[str, list[int]] = {}
    for p, ids in prompt_ids.items():
        model.reset()
        burst_ref[p] = model._decode_resident(int(np.argmax(model.prefill(ids))), 4)[0]

    def work(i: int) -> None:
        rng = np.random.default_rng(i)
        for _ in range(6):
            p = PROMPTS[int(rng.integers(len(PROMPTS)))]
            kind = int(rng.integers(6))
            if kind == 5:
                with model.hold():
                    model.reset()
                    first = int(np.argmax(model.prefill(prompt_ids[p])))
                    assert model._decode_resident(first, 4, n_next=4)[0] == burst_ref[p]
            elif kind == 0:
                if rng.integers(2):
                    assert greedy(model, p) == gen_ref[p]
                else:
                    assert seeded(model, p) == seeded_ref[p]
            elif kind == 1:
                with model.hold():
                    model.reset()
                    first = model.prefill(prompt_ids[p]).copy()
                    second = model.decode(int(np.argmax(first))).copy()
                np.testing.assert_array_equal(first, step_ref[p][0])
                np.testing.assert_array_equal(second, step_ref[p][1])
            elif kind == 2:
                try:
                    model.prefill(prompt_ids[p])
                except metallic.ContextError:
                    model.reset()
            elif kind == 3:
                model.reset()
            else:
                with model.hold():
                    model.truncate(model.n_past // 2)
            assert 0 <= model.n_past <= model.n_ctx

    run_threads(16, work, timeout=300)
    assert len(model.cached_tokens) == model.n_past


def test_same_thread_suspended_generation_is_an_error(model_path: Path) -> None:
    # A call from the thread that left a generation suspended would wait for itself forever.
    model = metallic.load(model_path, backend="cpu", n_ctx=128, threads=1)
    gen = model.generate("Hello world", max_tokens=4, temperature=0)
    next(gen)
    with pytest.raises(ModelBusyError, match="unfinished generate"):
        model.decode(3)
    with pytest.raises(ModelBusyError):
        next(model.generate("abc", max_tokens=2, temperature=0))
    gen.close()  # releases the model
    model.decode(3)


def test_generation_holds_the_model_against_other_threads(model_path: Path) -> None:
    # Another thread's reset waits while a generation is suspended between tokens, so the
    # generation's cache is never cut under it.
    model = metallic.load(model_path, backend="cpu", n_ctx=128, threads=1)
    expected = greedy(model, "The quick brown fox")
    gen = model.generate("The quick brown fox", max_tokens=N_GEN, temperature=0)
    got = [next(gen).id]
    done = threading.Event()
    other = threading.Thread(target=lambda: (model.reset(), done.set()), daemon=True)
    other.start()
    assert not done.wait(0.3)  # blocked behind the generation
    got += [t.id for t in gen]
    assert got == expected
    assert done.wait(30)
    assert model.n_past == 0


def test_two_models_run_in_parallel(model_path: Path) -> None:
    # Separate models share nothing: their steps overlap in time (no global lock, the GIL is
    # released) and each stays correct.
    models = [metallic.load(model_path, backend="cpu", n_ctx=512, threads=1) for _ in range(2)]
    ids = models[0].tokenizer.encode(" ".join(PROMPTS) * 8)[:400]
    expected = models[0].prefill(ids).copy()
    models[0].reset()
    spans: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(i: int) -> None:
        for _ in range(3):
            models[i].reset()
            start.wait()  # both prefills start together: only a lock held across them (a
            t0 = time.perf_counter()  # global one, or the GIL) would keep them apart
            logits = models[i].prefill(ids).copy()
            spans[i].append((t0, time.perf_counter()))
            np.testing.assert_array_equal(logits, expected)

    run_threads(2, work)
    overlaps = [a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(spans[0], spans[1], strict=True)]
    assert any(overlaps), f"the two models' prefills never overlapped: {spans}"


def test_ctrl_c_stops_a_long_prefill_between_batches(tmp_path: Path) -> None:
    # The engine runs with the GIL released, so Python sees a Ctrl-C only between engine calls:
    # a prompt runs one batch per call, and the interrupt lands after the batch in progress
    # (before, it waited for the whole prompt: 18 s on a tiny model, minutes on a real one).
    import _thread

    from small_gguf import write_small_gguf

    path = write_small_gguf(tmp_path / "small.gguf", n_ctx=8192)
    model = metallic.load(path, backend="cpu", n_ctx=8192, threads=1, max_batch=16)
    ids = np.arange(8192) % 300

    def interrupt_once_started() -> None:
        while model.n_past == 0:
            time.sleep(0.001)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        model.prefill(ids)
    # Stopped early, on a batch boundary, with the cache record exact and the model usable.
    assert 0 < model.n_past < 8192 and model.n_past % 16 == 0
    assert model.cached_tokens == [int(i) for i in ids[: model.n_past]]
    model.truncate(0)
    assert np.isfinite(model.prefill(ids[:16])).all()
