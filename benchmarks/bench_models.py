"""End-to-end decode (tg) and prefill (pp) per model and format, with llama.cpp on the same
file in the same run when llama-cpp-python is installed; the ratio lands in extra_info.

The two engines take turns within each test (metallic, llama.cpp, metallic, llama.cpp, ...:
each metallic round is followed by one of the peer as pytest-benchmark's untimed teardown), so
a drift of the shared machine hits both alike. Each test frees its peer's context and model
when done, so one test's llama.cpp memory does not weigh on the next.

    pytest benchmarks/bench_models.py --benchmark-columns=median,rounds
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import numpy as np
import pytest

import metallic

THREADS = int(os.environ.get("METALLIC_BENCH_THREADS", "2"))
PP, TG = 512, 128
ROUNDS = 3


def _ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab, n)]


def _llama_cpp(path: str, n_ctx: int) -> Any | None:
    """llama.cpp on the same file and threads, or None without llama-cpp-python."""
    from metallic.bench import _LlamaCpp

    try:
        return _LlamaCpp(path, THREADS, n_ctx, None)
    except Exception:  # noqa: BLE001 - the peer is optional; no number is better than a crash
        return None


@pytest.mark.parametrize("test", ["tg", "pp"])
def test_throughput(benchmark, model_file, test: str) -> None:  # noqa: ANN001
    name, path = model_file
    m = metallic.load(path, n_ctx=PP + 16, threads=THREADS)
    n = TG if test == "tg" else PP
    ids = _ids(n, m.n_vocab)
    weight_bytes = m.weight_bytes_per_token
    peer = _llama_cpp(str(path), PP + 16)
    peer_seconds: list[float] = []

    def run() -> None:
        m.reset()
        if test == "pp":
            m.prefill(ids)
        else:
            for i in ids:
                m.decode(i)

    def run_peer() -> None:  # the teardown of each metallic round: timed here, not by the fixture
        if peer is None:
            return
        t0 = time.perf_counter()
        getattr(peer, test)(ids)
        peer_seconds.append(time.perf_counter() - t0)

    try:
        run()  # warm-ups: fault the mapped weights in
        if peer is not None:
            getattr(peer, test)(ids)
        benchmark.pedantic(run, teardown=run_peer, rounds=ROUNDS, iterations=1)
    finally:
        if peer is not None:
            peer.close()
        # Drop the last references (the closures above hold these cells) before the next test.
        m = peer = None  # type: ignore[assignment]
        gc.collect()
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    tps = n / benchmark.stats.stats.min
    benchmark.extra_info["model"] = name
    benchmark.extra_info[f"{test}{n}_tps"] = round(tps, 2)
    if test == "tg":
        benchmark.extra_info["weight_GBps"] = round(weight_bytes * tps / 1e9, 2)
    if peer_seconds:
        peer_tps = n / min(peer_seconds)
        benchmark.extra_info["llama_cpp_tps"] = round(peer_tps, 2)
        benchmark.extra_info["ratio_vs_llama_cpp"] = round(tps / peer_tps, 3)
