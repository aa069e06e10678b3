"""The Metal backend's kernels (metal/*.metal), run in the CPU simulator, against NumPy.

Launch parameters and argument structs are those of cpp/metal/metal_backend.cpp. Shapes are
chosen ragged: rows not a multiple of the rows per threadgroup, tokens not a multiple of the
gemm tile, float rows not a multiple of the 16-byte block, odd head sizes. Limits: NMSE 5e-4 for
matmul and attention (f32 accumulation: far tighter in practice, checked too), 1e-6 for norms
and element-wise ops, exact for copies.
"""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from metal_sim_helpers import args, ceil_div, core, nmse

rng = np.random.default_rng(4321)

FORMATS = {  # kernel suffix -> GGML type
    "f32": Q.F32,
    "f16": Q.F16,
    "bf16": Q.BF16,
    "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0,
    "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0,
    "q5_1": Q.Q5_1,
    "q2_k": Q.Q2_K,
    "q3_k": Q.Q3_K,
    "q4_k": Q.Q4_K,
    "q5_k": Q.Q5_K,
    "q6_k": Q.Q6_K,
}
FLOAT_FORMATS = ("f32", "f16", "bf16")
K_QUANTS = {  # block bytes, offsets of the half scale fields
    "q2_k": (84, (80, 82)),
    "q3_k": (110, (108,)),
    "q4_k": (144, (0, 2)),
    "q5_k": (176, (0, 2)),
    "q6_k": (210, (208,)),
}


def random_k_blocks(rows, cols, fmt):
    """gguf-py cannot quantize K-quants: random blocks with sane half scales stand in."""
    nbytes, half_at = K_QUANTS[fmt]
    raw = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)
    for off in half_at:
        scale = (rng.uniform(0.5, 1.5, raw.shape[:2]) / 64).astype(np.float16)
        raw[:, :, off : off + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
    return raw.reshape(rows, -1)


def encode(values, fmt):
    """(raw bytes as [rows, row_bytes] uint8, the values the kernel must see as float64)."""
    qtype = FORMATS[fmt]
    if fmt in K_QUANTS:
        raw = random_k_blocks(values.shape[0], values.shape[1], fmt)
    elif qtype == Q.F32:
        raw = values.astype(np.float32)
    else:
        raw = gguf.quants.quantize(values.astype(np.float32), qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(values.shape[0], -1)
    ref = gguf.quants.dequantize(raw, qtype) if qtype != Q.F32 else values.astype(np.float32)
    return raw, ref.astype(np.float64)


def linear_args(rows, cols, n, flags, row_bytes):
    return args("iiiiQQQ", rows, cols, n, flags, row_bytes, cols, rows)


def run_linear(kind, fmt, w_raw, x, out, bias, flags):
    rows, row_bytes = w_raw.shape
    n, cols = x.shape
    a = linear_args(rows, cols, n, flags, row_bytes)
    bufs = [a, w_raw, x, out, bias if bias is not None else out]
    if kind == "matvec":
        bufs.append(x)  # norm weight, unread without the fused norm
        core.sim_dispatch(
            f"matvec_{fmt}", bufs, [ceil_div(rows, 8), n], [128], constants=matvec_constants()
        )
    else:
        core.sim_dispatch(f"gemm_{fmt}", bufs, [ceil_div(rows, 32), ceil_div(n, 32)], [128])


def matvec_constants(gelu=False, norm_eps=None):
    """Function constants of the matvec family (metal/matvec.h): every one is given."""
    return {1: gelu, 2: norm_eps is not None, 3: float(norm_eps or 0.0)}


def shapes_for(fmt, float_shapes, block_shapes):
    if fmt in K_QUANTS:
        return [(7, 256), (13, 512), (3, 768)]
    return float_shapes if fmt in FLOAT_FORMATS else block_shapes


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", ["matvec", "gemm"])
def test_linear(kind, fmt):
    shapes = shapes_for(
        fmt, [(7, 64), (13, 40), (5, 37), (33, 96), (1, 8)], [(7, 64), (13, 96), (37, 256), (1, 32)]
    )
    tokens = (1, 2) if kind == "matvec" else (2, 17, 33)
    for rows, cols in shapes:
        w_raw, w_ref = encode(rng.standard_normal((rows, cols)), fmt)
        for n in tokens:
            x = rng.standard_normal((n, cols)).astype(np.float32)
            ref = x.astype(np.float64) @ w_ref.T
            out = np.full((n, rows), np.nan, np.float32)
            run_linear(kind, fmt, w_raw, x, out, None, 0)
            assert nmse(out, ref) < 5e-4, (rows, cols, n)
            assert nmse(out, ref) < 1e-10, (rows, cols, n)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("n_jobs", [2, 3])
def test_matvec_jobs(fmt, n_jobs):
    cols = 256 if fmt in K_QUANTS else 96
    rows = [37, 8, 13][:n_jobs]
    ws = [encode(rng.standard_normal((r, cols)), fmt) for r in rows]
    x = rng.standard_normal((1, cols)).astype(np.float32)
    outs = [rng.standard_normal((1, r)).astype(np.float32) for r in rows]
    biases = [rng.standard_normal(r).astype(np.float32) for r in rows]
    flags = [1, 0, 3][:n_jobs]  # bias; plain; bias + accumulate
    refs = []
    for (_raw, ref), out, b, f in zip(ws, outs, biases, flags, strict=True):
        want = x.astype(np.float64) @ ref.T
        if f & 1:
            want = want + b
        if f & 2:
            want = want + out
        refs.append(want)
    groups = [ceil_div(r, 8) for r in rows]
    first = np.concatenate([[0], np.cumsum(groups)]).tolist()
    first += [first[-1]] * (4 - len(first))
    pad = lambda v, fill: v + [fill] * (3 - len(v))  # noqa: E731
    a = args("ii3i3i4iQ", cols, n_jobs, *pad(rows, 0), *pad(flags, 0), *first, ws[0][0].shape[1])
    bufs = [
        a,
        *pad([w[0] for w in ws], ws[0][0]),
        x,
        *pad(outs, outs[0]),
        *pad(biases, biases[0]),
        x,
    ]
    core.sim_dispatch(
        f"matvec_jobs_{fmt}", bufs, [sum(groups)], [128], constants=matvec_constants()
    )
    for out, want in zip(outs, refs, strict=True):
        assert nmse(out, want) < 1e-10


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_matvec_family_with_fused_rmsnorm(fmt):
    """MATVEC_NORM: x is RMSNorm's input; the kernels multiply rmsnorm(x) * norm_w."""
    eps = 1e-6
    cols = 256 if fmt in K_QUANTS else (40 if fmt in FLOAT_FORMATS else 96)
    x = (3 * rng.standard_normal((1, cols))).astype(np.float32)
    nw = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    xd = x.astype(np.float64)
    h = xd / np.sqrt(np.mean(xd**2) + eps) * nw
    c = matvec_constants(norm_eps=eps)
    (g_raw, g_ref), (u_raw, u_ref), (v_raw, v_ref) = (
        encode(rng.standard_normal((r, cols)), fmt) for r in (21, 21, 9)
    )

    out = np.full((1, 21), np.nan, np.float32)
    core.sim_dispatch(
        f"matvec_{fmt}",
        [linear_args(21, cols, 1, 0, g_raw.shape[1]), g_raw, x, out, out, nw],
        [ceil_div(21, 8), 1],
        [128],
        constants=c,
    )
    assert nmse(out, h @ g_ref.T) < 1e-10

    outs = [np.full((1, 21), np.nan, np.float32), np.full((1, 9), np.nan, np.float32)]
    a = args("ii3i3i4iQ", cols, 2, 21, 9, 0, 0, 0, 0, 0, 3, 5, 5, g_raw.shape[1])
    core.sim_dispatch(
        f"matvec_jobs_{fmt}",
        [a, g_raw, v_raw, g_raw, x, outs[0], outs[1], outs[0], outs[0], outs[0], outs[0], nw],
        [5],
        [128],
        constants=c,
    )
    assert nmse(outs[0], h @ g_ref.T) < 1e-10
    assert nmse(outs[1], h @ v_ref.T) < 1e-10

    out = np.full((1, 21), np.nan, np.float32)
    core.sim_dispatch(
        f"matvec_glu_{fmt}",
        [linear_args(21, cols, 1, 0, g_raw.shape[1]), g_raw, u_raw, x, out, nw],
        [ceil_div(21, 8), 1],
        [128],
        constants=c,
    )
    gd, ud = h @ g_ref.T, h @ u_ref.T
    with np.errstate(over="ignore"):
        assert nmse(out, gd / (1 + np.exp(-gd)) * ud) < 1e-6


@pytest.mark.parametrize("kind", ["matvec", "gemm"])
@pytest.mark.parametrize("fmt", ["f16", "q8_0", "q6_k"])
def test_linear_epilogue(kind, fmt):
    rows, cols, n = 19, 256, (1 if kind == "matvec" else 5)
    w_raw, w_ref = encode(rng.standard_normal((rows, cols)), fmt)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    resid = rng.standard_normal((n, rows)).astype(np.float32)
    prod = x.astype(np.float64) @ w_ref.T
    for flags, ref in ((1, prod + bias), (2, prod + resid), (3, prod + bias + resid)):
        out = resid.copy()
        run_linear(kind, fmt, w_raw, x, out, bias, flags)
        assert nmse(out, ref) < 1e-10, flags


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_embed(fmt):
    vocab, cols = 11, (40 if fmt in FLOAT_FORMATS else 256 if fmt in K_QUANTS else 64)
    raw, ref = encode(rng.standard_normal((vocab, cols)), fmt)
    ids = np.array([3, 0, 10, 3, 7], np.int32)
    out = np.full((len(ids), cols), np.nan, np.float32)
    scale = 1.5
    core.sim_dispatch(
        f"embed_{fmt}", [args("ifQ", cols, scale, raw.shape[1]), raw, ids, out], [len(ids)], [64]
    )
    np.testing.assert_array_equal(out, (ref[ids] * scale).astype(np.float32))


def rope_ref(x, n_heads, head_dim, rope_dims, pos0, inv_freq, neox):
    x = x.reshape(x.shape[0], n_heads, head_dim).astype(np.float64).copy()
    half = rope_dims // 2
    for t in range(x.shape[0]):
        theta = np.float32(pos0 + t) * inv_freq.astype(np.float32)
        c, s = np.cos(theta.astype(np.float64)), np.sin(theta.astype(np.float64))
        ia = np.arange(half) if neox else 2 * np.arange(half)
        ib = ia + half if neox else ia + 1
        a, b = x[t][:, ia].copy(), x[t][:, ib].copy()
        x[t][:, ia] = a * c - b * s
        x[t][:, ib] = a * s + b * c
    return x.reshape(x.shape[0], -1)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize(
    "n,n_heads,head_dim,rope_dims,pos0", [(1, 6, 16, 16, 0), (3, 2, 64, 32, 17), (5, 5, 12, 12, 40)]
)
def test_rope(neox, n, n_heads, head_dim, rope_dims, pos0):
    x = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    inv_freq = (10000.0 ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)
    ref = rope_ref(x, n_heads, head_dim, rope_dims, pos0, inv_freq, neox)
    core.sim_dispatch(
        "rope",
        [args("iiii", n_heads, head_dim, rope_dims, pos0), x, inv_freq],
        [n, n_heads],
        [ceil_div(rope_dims // 2, 32) * 32],
        constants={0: neox},
    )
    assert nmse(x, ref) < 1e-6


@pytest.mark.parametrize("kv", [np.float16, np.float32])
def test_store_kv(kv):
    n_kv, hd, n_ctx, pos0, n = 3, 12, 20, 5, 4
    k = rng.standard_normal((n, n_kv * hd)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * hd)).astype(np.float32)
    kc = np.zeros((n_kv, n_ctx, hd), kv)
    vc = np.zeros((n_kv, n_ctx, hd), kv)
    name = "store_kv_f16" if kv == np.float16 else "store_kv_f32"
    core.sim_dispatch(name, [args("iiii", n_kv, hd, n_ctx, pos0), k, v, kc, vc], [n, n_kv], [32])
    want_k = np.zeros_like(kc)
    want_k[:, pos0 : pos0 + n] = k.reshape(n, n_kv, hd).transpose(1, 0, 2).astype(kv)
    want_v = np.zeros_like(vc)
    want_v[:, pos0 : pos0 + n] = v.reshape(n, n_kv, hd).transpose(1, 0, 2).astype(kv)
    np.testing.assert_array_equal(kc, want_k)
    np.testing.assert_array_equal(vc, want_v)


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize(
    "n,n_heads,n_kv,head_dim,rope_dims,pos0",
    [(1, 6, 2, 16, 16, 7), (3, 5, 5, 12, 8, 0), (2, 4, 1, 256, 128, 30)],
)
def test_rope_store_kv(kv, neox, n, n_heads, n_kv, head_dim, rope_dims, pos0):
    n_ctx = 40
    q = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    k = rng.standard_normal((n, n_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * head_dim)).astype(np.float32)
    inv_freq = (10000.0 ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)
    q_ref = rope_ref(q, n_heads, head_dim, rope_dims, pos0, inv_freq, neox)
    k_ref = rope_ref(k, n_kv, head_dim, rope_dims, pos0, inv_freq, neox)
    kc = np.zeros((n_kv, n_ctx, head_dim), kv)
    vc = np.zeros((n_kv, n_ctx, head_dim), kv)
    name = "rope_store_kv_f16" if kv == np.float16 else "rope_store_kv_f32"
    a = args("iiiiiiif", n_heads, n_kv, head_dim, rope_dims, n_ctx, pos0, 0, 0.0)
    core.sim_dispatch(
        name,
        [a, q, k, v, kc, vc, inv_freq, inv_freq, inv_freq],
        [n, n_heads + n_kv],
        [ceil_div(head_dim, 32) * 32],
        constants={0: neox},
    )
    assert nmse(q, q_ref) < 1e-6
    assert nmse(k, k_ref) < 1e-6
    np.testing.assert_array_equal(
        kc[:, pos0 : pos0 + n], k.reshape(n, n_kv, head_dim).transpose(1, 0, 2).astype(kv)
    )
    np.testing.assert_array_equal(
        vc[:, pos0 : pos0 + n], v.reshape(n, n_kv, head_dim).transpose(1, 0, 2).astype(kv)
    )
    assert not kc[:, :pos0].any() and not kc[:, pos0 + n :].any()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("gelu", [False, True])
def test_matvec_glu(fmt, gelu):
    for rows, cols in shapes_for(fmt, [(13, 40), (33, 96)], [(13, 64), (9, 96)]):
        g_raw, g_ref = encode(rng.standard_normal((rows, cols)), fmt)
        u_raw, u_ref = encode(rng.standard_normal((rows, cols)), fmt)
        x = rng.standard_normal((1, cols)).astype(np.float32)
        gd, ud = x.astype(np.float64) @ g_ref.T, x.astype(np.float64) @ u_ref.T
        # random K-quant blocks give large sums; exp(-g) -> inf is fine
        with np.errstate(over="ignore"):
            act = (
                0.5 * gd * (1 + np.tanh(np.sqrt(2 / np.pi) * (gd + 0.044715 * gd**3)))
                if gelu
                else gd / (1 + np.exp(-gd))
            )
        out = np.full((1, rows), np.nan, np.float32)
        a = linear_args(rows, cols, 1, 0, g_raw.shape[1])
        core.sim_dispatch(
            f"matvec_glu_{fmt}",
            [a, g_raw, u_raw, x, out, x],
            [ceil_div(rows, 8), 1],
            [128],
            constants=matvec_constants(gelu),
        )
        assert nmse(out, act * ud) < 1e-6, (rows, cols)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize(
    "n,n_heads,n_kv,head_dim,rope_dims", [(2, 6, 2, 16, 16), (1, 4, 1, 256, 256), (3, 2, 2, 40, 20)]
)
def test_rope_store_kv_with_qk_norm(neox, n, n_heads, n_kv, head_dim, rope_dims):
    n_ctx, pos0, eps = 16, 3, 1e-6
    q = (2 * rng.standard_normal((n, n_heads * head_dim))).astype(np.float32)
    k = (2 * rng.standard_normal((n, n_kv * head_dim))).astype(np.float32)
    v = rng.standard_normal((n, n_kv * head_dim)).astype(np.float32)
    qw = (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32)
    kw = (1 + 0.1 * rng.standard_normal(head_dim)).astype(np.float32)
    inv_freq = (10000.0 ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)

    def norm(x, heads, w):
        x = x.reshape(n, heads, head_dim).astype(np.float64)
        return (x / np.sqrt(np.mean(x**2, axis=2, keepdims=True) + eps) * w).reshape(n, -1)

    q_ref = rope_ref(norm(q, n_heads, qw), n_heads, head_dim, rope_dims, pos0, inv_freq, neox)
    k_ref = rope_ref(norm(k, n_kv, kw), n_kv, head_dim, rope_dims, pos0, inv_freq, neox)
    kc = np.zeros((n_kv, n_ctx, head_dim), np.float32)
    vc = np.zeros((n_kv, n_ctx, head_dim), np.float32)
    a = args("iiiiiiif", n_heads, n_kv, head_dim, rope_dims, n_ctx, pos0, 1, eps)
    core.sim_dispatch(
        "rope_store_kv_f32",
        [a, q, k, v, kc, vc, inv_freq, qw, kw],
        [n, n_heads + n_kv],
        [ceil_div(head_dim, 32) * 32],
        constants={0: neox},
    )
    assert nmse(q, q_ref) < 1e-6
    assert nmse(k, k_ref) < 1e-6
    np.testing.assert_array_equal(
        kc[:, pos0 : pos0 + n], k.reshape(n, n_kv, head_dim).transpose(1, 0, 2)
    )


def test_rmsnorm_add():
    n, d, eps = 3, 640, 1e-6
    y = rng.standard_normal((n, d)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    yd = y.astype(np.float64)
    ref = x + yd / np.sqrt(np.mean(yd**2, axis=1, keepdims=True) + eps) * w
    core.sim_dispatch("rmsnorm_add_f32", [args("ifQQ", d, eps, d, d), y, w, x], [n], [160])
    assert nmse(x, ref) < 1e-12


def attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale):
    n = q.shape[0]
    out = np.zeros((n, n_heads, hd))
    q = q.reshape(n, n_heads, hd).astype(np.float64)
    for t in range(n):
        pos = pos0 + t
        start = max(0, pos - window + 1) if window > 0 else 0
        for h in range(n_heads):
            g = h // (n_heads // n_kv)
            k = kc[g, start : pos + 1].astype(np.float64)
            v = vc[g, start : pos + 1].astype(np.float64)
            s = k @ q[t, h] * scale
            p = np.exp(s - s.max())
            out[t, h] = p @ v / p.sum()
    return out.reshape(n, -1)


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize(
    "n_heads,n_kv,hd,n_ctx,pos0,n,window",
    [
        (6, 2, 16, 40, 22, 1, 0),
        (6, 1, 12, 40, 0, 1, 0),
        (4, 4, 64, 50, 10, 7, 0),
        (8, 2, 128, 64, 30, 3, 9),
        (2, 1, 256, 16, 2, 3, 0),
        (6, 2, 16, 40, 3, 30, 5),
    ],
)
def test_attention(kv, n_heads, n_kv, hd, n_ctx, pos0, n, window):
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    kc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    vc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    scale = 1.0 / np.sqrt(hd)
    out = np.full((n, n_heads * hd), np.nan, np.float32)
    nsg = 4
    name = "attention_f16" if kv == np.float16 else "attention_f32"
    a = args("iiiiiifi", n_heads, n_kv, hd, n_ctx, pos0, window, scale, 0)
    core.sim_dispatch(
        name,
        [a, q, kc, vc, out],
        [n_heads, n],
        [32 * nsg],
        tg_mem=[ceil_div((2 + hd) * nsg * 4, 16) * 16],
    )
    ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale)
    assert nmse(out, ref) < 5e-4
    assert nmse(out, ref) < 1e-10


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize(
    "n_heads,n_kv,hd,pos0,window,split_len",
    [
        (6, 2, 16, 300, 0, 128),
        (4, 1, 64, 500, 200, 64),
        (2, 2, 12, 257, 0, 128),
        (8, 2, 128, 130, 0, 32),
    ],
)
def test_attention_split_and_merge(kv, n_heads, n_kv, hd, pos0, window, split_len):
    n_ctx = pos0 + 5
    q = rng.standard_normal((1, n_heads * hd)).astype(np.float32)
    kc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    vc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    scale = 1.0 / np.sqrt(hd)
    start = max(0, pos0 - window + 1) if window > 0 else 0
    splits = ceil_div(pos0 - start + 1, split_len)
    partial = np.full(n_heads * splits * (hd + 2), np.nan, np.float32)
    out = np.full((1, n_heads * hd), np.nan, np.float32)
    a = args("iiiiiifi", n_heads, n_kv, hd, n_ctx, pos0, window, scale, split_len)
    name = "attention_split_f16" if kv == np.float16 else "attention_split_f32"
    core.sim_dispatch(
        name,
        [a, q, kc, vc, partial],
        [n_heads, splits],
        [128],
        tg_mem=[ceil_div((2 + hd) * 4 * 4, 16) * 16],
    )
    core.sim_dispatch("attention_merge", [a, partial, out], [n_heads], [ceil_div(hd, 32) * 32])
    ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale)
    assert nmse(out, ref) < 1e-10


def elementwise(name, bufs, count, cap=0.0, constants=None):
    core.sim_dispatch(
        name,
        [args("If", count, cap), *bufs],
        [ceil_div(count, 256)],
        [256],
        constants=constants or {},
    )


@pytest.mark.parametrize("count", [1, 255, 1000])
def test_glu_add_softcap(count):
    g = (3 * rng.standard_normal(count)).astype(np.float32)
    u = rng.standard_normal(count).astype(np.float32)
    gd, ud = g.astype(np.float64), u.astype(np.float64)

    out = g.copy()
    elementwise("glu", [out, u], count, constants={0: False})
    assert nmse(out, gd / (1 + np.exp(-gd)) * ud) < 1e-6

    out = g.copy()
    elementwise("glu", [out, u], count, constants={0: True})
    gelu = 0.5 * gd * (1 + np.tanh(np.sqrt(2 / np.pi) * (gd + 0.044715 * gd**3)))
    assert nmse(out, gelu * ud) < 1e-6

    out = g.copy()
    elementwise("add", [out, u], count)
    np.testing.assert_array_equal(out, g + u)

    out = g.copy()
    elementwise("softcap", [out], count, cap=2.5)
    assert nmse(out, 2.5 * np.tanh(gd / 2.5)) < 1e-6
