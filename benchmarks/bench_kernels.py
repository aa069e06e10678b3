"""The matrix kernels per weight format, against the machine's limits measured in the same
session: the one-token product (decode's kernel) as GB/s of weights read against the streaming
read bandwidth, and the batch product (prefill's) as GFLOP/s against the FMA peak. One thread.

    pytest benchmarks/bench_kernels.py --benchmark-columns=median
"""

from __future__ import annotations

import metallic._core as core
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

ROWS, COLS = 4864, 1024  # one layer-sized matrix; copies of it cycle so reads come from DRAM
RING_BYTES = 192 << 20  # far past the last-level cache
FORMATS = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]


BATCH = 128  # tokens of the batch product


@pytest.fixture(scope="session")
def read_bandwidth() -> float:
    return core.read_bandwidth(1 << 30, 1, 5)


@pytest.fixture(scope="session")
def fma_peak() -> float:
    return core.fma_peak(1, 3)


def _weights(fmt: T) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    if fmt in (T.Q4_K, T.Q5_K, T.Q6_K):
        # gguf-py cannot quantize K-quants: random valid blocks (any bytes decode to finite
        # values once the half scales are sane) are just as fast to read.
        block, size = {T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}[fmt]
        raw = rng.integers(0, 256, ROWS * COLS // block * size, dtype=np.uint8)
        return raw
    return np.ascontiguousarray(quants.quantize(w, fmt)).view(np.uint8).reshape(-1)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_gemv(benchmark, read_bandwidth: float, fmt: T) -> None:  # noqa: ANN001
    data = _weights(fmt)
    ring = [data.copy() for _ in range(RING_BYTES // data.nbytes + 1)]
    act = np.random.default_rng(1).standard_normal((1, COLS)).astype(np.float32)
    step = iter(range(1 << 62))

    def gemv() -> None:
        core.kernel_gemm(int(fmt), ring[next(step) % len(ring)], ROWS, COLS, act, False)

    benchmark(gemv)
    gbps = data.nbytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["GBps"] = round(gbps, 2)
    benchmark.extra_info["read_bandwidth_GBps"] = round(read_bandwidth / 1e9, 2)
    benchmark.extra_info["fraction_of_bandwidth"] = round(gbps * 1e9 / read_bandwidth, 3)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_batch_gemm(benchmark, fma_peak: float, fmt: T) -> None:  # noqa: ANN001
    data = _weights(fmt)
    act = np.random.default_rng(1).standard_normal((BATCH, COLS)).astype(np.float32)
    benchmark(core.kernel_gemm, int(fmt), data, ROWS, COLS, act, True)
    flops = 2.0 * BATCH * ROWS * COLS / benchmark.stats.stats.median
    benchmark.extra_info["GFLOPs"] = round(flops / 1e9, 1)
    benchmark.extra_info["fma_peak_GFLOPs"] = round(fma_peak / 1e9, 1)
    benchmark.extra_info["fraction_of_peak"] = round(flops / fma_peak, 3)
