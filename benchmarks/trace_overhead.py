"""What the forward pass's observation points (cpp/engine/trace.h) cost when tracing is off.

Two builds of the core, the one before the observation points and the one with them, loaded in
one process (each built with its own nanobind domain so their types do not collide), decode the
same tokens in alternating rounds (A B A B ...), so that both see the same machine. Prints decode
tokens per second of each round and the ratios b / a.

Build each tree (a copy of cpp/, metal/ and CMakeLists.txt) with a domain of its own::

    sed -i 's/nanobind_add_module(_core NB_STATIC /&NB_DOMAIN before /' CMakeLists.txt
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMETALLIC_METAL_SIM=OFF && cmake --build build

then::

    python benchmarks/trace_overhead.py --a before/build/_core*.so --b after/build/_core*.so \\
        -m ~/.cache/metallic/tests/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from metallic.config import check_tensors, model_config
from metallic.gguf_file import read_gguf


def load_core(path: str, name: str) -> ModuleType:
    # The module's init function is PyInit__core: the import name must end in "_core".
    spec = importlib.util.spec_from_file_location(f"{name}._core", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def engine(core: ModuleType, model: str, threads: int, n_ctx: int) -> Any:
    g = read_gguf(model)
    cfg = model_config(g)
    tensors = check_tensors(g, cfg)
    theirs = cfg.to_core()
    c = core.ModelConfig()
    for f in core.ModelConfig.fields:
        value = getattr(theirs, f)
        if f in ("rope_style", "activation"):  # enums of the other module: by value
            value = getattr(type(getattr(c, f)), value.name)
        setattr(c, f, value)
    descs = [core.TensorDesc(t.name, int(t.type), list(t.shape), t.offset) for t in tensors]
    return core.Engine(str(g.path), c, descs, backend="cpu", n_ctx=n_ctx, threads=threads)


def decode_tps(e: Any, ids: np.ndarray) -> float:
    e.truncate(0)
    t0 = time.perf_counter()
    for i in ids:
        e.decode(int(i))
    return len(ids) / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the first build's _core .so (before)")
    p.add_argument("--b", required=True, help="the second build's _core .so (after)")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-n", type=int, default=128, help="tokens decoded per round")
    p.add_argument("-r", "--rounds", type=int, default=8)
    p.add_argument("-t", "--threads", type=int, default=2)
    args = p.parse_args()

    cores = {"a": load_core(args.a, "trace_bench_a"), "b": load_core(args.b, "trace_bench_b")}
    engines = {k: engine(c, args.model, args.threads, args.n + 1) for k, c in cores.items()}
    v = engines["a"].decode(0).shape[0]
    ids = np.random.default_rng(0).integers(0, v, args.n)
    for e in engines.values():  # warm-up: page in the weights, start the thread pools
        decode_tps(e, ids[:16])
    tps: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(args.rounds):
        for k in ("a", "b") if r % 2 == 0 else ("b", "a"):
            tps[k].append(decode_tps(engines[k], ids))
        print(f"round {r}: a {tps['a'][-1]:.1f} tok/s, b {tps['b'][-1]:.1f} tok/s", flush=True)
    for k, path in (("a", args.a), ("b", args.b)):
        s = tps[k]
        print(
            f"{k} ({Path(path).parent}): median {statistics.median(s):.1f} tok/s, "
            f"mean {statistics.mean(s):.1f} +- {statistics.stdev(s):.1f}"
        )
    # Each round's pair ran back to back: the median of their ratios resists the machine's drift
    # (other processes on shared cores) better than the ratio of the medians.
    pairs = sorted(b / a for a, b in zip(tps["a"], tps["b"], strict=True))
    print(
        f"b / a: median of the rounds' ratios {statistics.median(pairs):.4f} "
        f"(middle half {pairs[len(pairs) // 4]:.4f} .. {pairs[(3 * len(pairs)) // 4]:.4f}); "
        f"of the best rounds {max(tps['b']) / max(tps['a']):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
