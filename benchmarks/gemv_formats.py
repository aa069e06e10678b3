"""Single-thread gemv (one token) throughput of every weight format's CPU kernel, in GB/s of
weight bytes read. Not a test: run ``python benchmarks/gemv_formats.py`` by hand.

"hot": one matrix over and over (it sits in L2/L3, so this measures the kernel's compute);
"cold": a ring of copies larger than the L3 so every call streams from DRAM.
Set METALLIC_FORCE_GENERIC=1 to time the portable build.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from metallic import _core

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
HALF_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
RING_BYTES = 96 << 20


def weights(name: str, rows: int, cols: int, rng) -> np.ndarray:
    qtype = Q[name]
    block, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    if name in HALF_OFFSETS:
        raw = rng.integers(0, 256, size=(rows * cols // block, block_bytes), dtype=np.uint8)
        for off in HALF_OFFSETS[name]:
            raw[:, off:off + 2] = np.full((raw.shape[0], 1), 0.01, np.float16).view(np.uint8)
        return raw.reshape(-1)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    return np.asarray(quants.quantize(x, qtype)).view(np.uint8).reshape(-1)


def rate(fn, nbytes: int, rounds: int = 15, round_time: float = 0.02) -> float:
    """Best of several short rounds of thread CPU time: the machine is shared, and time spent
    descheduled is not the kernel's."""
    fn()
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.thread_time()
        while (elapsed := time.thread_time() - t0) < round_time:
            fn()
            n += 1
        best = max(best, nbytes * n / elapsed / 1e9)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    shapes = [(4864, 896), (896, 4864)]
    print(f"isa={_core.kernel_isa()}  GB/s of weights, 1 token, 1 thread")
    print(f"{'format':6} " + " ".join(f"{f'{r}x{c} hot':>15} {'cold':>6}" for r, c in shapes))
    for name in (sys.argv[1:] or TYPES):
        qtype = int(Q[name])
        cells = []
        for rows, cols in shapes:
            block = quants.GGML_QUANT_SIZES[Q[name]][0]
            if cols % block:  # K-quants need 256 | cols: time the nearest valid width
                cols = (cols + block - 1) // block * block
            w = weights(name, rows, cols, rng)
            act = rng.standard_normal((1, cols)).astype(np.float32)
            hot = rate(lambda: _core.kernel_gemm(qtype, w, rows, cols, act), w.nbytes)
            ring = [w.copy() for _ in range(max(2, RING_BYTES // w.nbytes))]
            it = iter(range(1 << 62))
            cold = rate(lambda: _core.kernel_gemm(qtype, ring[next(it) % len(ring)], rows, cols, act),
                        w.nbytes)
            tag = "" if cols == shapes[len(cells)][1] else f"(k={cols})"
            cells.append(f"{tag:>9}{hot:6.1f} {cold:6.1f}")
        print(f"{name:6} " + " ".join(cells))


if __name__ == "__main__":
    main()
