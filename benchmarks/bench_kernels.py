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


# K-quant blocks: bytes per block and where their half-precision factors sit (Q4_K, Q5_K: d at
# 0 and dmin at 2; Q6_K: d at 208), as in ggml's block_q4_K, block_q5_K and block_q6_K.
K_BLOCKS = {T.Q4_K: (144, (0, 2)), T.Q5_K: (176, (0, 2)), T.Q6_K: (210, (208,))}


def _k_quant_factors(fmt: T, w: np.ndarray) -> list[np.ndarray]:
    """The half factors llama.cpp's quantizers derive from w, per 256-value block: Q4_K/Q5_K
    give each 32-value sub-block a scale (max - min) / (2^bits - 1) and a min -min(x), stored as
    6-bit multiples of d = max scale / 63 and dmin = max min / 63; Q6_K gives each 16-value
    sub-block max|x| / 32, stored as int8 multiples of d = max / 128. All positive and normal."""
    if fmt == T.Q6_K:
        sub = np.abs(w.reshape(-1, 16, 16)).max(-1) / 32
        return [sub.max(-1) / 128]
    sub = w.reshape(-1, 8, 32)
    levels = 15 if fmt == T.Q4_K else 31
    scale = (sub.max(-1) - sub.min(-1)) / levels
    mins = np.maximum(-sub.min(-1), 0)
    return [scale.max(-1) / 63, mins.max(-1) / 63]


def _weights(fmt: T) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    if fmt in K_BLOCKS:
        # gguf-py cannot quantize K-quants: random codes and sub-block scales (any bytes are
        # valid there, and as fast to read) with the half factors a real quantizer would store
        # for w. Random bytes there would include NaN, infinities and subnormals.
        size, offsets = K_BLOCKS[fmt]
        raw = rng.integers(0, 256, (ROWS * COLS // 256, size), dtype=np.uint8)
        for off, f in zip(offsets, _k_quant_factors(fmt, w), strict=True):
            h = f.astype(np.float16)
            assert np.all(np.isfinite(h)) and np.all(h >= np.finfo(np.float16).smallest_normal)
            raw[:, off : off + 2] = h.view(np.uint8).reshape(-1, 2)
        return raw.reshape(-1)
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
