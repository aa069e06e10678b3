"""End-to-end decode (tg) and prefill (pp) per model and format, with llama.cpp on the same
file in the same run when llama-cpp-python is installed; the ratio lands in extra_info.

    pytest benchmarks/bench_models.py --benchmark-columns=median,rounds
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import metallic

THREADS = int(os.environ.get("METALLIC_BENCH_THREADS", "2"))
PP, TG = 512, 128


def _ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(0, vocab, n)]


def _llama_cpp_tps(path: str, test: str, n: int, vocab: int) -> float | None:
    try:
        from metallic.bench import _LlamaCpp
    except ImportError:
        return None
    try:
        peer = _LlamaCpp(path, THREADS, PP + 16, None)
    except Exception:  # noqa: BLE001 - the peer is optional; no number is better than a crash
        return None
    ids = _ids(n, vocab)
    getattr(peer, test)(ids)  # warm-up
    best = 1e30
    for _ in range(3):
        t0 = time.perf_counter()
        getattr(peer, test)(ids)
        best = min(best, time.perf_counter() - t0)
    return n / best


@pytest.mark.parametrize("test", ["tg", "pp"])
def test_throughput(benchmark, model_file, test: str) -> None:  # noqa: ANN001
    name, path = model_file
    m = metallic.load(path, n_ctx=PP + 16, threads=THREADS)
    n = TG if test == "tg" else PP
    ids = _ids(n, m.n_vocab)

    def run() -> None:
        m.reset()
        if test == "pp":
            m.prefill(ids)
        else:
            for i in ids:
                m.decode(i)

    run()  # warm-up: faults the mapped weights in
    benchmark.pedantic(run, rounds=3, iterations=1)
    tps = n / benchmark.stats.stats.min
    benchmark.extra_info["model"] = name
    benchmark.extra_info[f"{test}{n}_tps"] = round(tps, 2)
    if test == "tg":
        gbps = m.weight_bytes_per_token * tps / 1e9
        benchmark.extra_info["weight_GBps"] = round(gbps, 2)
    peer = _llama_cpp_tps(str(path), test, n, m.n_vocab)
    if peer:
        benchmark.extra_info["llama_cpp_tps"] = round(peer, 2)
        benchmark.extra_info["ratio_vs_llama_cpp"] = round(tps / peer, 3)
