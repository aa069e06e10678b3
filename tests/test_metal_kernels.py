"""metal/*.metal kernels, run in the CPU Metal simulator, against NumPy references."""

import numpy as np
import pytest

from metal_sim_helpers import args, ceil_div, core, kernel_shape, rmsnorm
from op_cases import nmse
from test_metal_ops import (  # the formats and launch shapes of the backend's kernels
    FLOAT_FORMATS,
    FORMATS,
    GLU_ROWS,
    K_QUANTS,
    MATVEC_ROWS,
    MATVEC_THREADS,
    MATVEC_TOKENS,
    X_VEC4,
    encode,
    matvec_constants,
)

rng = np.random.default_rng(1234)


@pytest.mark.parametrize(
    "n,d,tg", [(1, 896, 256), (3, 64, 32), (2, 1000, 128), (4, 37, 64), (1, 4096, 1024), (2, 5, 96)]
)
@pytest.mark.parametrize("wtype", [np.float32, np.float16])
def test_rmsnorm(n, d, tg, wtype):
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(d)).astype(wtype)
    eps = 1e-6
    ref = (
        x
        / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True) + eps)
        * w.astype(np.float64)
    )
    got = rmsnorm(x, w, eps, tg)
    assert nmse(got, ref) < 1e-6


# ---- decode matvecs (metal/matvec.h): the lane layouts of formats.h and several tokens at once


def _linear_args(rows, cols, n, flags, row_bytes, vec4):
    flags |= X_VEC4 if vec4 and cols % 4 == 0 else 0
    return args("iiiiQQQ", rows, cols, n, flags, row_bytes, cols, rows)


def _matvec(kind, fmt, ws, x, norm=None, vec4=True, bias=None, flags=0, out=None):
    """Runs matvec / matvec_jobs / matvec_glu over all rows of x in one dispatch, as the backend
    launches them; returns the outputs (one per matrix, matvec_glu's one)."""
    n, cols = x.shape
    nw, eps = norm if norm is not None else (x, None)
    consts = matvec_constants(norm_eps=eps)
    tok_groups = ceil_div(n, MATVEC_TOKENS)
    if kind == "matvec":
        (raw,) = ws
        rows = raw.shape[0]
        o = out if out is not None else np.full((n, rows), np.nan, np.float32)
        a = _linear_args(rows, cols, n, flags, raw.shape[1], vec4)
        b = bias if bias is not None else o
        core.sim_dispatch(
            f"matvec_{fmt}",
            [a, raw, x, o, b, nw],
            [ceil_div(rows, MATVEC_ROWS), tok_groups],
            [MATVEC_THREADS],
            constants=consts,
        )
        return [o]
    if kind == "glu":
        g_raw, u_raw = ws
        rows = g_raw.shape[0]
        o = np.full((n, rows), np.nan, np.float32)
        a = _linear_args(rows, cols, n, flags, g_raw.shape[1], vec4)
        core.sim_dispatch(
            f"matvec_glu_{fmt}",
            [a, g_raw, u_raw, x, o, nw],
            [ceil_div(rows, GLU_ROWS), tok_groups],
            [MATVEC_THREADS],
            constants=consts,
        )
        return [o]
    rows = [w.shape[0] for w in ws]
    outs = [np.full((n, r), np.nan, np.float32) for r in rows]
    groups = [ceil_div(r, MATVEC_ROWS) for r in rows]
    first = np.concatenate([[0], np.cumsum(groups)]).tolist()
    first += [first[-1]] * (4 - len(first))
    pad = lambda v, fill: v + [fill] * (3 - len(v))  # noqa: E731
    v4 = X_VEC4 if vec4 and cols % 4 == 0 else 0
    a = args(
        "ii3i3i4iiiQ",
        cols,
        len(ws),
        *pad(rows, 0),
        *pad([v4 | flags] * len(ws), 0),
        *first,
        n,
        0,
        ws[0].shape[1],
    )
    bufs = [a, *pad(list(ws), ws[0]), x, *pad(outs, outs[0]), *pad(outs, outs[0]), nw]
    core.sim_dispatch(
        f"matvec_jobs_{fmt}", bufs, [sum(groups), tok_groups], [MATVEC_THREADS], constants=consts
    )
    return outs


def _cols_for(fmt):
    """Widths that leave lanes of the last step idle: 640 (Gemma 3 270M) is 20 blocks of 32
    for 8 per step; 1280 is 5 K-quant blocks for 4 per step; the float ones leave tails."""
    if fmt in K_QUANTS:
        return [256, 1280]
    if fmt in FLOAT_FORMATS:
        return [640, 300, 37]  # 300: f16/bf16 blocks of 8 and a tail of 4; 37: no aligned rows
    return [640, 32, 288]


def _ref_act(gd):
    with np.errstate(over="ignore"):
        return gd / (1 + np.exp(-gd))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", ["matvec", "jobs", "glu"])
def test_matvec_tokens_match_each_token_alone(fmt, kind):
    """T tokens in one dispatch give, bit for bit, what each gives alone (the engine's batched
    decode is exact only so), for T up to MATVEC_TOKENS and past it (a second grid row), with
    and without the fused norm and with x read as float4 or not; and match NumPy."""
    for cols in _cols_for(fmt):
        rows = {"matvec": [37], "jobs": [21, 6, 13], "glu": [13, 13]}[kind]
        enc = [encode(rng.standard_normal((r, cols)), fmt) for r in rows]
        ws = [e[0] for e in enc]
        for norm in (False, True):
            n = MATVEC_TOKENS + 3
            x = (2 * rng.standard_normal((n, cols))).astype(np.float32)
            nw = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
            h = x.astype(np.float64)
            if norm:
                h = h / np.sqrt(np.mean(h**2, axis=1, keepdims=True) + 1e-6) * nw
            nm = (nw, 1e-6) if norm else None
            for vec4 in (True, False):
                got = _matvec(kind, fmt, ws, x, nm, vec4)
                refs = [h @ e[1].T for e in enc]
                if kind == "glu":
                    refs = [_ref_act(refs[0]) * refs[1]]
                for g, r in zip(got, refs, strict=True):
                    assert nmse(g, r) < (1e-6 if kind == "glu" else 1e-10), (cols, norm, vec4)
                # every token alone, the ones of the second token group included
                for t in range(n) if vec4 else (0, n - 1):
                    alone = _matvec(kind, fmt, ws, x[t : t + 1].copy(), nm, vec4)
                    for g, a in zip(got, alone, strict=True):
                        np.testing.assert_array_equal(
                            g[t], a[0], err_msg=f"{cols} {norm} {vec4} {t}"
                        )
                # every count of tokens up to a group: its rows as in the full dispatch
                for t_count in range(2, MATVEC_TOKENS + 1) if vec4 else ():
                    part = _matvec(kind, fmt, ws, x[:t_count].copy(), nm, vec4)
                    for p, g in zip(part, got, strict=True):
                        np.testing.assert_array_equal(
                            p, g[:t_count], err_msg=f"{cols} {norm} {t_count}"
                        )


# Blocks per simdgroup step (32 lanes / lanes per block, formats.h) and elements per block.
_STEP = {"f32": (32, 4), "f16": (32, 8), "bf16": (32, 8)}


@pytest.mark.parametrize("fmt", ["q8_0", "q5_1", "q4_k", "q6_k", "f16", "f32"])
@pytest.mark.parametrize("kind", ["matvec", "glu"])
def test_matvec_partial_last_step(fmt, kind):
    """Rows whose blocks leave the last step partial (R = blocks % step from 1 to step - 1):
    that step splits the lane groups into sets taking different rows (matvec.h, matvec_dots;
    G = 4, 2 and 1 sets all occur). Every row's sum must still take every block once: checked
    against NumPy, with and without the norm, and a token alone against the dispatch."""
    step, block = _STEP.get(fmt, (4, 256) if fmt in K_QUANTS else (8, 32))
    tails = range(1, step) if step <= 8 else (1, 3, 5, 8, 13, 16, 17, 31)
    for r in tails:
        cols = (step + r) * block
        nrows = {"matvec": [21], "glu": [11, 11]}[kind]
        enc = [encode(rng.standard_normal((n, cols)), fmt) for n in nrows]
        x = rng.standard_normal((3, cols)).astype(np.float32)
        nw = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
        for norm in (False, True):
            h = x.astype(np.float64)
            if norm:
                h = h / np.sqrt(np.mean(h**2, axis=1, keepdims=True) + 1e-6) * nw
            nm = (nw, 1e-6) if norm else None
            (got,) = _matvec(kind, fmt, [e[0] for e in enc], x, nm)
            refs = [h @ e[1].T for e in enc]
            ref = _ref_act(refs[0]) * refs[1] if kind == "glu" else refs[0]
            assert nmse(got, ref) < (1e-6 if kind == "glu" else 1e-10), (cols, norm)
            (alone,) = _matvec(kind, fmt, [e[0] for e in enc], x[2:].copy(), nm)
            np.testing.assert_array_equal(got[2], alone[0], err_msg=f"{cols} {norm}")


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q5_1", "q4_k", "q6_k", "f16"])
def test_matvec_misaligned_x(fmt):
    """x rows that do not start 16-byte aligned (no LINEAR_X_VEC4): every value is read one at
    a time into the same registers, giving what the float4 reads give, bit for bit."""
    cols = 256 if fmt in K_QUANTS else 96
    raw, ref = encode(rng.standard_normal((19, cols)), fmt)
    buf = rng.standard_normal(3 * cols + 1).astype(np.float32)
    x_off = buf[1:].reshape(3, cols)  # 4 bytes past an aligned start
    assert x_off.ctypes.data % 16 != 0
    x_al = x_off.copy()
    (got,) = _matvec("matvec", fmt, [raw], x_off, vec4=False)
    (want,) = _matvec("matvec", fmt, [raw], x_al, vec4=True)
    np.testing.assert_array_equal(got, want)
    assert nmse(got, x_al.astype(np.float64) @ ref.T) < 1e-10


@pytest.mark.parametrize("fmt", ["q8_0", "q4_k", "bf16"])
def test_matvec_tokens_epilogue(fmt):
    """Bias and residual for several tokens: each token's row of out gets its own residual."""
    cols, rows, n = 256, 23, MATVEC_TOKENS + 1
    raw, ref = encode(rng.standard_normal((rows, cols)), fmt)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    resid = rng.standard_normal((n, rows)).astype(np.float32)
    out = resid.copy()
    _matvec("matvec", fmt, [raw], x, bias=bias, flags=3, out=out)
    assert nmse(out, x.astype(np.float64) @ ref.T + bias + resid) < 1e-10


# ---- prefill gemm (metal/gemm.h): 32 tokens x 64 rows per threadgroup, staged K steps of 32

GEMM_ROWS, GEMM_TOKENS, GEMM_THREADS = (
    kernel_shape("GEMM_ROWS"),
    kernel_shape("GEMM_TOKENS"),
    kernel_shape("GEMM_THREADS"),
)


def _gemm(fmt, raw, x, flags=0, bias=None, out=None, vec4=True):
    """gemm_<fmt> over all rows of x as the backend launches it; returns out."""
    rows, row_bytes = raw.shape
    n, cols = x.shape
    o = out if out is not None else np.full((n, rows), np.nan, np.float32)
    a = _linear_args(rows, cols, n, flags, row_bytes, vec4)
    grid = [ceil_div(rows, GEMM_ROWS), ceil_div(n, GEMM_TOKENS)]
    core.sim_dispatch(
        f"gemm_{fmt}", [a, raw, x, o, bias if bias is not None else o], grid, [GEMM_THREADS]
    )
    return o


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gemm_tokens_match_each_token_alone(fmt):
    """A token's row of out is, bit for bit, what it gets alone or beside any other tokens
    (batched prompt chunks go through the gemm): for ragged rows (70: a second, partial row
    tile), tokens (37: a second, partial token tile) and, for the float formats, K (300: a last
    step of 12; 37: rows too unaligned for vector loads). And it matches NumPy: the staged
    weights are exact (float tiles; F16's half tile holds F16 exactly)."""
    rows, n = GEMM_ROWS + 6, GEMM_TOKENS + 5
    for cols in _cols_for(fmt):
        raw, ref = encode(rng.standard_normal((rows, cols)), fmt)
        x = (2 * rng.standard_normal((n, cols))).astype(np.float32)
        got = _gemm(fmt, raw, x)
        assert nmse(got, x.astype(np.float64) @ ref.T) < 1e-10, cols
        for t in (0, 1, GEMM_TOKENS - 1, GEMM_TOKENS, n - 1):
            alone = _gemm(fmt, raw, x[t : t + 1].copy())
            np.testing.assert_array_equal(got[t], alone[0], err_msg=f"{cols} {t}")
        perm = rng.permutation(n)
        shuffled = _gemm(fmt, raw, x[perm].copy())
        np.testing.assert_array_equal(shuffled, got[perm], err_msg=str(cols))
        if cols % 4 == 0:  # x read element by element: the same values staged
            np.testing.assert_array_equal(_gemm(fmt, raw, x, vec4=False), got, err_msg=str(cols))


@pytest.mark.parametrize("fmt", ["f32", "f16", "q4_1", "q6_k"])
def test_gemm_epilogue_tiles(fmt):
    """Bias and accumulate over several row and token tiles, ragged at both ends: each output
    element gets its own bias and residual, and nothing outside the matrix is written."""
    cols = 256 if fmt in K_QUANTS else 96
    rows, n = 2 * GEMM_ROWS + 3, GEMM_TOKENS + 9
    raw, ref = encode(rng.standard_normal((rows, cols)), fmt)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    prod = x.astype(np.float64) @ ref.T
    for flags in (1, 2, 3):
        resid = rng.standard_normal((n, rows)).astype(np.float32)
        # out inside a larger buffer: the rows around it must stay untouched
        buf = np.full((n + 2) * rows, 7.0, np.float32)
        out = buf[rows : rows + n * rows].reshape(n, rows)
        out[...] = resid
        _gemm(fmt, raw, x, flags=flags, bias=bias, out=out)
        want = prod + (bias if flags & 1 else 0) + (resid if flags & 2 else 0)
        assert nmse(out, want) < 1e-10, flags
        assert (buf[:rows] == 7.0).all() and (buf[rows + n * rows :] == 7.0).all()


@pytest.mark.skipif(not core.sim_counting_available(), reason="built without traffic counting")
@pytest.mark.parametrize("fmt", ["f32", "f16", "q8_0", "q4_k"])
def test_gemm_traffic(fmt):
    """The staging layout as counted by the simulator: no threadgroup bank conflicts (padded
    row strides; W stored as it lies in the row), one barrier per K step of 32 (double-buffered
    stages) plus one before the first and one before the epilogue, and x read in whole
    128-byte lines."""
    cols = 512
    rows, n = 2 * GEMM_ROWS, GEMM_TOKENS
    raw, _ = encode(rng.standard_normal((rows, cols)), fmt)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    was = core.sim_counting()
    core.sim_set_counting(True)
    try:
        core.sim_reset_traffic()
        _gemm(fmt, raw, x)
        t = core.sim_traffic()
    finally:
        core.sim_set_counting(was)
        core.sim_reset_traffic()
    groups = ceil_div(rows, GEMM_ROWS) * ceil_div(n, GEMM_TOKENS)
    assert t["bank_conflicts"] == 0
    assert t["barriers"] == groups * (cols // 32 + 2)
    assert t["tg_instructions"] > 0
