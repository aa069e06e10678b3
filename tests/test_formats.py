"""Every weight format's CPU kernels against gguf-py, in both kernel builds.

For each format: dequantization must equal ``gguf.quants.dequantize`` bit for bit, and both
matrix paths must match the float reference ``act @ dequantized.T`` closely, over ragged
shapes: the format's one-token kernel (decode, on its quantized activations) and the batch
product every format shares (prefill: weights decoded into 16-row panels, 256 columns at a time,
tokens in tiles of 6). The portable build is not selected on an
AVX2 CPU, so it runs in a subprocess with METALLIC_FORCE_GENERIC=1 (read once, at first use).
Which build the dispatcher picks is checked against the CPU's own flags (/proc/cpuinfo).

Run as a script (``python test_formats.py IN OUT``) this file is that subprocess: it computes
every kernel output for the cases in IN and saves them to OUT.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
]
# NMSE bounds of the one-token kernel against the float reference, per format: the largest value
# measured on these inputs (seed 1234, every token count, AVX2 and portable builds alike), and
# a bound about 10x that, capped at 5e-4 (the former bound for all formats, already within 4-9x
# of the K-quants' error). Float formats are exact up to float32 summation; Q8_0 multiplies
# int16 activation blocks (rounding ~3e-10); the other block formats int8 blocks (~1e-4).
GEMV_NMSE = {
    "F32": 2e-13,  # measured 2.0e-14; bound 10x
    "F16": 2e-13,  # measured 1.9e-14; bound 10x
    "BF16": 2e-13,  # measured 1.5e-14; bound 13x
    "Q8_0": 6e-9,  # measured 5.6e-10; bound 11x
    "Q4_0": 4e-4,  # measured 3.9e-5; bound 10x
    "Q4_1": 3e-4,  # measured 3.3e-5; bound 9x
    "Q5_0": 4e-4,  # measured 4.1e-5; bound 10x
    "Q5_1": 4e-4,  # measured 3.8e-5; bound 11x
    "Q2_K": 5e-4,  # measured 1.3e-4; bound 4x
    "Q3_K": 5e-4,  # measured 8.5e-5; bound 6x
    "Q4_K": 5e-4,  # measured 5.7e-5; bound 9x
    "Q5_K": 5e-4,  # measured 6.5e-5; bound 8x
    "Q6_K": 5e-4,  # measured 6.7e-5; bound 7x
}
TOKENS = [1, 2, 3, 5, 7, 13]  # token tiles of 6: full, ragged, and fewer than one
ROWS = 37  # two full 16-row panels and a ragged one

# Where the half factors sit in the K-quant blocks gguf-py cannot quantize to; every other
# byte is a random code or packed sub-block scale.
HALF_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def make_case(name: str, rng: np.random.Generator) -> dict:
    qtype = Q[name]
    block, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    # 32-element formats: 75 blocks = a full 64-block span of the one-token kernel (8 groups of
    # 8), then one group and 3 blocks on their own.
    nblocks = 3 if block == 256 else 75
    # Several 256-column slabs, the last one ragged (603 = 2 x 256 + 91, 91 = 11 x 8 + 3).
    cols = block * nblocks if block > 1 else 603
    w = random_weights(name, ROWS, cols, rng)
    acts = {n: rng.standard_normal((n, cols)).astype(np.float32) for n in TOKENS}
    return {"type": int(qtype), "w": np.ascontiguousarray(w), "cols": cols, "acts": acts}


# Matrices wide enough that a step of more tokens than one group goes over several strips of
# rows (formats/decode_tokens.h: 256 KiB of weights per strip): rows of 8-10 KB, 37 of them.
WIDE_COLS = {"F32": 2051, "Q8_0": 9600, "Q4_0": 9600, "Q4_K": 10240}
WIDE_TOKENS = 9


def random_weights(name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """rows x cols weights of format `name` as raw bytes, one row per line."""
    qtype = Q[name]
    block, block_bytes = quants.GGML_QUANT_SIZES[qtype]
    if name in HALF_OFFSETS:
        raw = rng.integers(0, 256, size=(rows, cols // block, block_bytes), dtype=np.uint8)
        for off in HALF_OFFSETS[name]:
            # Scales of both signs over two decades: negative dmin and d occur in real files.
            h = rng.uniform(1e-3, 3e-2, size=raw.shape[:2]) * rng.choice([-1, 1], raw.shape[:2])
            raw[:, :, off : off + 2] = h.astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
        return raw.reshape(rows, -1)
    w = np.asarray(quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qtype))
    return w.reshape(rows, -1).view(np.uint8)


def make_cases() -> dict:
    rng = np.random.default_rng(1234)
    return {name: make_case(name, rng) for name in TYPES}


def compute(cases: dict) -> dict:
    """Runs the kernels of the build this process selected."""
    from metallic import _core

    out = {"isa": _core.kernel_isa()}
    for name, c in cases.items():
        w = c["w"]
        out[name, "deq"] = _core.kernel_dequant(c["type"], w.reshape(-1), ROWS * c["cols"])
        for n, a in c["acts"].items():
            out[name, n] = _core.kernel_gemm(c["type"], w.reshape(-1), ROWS, c["cols"], a, False)
            out[name, n, "batch"] = _core.kernel_gemm(
                c["type"], w.reshape(-1), ROWS, c["cols"], a, True
            )
        # A step's tokens decoded together, then each alone (kernel_gemm runs all its tokens in
        # one call): a token's result must not depend on the others, to the bit.
        a = c["acts"][TOKENS[-1]]
        out[name, "alone"] = np.concatenate(
            [
                _core.kernel_gemm(c["type"], w.reshape(-1), ROWS, c["cols"], a[t : t + 1], False)
                for t in range(len(a))
            ]
        )
    rng = np.random.default_rng(99)
    for name, cols in WIDE_COLS.items():
        w = random_weights(name, ROWS, cols, rng).reshape(-1)
        a = rng.standard_normal((WIDE_TOKENS, cols)).astype(np.float32)
        out[name, "wide"] = _core.kernel_gemm(int(Q[name]), w, ROWS, cols, a, False)
        out[name, "wide", "alone"] = np.concatenate(
            [
                _core.kernel_gemm(int(Q[name]), w, ROWS, cols, a[t : t + 1], False)
                for t in range(len(a))
            ]
        )
    return out


def flatten(cases: dict) -> dict:
    flat = {}
    for name, c in cases.items():
        flat[f"{name}/w"] = c["w"]
        for n, a in c["acts"].items():
            flat[f"{name}/act{n}"] = a
    return flat


def unflatten(flat) -> dict:
    cases = {}
    for name in TYPES:
        w = flat[f"{name}/w"]
        qtype = Q[name]
        block, block_bytes = quants.GGML_QUANT_SIZES[qtype]
        cases[name] = {
            "type": int(qtype),
            "w": w,
            "cols": w.shape[1] // block_bytes * block,
            "acts": {n: flat[f"{name}/act{n}"] for n in TOKENS},
        }
    return cases


@pytest.fixture(scope="module")
def cases():
    return make_cases()


@pytest.fixture(scope="module", params=["native", "generic"])
def results(request, cases, tmp_path_factory):
    if request.param == "native":
        return dict(compute(cases), forced_generic=False)
    d = tmp_path_factory.mktemp("generic")
    np.savez(d / "in.npz", **flatten(cases))
    env = dict(os.environ, METALLIC_FORCE_GENERIC="1")
    subprocess.run(
        [sys.executable, __file__, str(d / "in.npz"), str(d / "out.npz")],
        env=env,
        check=True,
        timeout=300,
    )
    flat = np.load(d / "out.npz")
    out = {"isa": str(flat["isa"])}
    for name in TYPES:
        out[name, "deq"] = flat[f"{name}/deq"]
        for n in TOKENS:
            out[name, n] = flat[f"{name}/{n}"]
            out[name, n, "batch"] = flat[f"{name}/{n}/batch"]
        out[name, "alone"] = flat[f"{name}/alone"]
    for name in WIDE_COLS:
        out[name, "wide"] = flat[f"{name}/wide"]
        out[name, "wide", "alone"] = flat[f"{name}/wide/alone"]
    assert out["isa"] == portable_isa()
    out["forced_generic"] = True
    return out


def reference(case: dict) -> np.ndarray:
    qtype = Q[[k for k in TYPES if int(Q[k]) == case["type"]][0]]
    return quants.dequantize(case["w"], qtype).reshape(ROWS, case["cols"]).astype(np.float32)


@pytest.mark.parametrize("name", TYPES)
def test_dequant_matches_gguf_bit_for_bit(name, cases, results):
    ref = reference(cases[name]).reshape(-1)
    got = results[name, "deq"]
    assert got.dtype == np.float32 and got.shape == ref.shape
    mismatch = np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))
    assert mismatch.size == 0, (
        f"{mismatch.size} values differ, first at {mismatch[0]}: "
        f"{got[mismatch[0]]!r} vs {ref[mismatch[0]]!r}"
    )


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("ntok", TOKENS)
def test_gemv_matches_float_reference(name, ntok, cases, results):
    case = cases[name]
    ref = case["acts"][ntok].astype(np.float64) @ reference(case).T.astype(np.float64)
    got = results[name, ntok]
    assert got.shape == (ntok, ROWS)
    nmse = float(np.sum((got - ref) ** 2) / np.sum(ref**2))
    assert nmse < GEMV_NMSE[name], f"NMSE {nmse:.3g} >= {GEMV_NMSE[name]:.0e}"


@pytest.mark.parametrize("name", TYPES)
def test_gemv_tokens_together_equal_each_alone(name, results):
    """Decode tokens are grouped (up to 4 share each decoded weight block): 13 tokens together
    give each token exactly what it gets alone, as batched serving promises."""
    together, alone = results[name, TOKENS[-1]], results[name, "alone"]
    assert together.shape == alone.shape
    bad = np.argwhere(together.view(np.uint32) != alone.view(np.uint32))
    assert bad.size == 0, f"{len(bad)} results differ, first at token/row {tuple(bad[0])}"


@pytest.mark.parametrize("name", list(WIDE_COLS))
def test_gemv_tokens_over_strips_equal_each_alone(name, results):
    together, alone = results[name, "wide"], results[name, "wide", "alone"]
    assert together.shape == (WIDE_TOKENS, ROWS)
    assert np.array_equal(together.view(np.uint32), alone.view(np.uint32))
    assert np.isfinite(together).all()


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("ntok", TOKENS)
def test_batch_gemm_matches_float_reference(name, ntok, cases, results):
    # Float activations times exactly dequantized weights: only float32 summation error.
    case = cases[name]
    ref = case["acts"][ntok].astype(np.float64) @ reference(case).T.astype(np.float64)
    got = results[name, ntok, "batch"]
    assert got.shape == (ntok, ROWS)
    err = np.abs(got - ref) / (np.abs(case["acts"][ntok]) @ np.abs(reference(case)).T + 1e-30)
    assert err.max() < 1e-5, f"max relative error {err.max():.3g}"


def cpu_flags() -> set[str] | None:
    """An x86 CPU's feature flags as the OS reports them (lower case), or None where unknown."""
    if sys.platform.startswith("linux"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
        return None
    if sys.platform == "darwin":
        keys = ["machdep.cpu.features", "machdep.cpu.leaf7_features"]
        r = subprocess.run(["sysctl", "-n", *keys], capture_output=True, text=True)
        return set(r.stdout.lower().split()) if r.returncode == 0 else None
    return None


def portable_isa() -> str:
    """What kernel_isa() calls the portable build: "neon" on arm64 (NEON is baseline there)."""
    return "neon" if platform.machine().lower() in ("arm64", "aarch64") else "generic"


def expected_isa() -> str:
    """The kernel set cpp/cpu/dispatch.cpp must pick on this CPU, from the CPU's own flags: on
    x86-64 (where CMakeLists.txt adds the AVX2 build) "avx2" if the CPU has AVX2, FMA and F16C;
    otherwise the portable build. There is no AVX-512 build: an AVX-512 CPU has all three flags
    and must get the AVX2 set."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return portable_isa()
    flags = cpu_flags()
    if flags is None:
        pytest.skip(f"cannot read the CPU flags on {sys.platform}")
    return "avx2" if {"avx2", "fma", "f16c"} <= flags else "generic"


def test_native_build_is_selected(results):
    # Against the CPU's flags, not against kernel_isa() itself: a dispatch regression that sent
    # an AVX2 CPU to the portable kernels reports "generic" here and fails. (The forced run
    # checks METALLIC_FORCE_GENERIC=1 is honoured.)
    want = portable_isa() if results["forced_generic"] else expected_isa()
    assert results["isa"] == want, f"dispatch chose {results['isa']!r}, CPU calls for {want!r}"


# Where gguf-py (and python/metallic/ggml_types.py, which mirrors it: tests/test_memory.py) is
# known to be wrong, with what ggml itself says. The core follows ggml-common.h.
UPSTREAM_WRONG = {
    # gguf-py up to 0.19 sizes Q8_1 as (32, 4 + 4 + 32); ggml-common.h's block_q8_1 has half d
    # and s: 2 + 2 + 32 (fixed in gguf-py by llama.cpp PR #29036). No weight file uses Q8_1.
    "Q8_1": (32, 40),
}


def test_type_tables_agree():
    """The GGML type table is stated once, in cpp/engine/ggml_types.h (the C++ formats, block
    layouts and Metal kernel names derive from it or are checked against it at build time).
    python/metallic/ggml_types.py, which the GGUF reader uses without importing gguf-py, must
    say the same for every type the core knows, and so must gguf-py, the external truth."""
    from metallic import _core, ggml_types

    ours, upstream = ggml_types.GGMLQuantizationType, quants.GGML_QUANT_SIZES
    wrong = []
    for name, type_id, block, block_bytes in _core.ggml_types():
        core_row = (type_id, (block, block_bytes))
        py_row = (
            (int(ours[name]), ggml_types.GGML_QUANT_SIZES.get(ours[name]))
            if name in ours.__members__
            else None
        )
        gguf_row = (int(Q[name]), upstream[Q[name]]) if name in Q.__members__ else None
        allowed = {core_row}
        if name in UPSTREAM_WRONG:
            allowed.add((type_id, UPSTREAM_WRONG[name]))
        if py_row not in allowed or gguf_row not in allowed:
            wrong.append(f"{name}: core {core_row}, ggml_types.py {py_row}, gguf-py {gguf_row}")
    assert not wrong, "(id, (block, bytes)) differ: " + "; ".join(wrong)
    # The formats these tests run are the core's.
    assert sorted(TYPES) == sorted(_core.supported_formats().split(", "))


if __name__ == "__main__":
    flat_in = np.load(sys.argv[1])
    res = compute(unflatten(flat_in))
    flat_out = {"isa": np.array(res.pop("isa"))}
    for (name, *key), v in res.items():
        flat_out["/".join(map(str, [name, *key]))] = v
    np.savez(sys.argv[2], **flat_out)
