"""Per-token budget of the Metal backend on Qwen2.5-0.5B's shape, and what it implies on Macs.

Runs one decode step of the benchmark model (benchmarks/models.py, F16 and Q8_0) through the
Metal backend on the CPU simulator (backend="metal-sim") and reads the GPU-interface counters:
dispatches, command buffers, CPU waits, buffer allocations, weight bytes bound and KV-cache bytes.
Decode on Apple silicon is memory-bound, so the roofline estimate is
    tok/s <= bandwidth / (weight bytes + KV bytes per token)
for the unified-memory bandwidths of a few chips. Also times one F16 GEMV 4864x896 (the FFN
shape) in the simulator.

    python benchmarks/metal_dispatch_budget.py              # run a decode step in the simulator
    python benchmarks/metal_dispatch_budget.py --count-only # counts from the config, no model

The decode step takes a few seconds per format in the simulator (~100x slower than a GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from metal_sim_helpers import kernel_shape  # noqa: E402
from models import QWEN25_05B, bench_model  # noqa: E402

BANDWIDTH_GBS = {"M1": 68, "M2": 100, "M3 Pro": 150, "M3 Max": 400, "M4 Pro": 273}
POSITIONS = (1, 1024, 4096)  # context lengths for the KV-cache column of the roofline


def counted_from_config(ftype: str) -> dict[str, int]:
    """The counters a decode step produces, from the model shape alone (checked against the
    simulator's counters when the model runs)."""
    s = QWEN25_05B
    hd = s.hidden // s.n_heads
    kv = s.n_kv_heads * hd
    bytes_per = {"F16": 2.0, "Q8_0": 34 / 32}[ftype]
    layer_params = s.hidden * (s.hidden + 2 * kv) + s.hidden * s.hidden + 3 * s.hidden * s.ffn
    weights = int(s.n_layers * layer_params * bytes_per + s.vocab * s.hidden * bytes_per)
    embed_row = int(s.hidden * bytes_per)
    return {
        # embed; per layer norm + q-k-v, RoPE + KV write + attention, o, norm + gate-up, down;
        # the final norm + output head
        "dispatches": 1 + 5 * s.n_layers + 1,
        "command_buffers": 2,  # the first 16 dispatches committed early
        "syncs": 1,
        "buffer_allocations": 0,
        "weight_binds": 7 * s.n_layers + 2,
        "declared_weight_bytes": weights + embed_row,
    }


def kv_bytes(position: int, kv_elem: int = 2) -> int:
    """KV-cache bytes a decode step at `position` moves: one row written, position + 1 read."""
    s = QWEN25_05B
    row = 2 * s.n_layers * s.n_kv_heads * (s.hidden // s.n_heads) * kv_elem  # k and v, all layers
    return row * (1 + position + 1)


def run_decode_step(ftype: str) -> tuple[dict[str, int], float, int]:
    import metallic

    m = metallic.load(bench_model(ftype), backend="metal-sim", n_ctx=256)
    m.prefill([1])  # one token: the matrix-vector path, as in decode
    m.reset_gpu_stats()
    t = time.perf_counter()
    m.decode(2)
    elapsed = time.perf_counter() - t
    return m.gpu_stats(), elapsed, m.n_past - 1


def time_gemv() -> float:
    from metallic import _core

    rows, cols = 4864, 896
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, cols)).astype(np.float16)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    out = np.zeros((1, rows), np.float32)
    args = np.frombuffer(
        np.array([rows, cols, 1, 0], np.int32).tobytes()
        + np.array([cols * 2, cols, rows], np.uint64).tobytes(),
        np.uint8,
    ).copy()
    per_group = 4 * kernel_shape("MATVEC_NR")  # 4 simdgroups of MATVEC_NR rows, as launched
    grid, tg = [(rows + per_group - 1) // per_group, 1], [128]
    consts = {1: False, 2: False, 3: 0.0}  # metal/matvec.h's function constants: plain matvec
    # warm up
    _core.sim_dispatch("matvec_f16", [args, w, x, out, out, x], grid, tg, constants=consts)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        _core.sim_dispatch("matvec_f16", [args, w, x, out, out, x], grid, tg, constants=consts)
        best = min(best, time.perf_counter() - t)
    ref = x[0].astype(np.float64) @ w.astype(np.float64).T
    assert np.abs(out[0] - ref).max() < 1e-3 * np.abs(ref).max()
    return best


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--count-only", action="store_true", help="do not run the model; count from the config"
    )
    ap.add_argument("--ftypes", default="F16,Q8_0")
    a = ap.parse_args(argv)

    s = QWEN25_05B
    print(
        f"Qwen2.5-0.5B shape: {s.n_layers} layers, hidden {s.hidden}, ffn {s.ffn}, "
        f"vocab {s.vocab}, {s.n_heads}/{s.n_kv_heads} heads, tied output; KV cache f16"
    )
    for ftype in a.ftypes.split(","):
        counts = counted_from_config(ftype)
        print(f"\n== {ftype} decode token ==")
        if not a.count_only:
            stats, elapsed, pos = run_decode_step(ftype)
            for k in counts:
                if stats[k] != counts[k]:
                    print(f"  note: simulator counted {k} = {stats[k]}, config gives {counts[k]}")
            counts = {k: stats[k] for k in counts}
            assert stats["kv_bytes"] == kv_bytes(pos), (stats["kv_bytes"], kv_bytes(pos))
            print(f"  simulator: one decode step at position {pos} took {elapsed:.2f} s")
        for k, v in counts.items():
            print(f"  {k:20s} {v:>14,}")
        print(
            f"  (from 256 cached positions on, split attention adds a merge pass: "
            f"{counts['dispatches'] + s.n_layers} dispatches)"
        )
        for p in POSITIONS:
            total = counts["declared_weight_bytes"] + kv_bytes(p)
            est = "  ".join(f"{chip} {bw * 1e9 / total:6.0f}" for chip, bw in BANDWIDTH_GBS.items())
            print(
                f"  at position {p:5d}: KV {kv_bytes(p) / 2**20:7.2f} MiB, "
                f"total {total / 2**20:7.1f} MiB/token -> roofline tok/s: {est}"
            )
    if not a.count_only:
        print(
            "\nsimulator: F16 GEMV 4864x896 (matvec_f16, 608 threadgroups of 128) "
            f"{time_gemv() * 1e3:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
