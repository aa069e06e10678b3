"""Any chunking of a token sequence gives the logits of one prefill, on every architecture.

A sequence of N tokens run as any sequence of prefills (chunks of any size, 1-token decodes
included) must give, for each chunk's last token, the logits that one ``prefill_all`` of the
whole sequence gives at that position; so must truncating the cache and re-running the tail, up
to a completely full context. Chunkings are drawn with fixed seeds (numpy RandomState), many
per model, and explicit patterns aim at the boundaries where bugs live:

* the prefill batch: the engine splits a prompt into forward passes of ``max_batch`` tokens,
  so models are loaded with small ``max_batch`` values as well as the default 512;
* the CPU backend's attention key chunk (cpp/cpu/block_attention.h: kKeyChunk = 128 keys) and
  its query blocks (attention_block_rows: 64 rows for most shapes here, 56 for the qwen3 shape,
  so that even one prefill from position 0 has a block across a key-chunk boundary);
* gemma3's sliding window (positions across multiples of the window; a window of 100 also makes
  the CPU backend's key chunks start off the multiples of 128);
* the Metal kernels' tiles, run by the simulator: 32-token gemm tiles (metal/gemm.h, batches of
  33+ tokens) and, for decode over 256+ positions, attention split into 128-position ranges
  (kAttentionSplitLen in cpp/metal/metal_backend.cpp);
* the end of the context: filled to exactly n_ctx, one more token raises ContextError and
  leaves the cache as it was.

Exactness. Both backends compute a forward pass through their GEMM (CPU: 2 tokens or more;
Metal: 9 or more, GEMM_LEAST) with arithmetic that does not depend on how the sequence was
split, so those chunkings are compared bit for bit (all rows, through prefill_all); the one
exception, the CPU backend's sliding-window layers with windows wider than a key chunk minus a
query block, is marked where it applies (_SPLIT_DEPENDENT). A shorter forward pass (a decode, a
short chunk on Metal, or a short remainder of a max_batch split) takes the matrix-vector path,
which sums in another order (and, for Q8_0 weights, multiplies int8-quantized activations on the
CPU); its K/V rows then differ by that rounding, and so does every later position: those
chunkings get a tolerance, measured and stated at TOLERANCE. prefill() (not prefill_all) also
runs the output head for its last row alone, on the matrix-vector path.

Memory. A query block that starts before a key chunk and ends inside it once made the CPU
backend write zeros just before its score buffer: heap corruption that leaves the logits
unchanged. test_key_chunk_patterns_keep_the_heap_intact runs those patterns in a subprocess
under glibc's heap checking and requires a clean exit.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import json
import os
import platform
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import ContextError, _core
from metallic.model import Model
from oracle.tiny_models import (
    ModelShape,
    model_metadata,
    oracle_cache_dir,
    random_tensor_plans,
    small_shape,
    tiny_vocab,
    vocab_metadata,
    write_tensors,
    writer_fingerprint,
)

# --------------------------------------------------------------------------------------------
# Models: tiny random weights written straight from a shape (no transformers needed)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiny:
    """A tiny random model: its shape and the file type its matrices are stored in."""

    name: str
    shape: ModelShape
    ftype: str


# One model per architecture, in different storage types so that every kind of matrix-vector
# path meets its batch counterpart: Q8_0 (int8 activations on the 1-token path) and F16 with an
# f16 KV cache, F32 with an f32 KV cache.
MODELS: dict[str, Tiny] = {
    "qwen2": Tiny("qwen2", small_shape("qwen2"), "Q8_0"),
    "llama": Tiny("llama", small_shape("llama", n_kv_heads=4, ffn=128, tied=True), "F16"),
    # 6 query heads on one KV head of 96 dimensions: attention_block_rows gives 56-row query
    # blocks (131072 / (4 * 6 * 96)), so the block of rows 112..167 crosses key chunk 128.
    "qwen3": Tiny("qwen3", small_shape("qwen3", n_heads=6, n_kv_heads=1, head_dim=96), "F32"),
    # Layers 0-4 slide over 100 positions, layer 5 is global (llama.cpp's pattern of 6). With a
    # window of 100, a 64-row block at pos0 takes keys in chunks from pos0 - 99, so the second
    # chunk starts at pos0 + 29, inside the block.
    "gemma3": Tiny(
        "gemma3",
        small_shape("gemma3", n_layers=6, head_dim=32, sliding_window=100, tied=True),
        "F16",
    ),
}
# For the simulator: a window it crosses many times within a short sequence.
GEMMA3_SHORT_WINDOW = Tiny("gemma3-w12", replace(MODELS["gemma3"].shape, sliding_window=12), "F16")


@cache
def model_path(tiny: Tiny) -> Path:
    """The GGUF file of a tiny model, written once into the oracle cache (see tiny_gguf)."""
    payload = json.dumps(
        {"shape": asdict(tiny.shape), "ftype": tiny.ftype, "writer": writer_fingerprint()},
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    path = oracle_cache_dir() / f"chunking-{tiny.name}-{tiny.ftype}-{key}.gguf"
    if not path.exists():
        meta = model_metadata(tiny.shape, tiny.ftype, name=f"chunking-{tiny.name}")
        meta |= vocab_metadata(tiny_vocab(tiny.shape.arch, tiny.shape.vocab))
        write_tensors(path, meta, random_tensor_plans(tiny.shape, tiny.ftype, seed=7, std=0.1))
    return path


def tokens(n: int, seed: int, vocab: int = 300) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, vocab, size=n).astype(np.int32)


# --------------------------------------------------------------------------------------------
# Chunkings
# --------------------------------------------------------------------------------------------


def any_chunking(rng: np.random.RandomState, n: int, max_chunk: int, p_one: float) -> list[int]:
    """Chunk sizes summing to n: 1 with probability p_one, else uniform in [2, max_chunk]."""
    sizes: list[int] = []
    left = n
    while left:
        size = 1 if rng.rand() < p_one else int(rng.randint(2, max_chunk + 1))
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def batched_chunking(
    rng: np.random.RandomState, n: int, max_chunk: int, max_batch: int, least: int = 2
) -> list[int]:
    """Chunk sizes summing to n for which every forward pass has >= `least` tokens: no chunk
    shorter, and none that max_batch would split into passes leaving fewer over."""

    def fine(size: int, left: int) -> bool:
        return size >= least and not 0 < size % max_batch < least and not 0 < left - size < least

    sizes: list[int] = []
    left = n
    while left:
        choices = [s for s in range(least, min(max_chunk, left) + 1) if fine(s, left)]
        sizes.append(int(rng.choice(choices)))
        left -= sizes[-1]
    return sizes


def ends(sizes: Sequence[int]) -> list[int]:
    return [int(e) for e in np.cumsum(sizes)]


def describe(sizes: Sequence[int]) -> str:
    """A chunking in a failure message: its length, 1-token chunks and first sizes."""
    head = ", ".join(map(str, sizes[:16])) + (", ..." if len(sizes) > 16 else "")
    return f"{len(sizes)} chunks ({sizes.count(1)} of 1 token): [{head}]"


# --------------------------------------------------------------------------------------------
# Running chunkings and comparing logits
# --------------------------------------------------------------------------------------------


def run_last(model: Model, ids: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Each chunk's last-token logits, [len(sizes), vocab], as a streaming caller gets them:
    prefill() per chunk, 1-token chunks alternately through decode() and prefill()."""
    out = []
    pos = 0
    for i, size in enumerate(sizes):
        chunk = ids[pos : pos + size]
        logits = model.decode(int(chunk[0])) if size == 1 and i % 2 else model.prefill(chunk)
        out.append(np.array(logits, copy=True))  # a view that the next call overwrites
        pos += size
    return np.stack(out)


def run_all(model: Model, ids: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Every token's logits, chunk by chunk through prefill_all()."""
    out = []
    pos = 0
    for size in sizes:
        out.append(model.prefill_all(ids[pos : pos + size]))
        pos += size
    return np.concatenate(out)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |difference| of any logit, relative to the largest |logit| of the reference."""
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


class NotBitIdentical(AssertionError):
    """Batched logits that are within the tolerance but not identical."""


def assert_close(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = rel_err(got, want)
    assert err <= tol, f"{what}: max relative error {err:.2e} > {tol:.0e}"


def assert_identical(got: np.ndarray, want: np.ndarray, tol: float, what: str) -> None:
    """Bit for bit; a difference within tol raises NotBitIdentical, a larger one fails plainly."""
    assert_close(got, want, tol, what)
    if not np.array_equal(got, want):
        rows = np.flatnonzero(np.any(got != want, axis=1))
        raise NotBitIdentical(
            f"{what}: {rows.size} rows differ (first {rows[:6].tolist()}), "
            f"max relative error {rel_err(got, want):.2e}"
        )


# Tolerances (rel_err) for chunkings with 1-token forward passes: 3x the largest error measured
# over this file's chunkings (in the comments), rounded up. cpu: Q8_0 weights multiply
# int8-quantized activations on the 1-token path and floats in a batch, the largest difference;
# with F16 weights the KV cache is f16, and a K/V row from either path may round to another
# half; F32 (with an f32 cache) differs by summation order alone. metal-sim multiplies float
# activations on both paths.
TOLERANCE: dict[tuple[str, str], float] = {
    ("cpu", "qwen2"): 7e-4,  # measured 2.1e-4 (Q8_0)
    ("cpu", "llama"): 1.1e-4,  # 3.4e-5 (F16)
    ("cpu", "qwen3"): 5e-6,  # 1.6e-6 (F32)
    ("cpu", "gemma3"): 2e-4,  # 6.3e-5 (F16, 6 layers)
    ("metal-sim", "qwen2"): 4e-5,  # 1.3e-5
    ("metal-sim", "llama"): 4e-5,  # 1.3e-5
    ("metal-sim", "qwen3"): 3e-6,  # 8.8e-7
    ("metal-sim", "gemma3-w12"): 1.5e-4,  # 4.7e-5
}


def seed_of(*parts: object) -> int:
    return zlib.crc32("-".join(map(str, parts)).encode())


def load(tiny: Tiny, backend: str, n_ctx: int, max_batch: int) -> Model:
    if backend == "metal-sim" and not _core.metal_sim_available():
        pytest.skip("built without the Metal simulator")
    return metallic.load(model_path(tiny), backend=backend, n_ctx=n_ctx, max_batch=max_batch)


@cache
def reference(tiny: Tiny, backend: str, n: int, max_batch: int) -> np.ndarray:
    """Every position's logits from one prefill_all of tokens(n) on an empty cache."""
    return load(tiny, backend, n, max_batch).prefill_all(tokens(n, seed=1))


# Sequence lengths. cpu: past position 512, so that chunks cross four key-chunk boundaries and
# the default max_batch of 512. metal-sim (much slower): with max_batch 40 a pass of 33+ tokens
# spans two 32-token gemm tiles, and 72 tokens make passes of 40 + 32.
N_CPU = 600
N_SIM = 72
SIM_BATCH = 40
# The fewest tokens of a forward pass that takes the GEMM (Backend::max_single_segment + 1):
# shorter chunks take the matrix-vector kernels, as decode steps do.
GEMM_LEAST = {"cpu": 2, "metal-sim": 9}

# (backend, model, max_batch) cases of the chunking tests.
CPU_CASES = [("cpu", name, mb) for name in MODELS for mb in (8, 16, 512)]
# gemma3's window of 100 would not slide within N_SIM tokens: the simulator runs gemma3-w12.
SIM_NAMES = ("qwen2", "llama", "qwen3", GEMMA3_SHORT_WINDOW.name)
SIM_CASES = [("metal-sim", name, SIM_BATCH) for name in SIM_NAMES]
TINY_BY_NAME = {t.name: t for t in (*MODELS.values(), GEMMA3_SHORT_WINDOW)}


def case_id(case: tuple[str, str, int]) -> str:
    return f"{case[0]}-{case[1]}-mb{case[2]}"


# --------------------------------------------------------------------------------------------
# Any chunking = one prefill
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=case_id(c)) for c in [c for c in CPU_CASES if c[2] != 16] + SIM_CASES],
)
def test_batched_chunkings_are_bit_identical(case: tuple[str, str, int]) -> None:
    """Chunkings whose forward passes all take the GEMM give every row bit for bit."""
    backend, name, max_batch = case
    tiny = TINY_BY_NAME[name]
    n = N_CPU if backend == "cpu" else N_SIM
    want = reference(tiny, backend, n, max_batch)
    model = load(tiny, backend, n, max_batch)
    ids = tokens(n, seed=1)
    rng = np.random.RandomState(seed_of("batched", *case))
    max_chunks = (3, 24, 100, 300) if backend == "cpu" else (20, 80)
    for max_chunk in max_chunks:
        model.reset()
        sizes = batched_chunking(rng, n, max_chunk, max_batch, least=GEMM_LEAST[backend])
        assert_identical(
            run_all(model, ids, sizes), want, TOLERANCE[(backend, name)], describe(sizes)
        )


@pytest.mark.parametrize("case", CPU_CASES + SIM_CASES, ids=case_id)
def test_any_chunking_gives_the_logits_of_one_prefill(case: tuple[str, str, int]) -> None:
    """Random chunkings, 1-token chunks included: each chunk's last logits as one prefill_all."""
    backend, name, max_batch = case
    tiny = TINY_BY_NAME[name]
    n = N_CPU if backend == "cpu" else N_SIM
    want = reference(tiny, backend, n, max_batch)
    model = load(tiny, backend, n, max_batch)
    ids = tokens(n, seed=1)
    rng = np.random.RandomState(seed_of("any", *case))
    specs = [(3, 0.5), (12, 0.3), (40, 0.2), (150, 0.1), (n, 0.05)]
    if backend == "metal-sim":
        specs = [(4, 0.4), (90, 0.1)]
    chunkings = [any_chunking(rng, n, max_chunk, p_one) for max_chunk, p_one in specs]
    if max_batch == 512:
        chunkings.append([1] * n)  # decode steps only
    for sizes in chunkings:
        model.reset()
        got = run_last(model, ids, sizes)
        rows = [e - 1 for e in ends(sizes)]
        assert_close(got, want[rows], TOLERANCE[(backend, name)], describe(sizes))
        assert model.n_past == n


# Key-chunk patterns (cpu, kKeyChunk = 128): passes that start a few positions before a
# multiple of 128 and end after it (505 + 12: the first query row 7 positions before key chunk
# 512; 510 + 3: 2 before; 511 + 2: right before, the edge case that was always fine), small
# passes across 128, 256 and 384, and fixed-size passes that cross every boundary up to 720.
KEY_CHUNK_PATTERNS: list[list[int]] = [
    [505, 12],
    [510, 3],
    [511, 2],
    [126, 4, 120, 10, 120, 10],
    [36] * 20,
    [2] + [64] * 11,
]
N_PATTERNS = 720


@pytest.mark.parametrize("name", list(MODELS))
def test_key_chunk_boundary_patterns(name: str) -> None:
    tiny = MODELS[name]
    want = reference(tiny, "cpu", N_PATTERNS, 512)
    model = load(tiny, "cpu", N_PATTERNS, 512)
    ids = tokens(N_PATTERNS, seed=1)
    for sizes in KEY_CHUNK_PATTERNS:
        model.reset()
        got = run_all(model, ids, sizes)
        what = describe(sizes)
        if name == "gemma3":  # windowed key chunks depend on the split: see _SPLIT_DEPENDENT
            assert_close(got, want[: len(got)], TOLERANCE[("cpu", name)], what)
        else:
            assert_identical(got, want[: len(got)], TOLERANCE[("cpu", name)], what)


# --------------------------------------------------------------------------------------------
# Truncating and re-running, and the end of the context
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_truncate_then_rerun_the_tail(name: str) -> None:
    """Keep k tokens of a cache whose later rows hold other tokens, re-run the real tail in
    random chunks: the logits of one prefill, so no stale row past k is ever read."""
    tiny = MODELS[name]
    want = reference(tiny, "cpu", N_CPU, 16)
    model = load(tiny, "cpu", N_CPU, 16)
    ids = tokens(N_CPU, seed=1)
    other = tokens(N_CPU, seed=2)
    rng = np.random.RandomState(seed_of("truncate", name))
    for k in (1, 127, 128, 129, 256, 505, 512, 599):
        model.reset()
        model.prefill(np.concatenate([ids[:k], other[k:]]))
        model.truncate(k)
        assert model.n_past == k and model.cached_tokens == ids[:k].tolist()
        sizes = any_chunking(rng, N_CPU - k, 40, 0.3)
        got = run_last(model, ids[k:], sizes)
        rows = [k + e - 1 for e in ends(sizes)]
        assert_close(got, want[rows], TOLERANCE[("cpu", name)], f"truncate({k}), {describe(sizes)}")


@pytest.mark.parametrize(
    ("backend", "name", "n_ctx"),
    [("cpu", name, 517) for name in MODELS] + [("metal-sim", name, 45) for name in SIM_NAMES],
)
def test_full_context(backend: str, name: str, n_ctx: int) -> None:
    """Filled to exactly n_ctx, the next token raises ContextError and changes nothing: the
    cache still gives the same logits. A prefill that would overflow is refused whole."""
    tiny = TINY_BY_NAME[name]
    max_batch = 16 if backend == "cpu" else SIM_BATCH
    want = reference(tiny, backend, n_ctx, max_batch)
    tol = TOLERANCE[(backend, name)]
    model = load(tiny, backend, n_ctx, max_batch)
    ids = tokens(n_ctx, seed=1)
    sizes = any_chunking(np.random.RandomState(seed_of("full", backend, name)), n_ctx, 40, 0.2)
    got = run_last(model, ids, sizes)
    assert_close(got, want[[e - 1 for e in ends(sizes)]], tol, describe(sizes))
    last = got[-1]

    for attempt in (
        lambda: model.decode(3),
        lambda: model.prefill([3]),
        lambda: model.prefill([3, 4]),
        lambda: model.prefill_all([3]),
    ):
        with pytest.raises(ContextError):
            attempt()
        assert model.n_past == n_ctx
        assert model.cached_tokens == ids.tolist()

    # The last token again, over the cache as the failed calls left it.
    model.truncate(n_ctx - 1)
    assert_close(model.decode(int(ids[-1])), last, tol, "last token re-run after ContextError")

    # Five free positions: six tokens are refused whole, five fit and give the same logits.
    model.truncate(n_ctx - 5)
    with pytest.raises(ContextError):
        model.prefill(tokens(6, seed=3))
    assert model.n_past == n_ctx - 5
    assert_close(model.prefill(ids[-5:]), want[-1], tol, "last 5 tokens after a refused 6")
    assert model.n_past == n_ctx


# Split decode attention (metal-sim): decode over >= 2 * 128 positions splits the window into
# 128-position threadgroups and merges them. n_ctx 260 runs decodes from 1 split (below 256
# positions) to 2 and 3 (the last with 4 positions), and fills the partials buffer, which is
# sized by n_ctx, to its last split.
N_SPLIT = 260


def test_metal_split_decode_attention_tail() -> None:
    model = load(MODELS["qwen2"], "metal-sim", N_SPLIT, SIM_BATCH)
    ids = tokens(N_SPLIT, seed=1)
    want = model.prefill_all(ids)  # the reference, and the cache the tails are re-run over
    rng = np.random.RandomState(seed_of("split"))
    k = 240
    for sizes in ([1] * (N_SPLIT - k), any_chunking(rng, N_SPLIT - k, 6, 0.5), [N_SPLIT - k]):
        model.truncate(k)
        got = run_last(model, ids[k:], sizes)
        rows = [k + e - 1 for e in ends(sizes)]
        assert_close(got, want[rows], TOLERANCE[("metal-sim", "qwen2")], describe(sizes))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_tolerance_sees_a_one_token_change(name: str) -> None:
    """The comparison can fail: with one token changed at position 300, the same chunking gives
    logits from there on that are far outside the tolerance (measured: 2e-2 to 8e-2, 30x the
    loosest tolerance), while the chunks before it still pass."""
    tiny = MODELS[name]
    tol = TOLERANCE[("cpu", name)]
    want = reference(tiny, "cpu", N_CPU, 512)
    model = load(tiny, "cpu", N_CPU, 512)
    ids = tokens(N_CPU, seed=1)
    ids[300] = (ids[300] + 1) % tiny.shape.vocab
    sizes = [280, 1, 30, 2, 287]
    got = run_last(model, ids, sizes)
    rows = [e - 1 for e in ends(sizes)]
    assert_close(got[:2], want[rows[:2]], tol, "before the change")
    for i in range(2, len(sizes)):
        with pytest.raises(AssertionError, match="max relative error"):
            assert_close(got[i], want[rows[i]], 10 * tol, f"position {rows[i]}")


# --------------------------------------------------------------------------------------------
# Memory: the key-chunk patterns under glibc's heap checks
# --------------------------------------------------------------------------------------------

# Runs patterns in a fresh interpreter: argv[1] is JSON [[path, n_ctx, sizes], ...]. Each model
# is deleted before the next: freeing the attention scratch is where glibc meets a clobbered
# chunk header (a corruption that leaves the logits unchanged). The bug wrote zeros over the
# floats before the score buffer, one per position the first query row lies before the key
# chunk: 2 or more reach the chunk's size field, which free() checks. (510 + 3, one float,
# zeroes only the upper half of that field, already zero: invisible to any heap check.)
_HEAP_SCRIPT = """
import gc, json, sys
import numpy as np
import metallic
for path, n_ctx, sizes in json.loads(sys.argv[1]):
    model = metallic.load(path, backend="cpu", n_ctx=n_ctx)
    ids = np.random.RandomState(0).randint(0, model.n_vocab, n_ctx).astype(np.int32)
    pos = 0
    for size in sizes:
        model.prefill(ids[pos : pos + size])
        pos += size
    del model
    gc.collect()
print("heap intact")
"""


def heap_check_env() -> dict[str, str]:
    """The environment that makes glibc check its heap as hard as it can.

    MALLOC_PERTURB_ fills every allocation and every freed block with a byte pattern. glibc >=
    2.34 has MALLOC_CHECK_ (and its tunable glibc.malloc.check) only in libc_malloc_debug.so,
    which must be preloaded, and which turns itself off when the heap was used before it was
    initialized: the case of a Python with a shared libpython, whose constructors run first
    (pyenv's Python 3.11 on glibc 2.36, for one). There the checks that free() always makes
    remain, and they are what catches a zeroed chunk header."""
    env = dict(os.environ, MALLOC_CHECK_="3", MALLOC_PERTURB_="165")
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    env["GLIBC_TUNABLES"] = ":".join(
        [*tunables, "glibc.malloc.check=3", "glibc.malloc.perturb=165"]
    )
    libc, version = platform.libc_ver()
    newer = libc == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 34)
    # An LD_PRELOAD already set (a sanitizer runtime, another allocator) owns malloc: keep it.
    if newer and not env.get("LD_PRELOAD"):
        debug = ctypes.util.find_library("c_malloc_debug")
        if debug:
            env["LD_PRELOAD"] = debug
    return env


def test_key_chunk_patterns_keep_the_heap_intact() -> None:
    """The patterns that once wrote before the CPU backend's score buffer, in a subprocess
    under heap checking: qwen2 with passes across key chunks 128-512, qwen3's 56-row blocks and
    gemma3's window of 100, where one prefill from position 0 already has such blocks."""
    runs = [
        [str(model_path(MODELS["qwen2"])), sum(sizes), sizes]
        for sizes in ([505, 12], [36] * 20, [126, 4, 120, 10, 120, 10])
    ]
    runs += [
        [str(model_path(MODELS["qwen3"])), 300, [300]],
        [str(model_path(MODELS["gemma3"])), 300, [300]],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _HEAP_SCRIPT, json.dumps(runs)],
        env=heap_check_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "heap intact" in proc.stdout, (
        f"exit status {proc.returncode}; stderr:\n{proc.stderr[-2000:]}"
    )
