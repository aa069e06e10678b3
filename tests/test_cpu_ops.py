"""Every op of the CPU backend on its own, against a float64 NumPy reference: llama.cpp's
test-backend-ops discipline, as test_metal_ops.py applies it to the Metal kernels (the shapes and
references both share are in op_cases.py).

The ops are engine/backend.h's, run by a fresh CPU backend through _core's cpu_op_* hooks:
  embed      table rows (a format's dequant_row)        test_embed
  rmsnorm    cpu/ops.h rmsnorm_row                       test_rmsnorm
  matmul     one row: a format's one-token kernel;       test_matmul,
             more: cpu/panel_gemm.h; jobs, bias,         test_matmul_mixed_formats
             accumulate, rows split into tasks
  rope       cpu/ops.h rope_row, angles from inv_freq    test_rope
  store_kv   float16 cache: cpu/ops.h to_f16             test_to_f16, every attention test
  attention  one row: cpu/ops.h attend;                  test_attention,
             more: cpu/block_attention.h attend_block    test_attention_shifted_scores,
                                                         test_attention_rising_scores
  glu        cpu/ops.h glu (SiLU, GELU-tanh)             test_glu
  add        cpu/ops.h add                               test_add
  softcap    cpu/ops.h softcap                           test_softcap
The fused steps of backend.h (rope_store_kv, rmsnorm_matmul, rmsnorm_gate_up_glu, add_rmsnorm,
gate_up_glu) are these ops in sequence on the CPU. The formats' kernels themselves are checked
against gguf-py in test_formats.py; here they are the matmul op's inputs.

Each test runs in every kernel build this CPU runs (cpu_op_isas(): the portable one, and AVX2 on
an x86-64 CPU that has it) and, where the op splits its work over threads, on 1 and 3 threads.
Limits are NMSE about 10x the worst measured over builds and cases (noted beside each); exact
where the op is.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from metallic import _core as core
from op_cases import (
    ATTENTION_CASES,
    ELEMENTWISE_COUNTS,
    ROPE_CASES,
    attention_ref,
    encode,
    glu_ref,
    nmse,
    rope_inv_freq,
    rope_ref,
)

rng = np.random.default_rng(2718)

ISAS = core.cpu_op_isas()
THREADS = [1, 3]
FORMATS = [Q[name] for name in core.supported_formats().split(", ")]

# NMSE limits, about 10x the worst measured over both builds and every case at this file's seed
# (the worst over four more seeds after the semicolon).
LIMITS = {
    "rmsnorm": 2e-13,  # measured 2.4e-14; 2.4e-14
    "rope": 3e-14,  # measured 3.0e-15; 3.5e-15
    "attention": 2e-11,  # measured 1.8e-12; 1.8e-12
    "attention_shifted": 1e-8,  # measured 1.2e-9; 1.4e-9 (scores near 200 rounded to float32)
    "glu": 3e-14,  # measured 2.3e-15; 3.1e-15
    "softcap": 3e-14,  # measured 2.1e-15; 7.4e-15
    "matmul_float": 3e-12,  # measured 3.1e-13; 2.0e-13 (float formats; all on the batch path)
    "matmul_i16": 2e-8,  # measured 1.2e-9; 4.3e-9 (Q8_0 decode: activations to int16)
    "matmul_q8": 3e-3,  # measured 2.4e-4; 5.5e-4 (other quantized decode: activations to int8)
}


def check(got, ref, limit):
    assert np.isfinite(got).all(), "non-finite output"
    err = nmse(got, ref)
    assert err < LIMITS[limit], f"NMSE {err:.3g} over the {limit} limit {LIMITS[limit]:.0e}"


def f16_exact(shape, scale=1.0):
    """Random float32 values that float16 holds exactly: the float16 and float32 caches then
    hold the same keys and values and share one reference."""
    return (scale * rng.standard_normal(shape)).astype(np.float16).astype(np.float32)


# ---- rmsnorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize(
    "n,d,magnitude",
    [
        (1, 8, 1.0),
        (3, 37, 1.0),  # a tail past the 8-wide vectors
        (9, 640, 3.0),  # 8 rows and more are split over the threads
        (2, 4096, 1.0),
        (4, 64, 1e-3),  # mean square 1e-6 against eps 1e-5: eps dominates, and must be inside
    ],
)
def test_rmsnorm(isa, threads, in_place, n, d, magnitude):
    eps = 1e-5
    x = (magnitude * rng.standard_normal((n, d))).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt(np.mean(xd**2, axis=1, keepdims=True) + eps) * w
    out = x if in_place else np.full_like(x, np.nan)
    core.cpu_op_rmsnorm(x, w, out, eps, isa=isa, threads=threads)
    check(out, ref, "rmsnorm")


# ---- rope ------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n,n_heads,n_kv,head_dim,rope_dims,pos0", ROPE_CASES)
def test_rope(isa, threads, neox, n, n_heads, n_kv, head_dim, rope_dims, pos0):
    inv_freq = rope_inv_freq(rope_dims)
    for heads in (n_heads, n_kv):  # q's rows, then k's
        x = rng.standard_normal((n, heads * head_dim)).astype(np.float32)
        ref = rope_ref(x, heads, head_dim, rope_dims, pos0, inv_freq, neox)
        core.cpu_op_rope(x, head_dim, rope_dims, neox, pos0, inv_freq, isa=isa, threads=threads)
        check(x, ref, "rope")
        # dimensions past rope_dims pass through untouched
        np.testing.assert_array_equal(
            x.reshape(n, heads, head_dim)[:, :, rope_dims:],
            ref.reshape(n, heads, head_dim)[:, :, rope_dims:].astype(np.float32),
        )


# ---- the float16 cache -----------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
def test_to_f16(isa):
    """Round to nearest even, as NumPy does: normals over the whole range, ties, subnormals,
    overflow to infinity, signed zeros; 1001 values (8-wide vectors and a tail)."""
    special = [0.0, -0.0, 65504.0, 65519.99, 65520.0, -1e6, np.inf, -np.inf, 6e-8, 2.9e-8, 3e-8]
    ties = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 2048 + 1, 2048 + 3, -(1 + 2.0**-11)]
    normals = rng.standard_normal(600) * 10.0 ** rng.integers(-7, 5, 600)
    subnormals = rng.uniform(-6.1e-5, 6.1e-5, 200)
    x = np.concatenate([special, ties, normals, subnormals])
    x = np.concatenate([x, rng.standard_normal(1001 - len(x))]).astype(np.float32)
    out = np.zeros(x.size, np.uint16)
    core.cpu_op_to_f16(x, out, isa=isa)
    with np.errstate(over="ignore"):  # the values past 65520 are meant to overflow
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(out, want)
    nan = np.zeros(1, np.uint16)
    core.cpu_op_to_f16(np.array([np.nan], np.float32), nan, isa=isa)
    assert np.isnan(nan.view(np.float16)).all()


# ---- attention -------------------------------------------------------------------------------


def run_attention(q, kc, vc, pos0, window, scale, kv_f32, isa, threads):
    out = np.full_like(q, np.nan)
    core.cpu_op_attention(q, kc, vc, out, pos0, window, scale, kv_f32, isa=isa, threads=threads)
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("kv_f32", [False, True])
@pytest.mark.parametrize("n_heads,n_kv,hd,n_ctx,pos0,n,window", ATTENTION_CASES)
def test_attention(isa, threads, kv_f32, n_heads, n_kv, hd, n_ctx, pos0, n, window):
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    kc, vc = f16_exact((n_kv, n_ctx, hd)), f16_exact((n_kv, n_ctx, hd))
    out = run_attention(q, kc, vc, pos0, window, 0.0, kv_f32, isa, threads)  # 0: 1/sqrt(hd)
    ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, 1 / np.sqrt(hd))
    check(out, ref, "attention")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_f32", [False, True])
@pytest.mark.parametrize("pos0,n", [(150, 1), (100, 60)])
def test_attention_shifted_scores(isa, kv_f32, pos0, n):
    """Every score near 200: exp() overflows float32 unless the softmax subtracts the maximum
    first (decode's single pass and the block's running maximum alike)."""
    n_heads, n_kv, hd, n_ctx, scale = 4, 2, 64, 200, 0.125
    kc, vc = f16_exact((n_kv, n_ctx, hd)), f16_exact((n_kv, n_ctx, hd))
    kc[:, :, 0] = 8.0
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    q.reshape(n, n_heads, hd)[:, :, 0] = 200.0
    out = run_attention(q, kc, vc, pos0, 0, scale, kv_f32, isa, 1)
    check(out, attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, 0, scale), "attention_shifted")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kv_f32", [False, True])
@pytest.mark.parametrize("pos0,n,window", [(250, 2, 0), (200, 90, 0), (260, 40, 200), (300, 1, 0)])
def test_attention_rising_scores(isa, kv_f32, pos0, n, window):
    """Scores that grow with the key's position, by 3 every 128 keys: each chunk of the block
    attention raises its rows' running maximum, so what the earlier chunks summed must be
    rescaled, and still weighs a few percent."""
    n_heads, n_kv, hd, n_ctx, scale = 4, 1, 64, 320, 0.125
    kc, vc = f16_exact((n_kv, n_ctx, hd)), f16_exact((n_kv, n_ctx, hd))
    kc[:, :, 0] = np.arange(n_ctx) / 64  # float16 holds these exactly
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    q.reshape(n, n_heads, hd)[:, :, 0] = 12.0  # 12 * p / 64 * 0.125 = 3 p / 128
    out = run_attention(q, kc, vc, pos0, window, scale, kv_f32, isa, 1)
    ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale)
    check(out, ref, "attention")


# ---- element-wise ----------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("count", ELEMENTWISE_COUNTS)
def test_glu(isa, threads, gelu, count):
    g = (3 * rng.standard_normal(count)).astype(np.float32)
    g[: min(count, 4)] = [-100.0, 100.0, 0.0, -1e-30][: min(count, 4)]  # saturated and zero
    u = rng.standard_normal(count).astype(np.float32)
    ref = glu_ref(g, u, gelu)
    core.cpu_op_glu(g, u, gelu, isa=isa, threads=threads)
    check(g, ref, "glu")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("count", ELEMENTWISE_COUNTS)
def test_add(isa, count):
    x = rng.standard_normal(count).astype(np.float32)
    y = rng.standard_normal(count).astype(np.float32)
    want = x + y
    core.cpu_op_add(x, y, isa=isa)
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("count", ELEMENTWISE_COUNTS)
def test_softcap(isa, count):
    cap = 30.0
    x = (40 * rng.standard_normal(count)).astype(np.float32)  # from linear to saturated
    ref = cap * np.tanh(x.astype(np.float64) / cap)
    core.cpu_op_softcap(x, cap, isa=isa)
    check(x, ref, "softcap")


# ---- embed and matmul ------------------------------------------------------------------------


def weight_cols(qtype, float_cols, block_cols):
    if qtype in (Q.F32, Q.F16, Q.BF16):
        return float_cols
    return 256 if qtype.name.endswith("_K") else block_cols


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
def test_embed(isa, qtype):
    vocab, cols, scale = 11, weight_cols(qtype, 40, 64), 1.5
    raw, ref = encode(rng, rng.standard_normal((vocab, cols)), qtype)
    ids = np.array([3, 0, 10, 3, 7], np.int32)
    out = np.full((len(ids), cols), np.nan, np.float32)
    core.cpu_op_embed(int(qtype), raw.reshape(-1), cols, ids, scale, out, isa=isa)
    np.testing.assert_array_equal(out, (ref[ids] * scale).astype(np.float32))


def matmul_limit(qtype, n):
    """Decode (one row) feeds a quantized format's kernel activations quantized once per call;
    more rows go through float panels (cpu/panel_gemm.h), as do the float formats."""
    if n > 1 or qtype in (Q.F32, Q.F16, Q.BF16):
        return "matmul_float"
    return "matmul_i16" if qtype == Q.Q8_0 else "matmul_q8"


def run_matmul(qtypes, x, rows, isa, threads):
    """Three jobs over x: bias; plain; bias and accumulate. Returns (outs, references)."""
    n, cols = x.shape
    weights, outs, biases, refs = [], [], [], []
    for j, (qtype, r) in enumerate(zip(qtypes, rows, strict=True)):
        raw, w = encode(rng, rng.standard_normal((r, cols)), qtype)
        bias = rng.standard_normal(r).astype(np.float32) if j != 1 else np.zeros(0, np.float32)
        out = rng.standard_normal((n, r)).astype(np.float32) if j == 2 else np.full((n, r), np.nan)
        want = x.astype(np.float64) @ w.T + (bias if bias.size else 0)
        if j == 2:
            want = want + out
        weights.append(raw.reshape(-1))
        outs.append(out.astype(np.float32))
        biases.append(bias)
        refs.append(want)
    core.cpu_op_matmul(
        [int(t) for t in qtypes],
        x,
        weights,
        outs,
        biases,
        [False, False, True],
        isa=isa,
        threads=threads,
    )
    return outs, refs


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("qtype", FORMATS, ids=lambda t: t.name)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_matmul(isa, threads, qtype, n):
    """150 rows: several tasks on either path (a bias or residual read at the wrong offset
    shows); 8 and 37: a job smaller than one task, and a ragged last task."""
    cols = weight_cols(qtype, 40, 96)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    outs, refs = run_matmul([qtype] * 3, x, [150, 8, 37], isa, threads)
    for out, ref in zip(outs, refs, strict=True):
        check(out, ref, matmul_limit(qtype, n))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 5])
def test_matmul_mixed_formats(isa, n):
    """One call whose jobs read three activation encodings (a Q4_K_M file mixes formats)."""
    qtypes = [Q.Q4_K, Q.Q8_0, Q.Q6_K]
    x = rng.standard_normal((n, 256)).astype(np.float32)
    outs, refs = run_matmul(qtypes, x, [64, 40, 24], isa, 2)
    for qtype, out, ref in zip(qtypes, outs, refs, strict=True):
        check(out, ref, matmul_limit(qtype, n))
