"""Every weight format's CPU kernels against gguf-py, in both kernel builds.

For each format: dequantization must equal ``gguf.quants.dequantize`` bit for bit, and both
matrix paths must match the float reference ``act @ dequantized.T`` closely, over ragged
shapes: the format's one-token kernel (decode, on its quantized activations) and the batch
product every format shares (prefill: weights decoded into 16-row panels, 256 columns at a time,
tokens in tiles of 6). The portable build is not selected on an
AVX2 CPU, so it runs in a subprocess with METALLIC_FORCE_GENERIC=1 (read once, at first use).

Run as a script (``python test_formats.py IN OUT``) this file is that subprocess: it computes
every kernel output for the cases in IN and saves them to OUT.
"""

from __future__ import annotations

import os
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
    if name in HALF_OFFSETS:
        raw = rng.integers(0, 256, size=(ROWS, cols // block, block_bytes), dtype=np.uint8)
        for off in HALF_OFFSETS[name]:
            # Scales of both signs over two decades: negative dmin and d occur in real files.
            h = rng.uniform(1e-3, 3e-2, size=raw.shape[:2]) * rng.choice([-1, 1], raw.shape[:2])
            raw[:, :, off : off + 2] = h.astype(np.float16).view(np.uint8).reshape(ROWS, -1, 2)
        w = raw.reshape(ROWS, -1)
    else:
        w = np.asarray(quants.quantize(rng.standard_normal((ROWS, cols)).astype(np.float32), qtype))
        w = w.reshape(ROWS, -1).view(np.uint8)
    acts = {n: rng.standard_normal((n, cols)).astype(np.float32) for n in TOKENS}
    return {"type": int(qtype), "w": np.ascontiguousarray(w), "cols": cols, "acts": acts}


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
        return compute(cases)
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
    assert out["isa"] == "generic"
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
    assert nmse < 5e-4, f"NMSE {nmse:.3g}"


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


def test_native_build_is_selected(results):
    from metallic import _core

    if results["isa"] != "generic":
        assert results["isa"] == _core.kernel_isa()


if __name__ == "__main__":
    flat_in = np.load(sys.argv[1])
    res = compute(unflatten(flat_in))
    flat_out = {"isa": np.array(res.pop("isa"))}
    for (name, *key), v in res.items():
        flat_out["/".join(map(str, [name, *key]))] = v
    np.savez(sys.argv[2], **flat_out)
