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

from metal_attention_helpers import attention as run_attention
from metal_attention_helpers import rope_store_kv
from metal_sim_helpers import PLANAR, args, ceil_div, core, gpu_layout, kernel_shape
from metallic.errors import RequestError
from op_cases import (
    ATTENTION_CASES,
    ELEMENTWISE_COUNTS,
    ROPE_CASES,
    attention_ref,
    glu_ref,
    nmse,
    rope_ref,
)

rng = np.random.default_rng(4321)


MATVEC_SIMDGROUPS = kernel_shape("MATVEC_SIMDGROUPS")
MATVEC_THREADS = 32 * MATVEC_SIMDGROUPS  # as the backend launches the matvec family
MATVEC_ROWS = MATVEC_SIMDGROUPS * kernel_shape("MATVEC_NR")  # rows per threadgroup
GLU_ROWS = MATVEC_SIMDGROUPS * kernel_shape("MATVEC_GLU_NR")  # matvec_glu's
MATVEC_TOKENS = kernel_shape("MATVEC_TOKENS")  # tokens per threadgroup (grid.y)
GEMM_ROWS, GEMM_TOKENS = kernel_shape("GEMM_ROWS"), kernel_shape("GEMM_TOKENS")
GEMM_THREADS = kernel_shape("GEMM_THREADS")

# Kernel suffix -> GGML type, for every format the CPU backend reads: the Metal backend takes the
# same weights (cpp/metal/metal_backend.cpp names kernels by the lower-case type name), so each
# needs its kernels (test_every_format_has_its_kernels).
FORMATS = {name.lower(): Q[name] for name in core.supported_formats().split(", ")}
FLOAT_FORMATS = ("f32", "f16", "bf16")
K_QUANTS = {  # offsets of the half scale fields in the block
    "q2_k": (80, 82),
    "q3_k": (108,),
    "q4_k": (0, 2),
    "q5_k": (0, 2),
    "q6_k": (208,),
}
# The kernels the Metal backend builds for each weight format.
FORMAT_KERNELS = ("embed", "gemm", "matvec", "matvec_jobs", "matvec_glu")


def test_every_format_has_its_kernels():
    missing = [f"{k}_{fmt}" for fmt in FORMATS for k in FORMAT_KERNELS]
    missing = [name for name in missing if name not in core.sim_kernels()]
    assert not missing, f"formats the CPU backend reads without Metal kernels: {missing}"


def random_k_blocks(rows, cols, fmt):
    """gguf-py cannot quantize K-quants: random blocks with sane half scales stand in."""
    half_at = K_QUANTS[fmt]
    nbytes = gguf.GGML_QUANT_SIZES[FORMATS[fmt]][1]
    raw = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)
    for off in half_at:
        scale = (rng.uniform(0.5, 1.5, raw.shape[:2]) / 64).astype(np.float16)
        raw[:, :, off : off + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
    return raw.reshape(rows, -1)


def file_bytes(values, fmt):
    """values in format fmt as a GGUF file holds them, [rows, row_bytes] uint8."""
    qtype = FORMATS[fmt]
    if fmt in K_QUANTS:
        raw = random_k_blocks(values.shape[0], values.shape[1], fmt)
    elif qtype == Q.F32:
        raw = values.astype(np.float32)
    else:
        raw = gguf.quants.quantize(values.astype(np.float32), qtype)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(values.shape[0], -1)


def encode(values, fmt):
    """(raw bytes as [rows, row_bytes] uint8 in the GPU's layout, the values the kernel must see
    as float64)."""
    qtype = FORMATS[fmt]
    raw = file_bytes(values, fmt)
    ref = gguf.quants.dequantize(raw, qtype) if qtype != Q.F32 else values.astype(np.float32)
    return gpu_layout(raw, fmt), ref.astype(np.float64)


X_VEC4 = 4  # LinearFlags (metal/args.h): rows of x 16-byte aligned, read as float4


def linear_args(rows, cols, n, flags, row_bytes, vec4=True):
    """As the host fills them: X_VEC4 when the rows of x allow it (NumPy's arrays start 16-byte
    aligned); vec4=False takes the matvecs' element-wise path instead."""
    flags |= X_VEC4 if vec4 and cols % 4 == 0 else 0
    return args("iiiiQQQ", rows, cols, n, flags, row_bytes, cols, rows)


def run_linear(kind, fmt, w_raw, x, out, bias, flags, vec4=True):
    rows, row_bytes = w_raw.shape
    n, cols = x.shape
    a = linear_args(rows, cols, n, flags, row_bytes, vec4)
    bufs = [a, w_raw, x, out, bias if bias is not None else out]
    if kind == "matvec":
        bufs.append(x)  # norm weight, unread without the fused norm
        core.sim_dispatch(
            f"matvec_{fmt}",
            bufs,
            [ceil_div(rows, MATVEC_ROWS), ceil_div(n, MATVEC_TOKENS)],
            [MATVEC_THREADS],
            constants=matvec_constants(),
        )
    else:
        grid = [ceil_div(rows, GEMM_ROWS), ceil_div(n, GEMM_TOKENS)]
        core.sim_dispatch(f"gemm_{fmt}", bufs, grid, [GEMM_THREADS])


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
            # the matvecs' float4 reads of x, and their element-wise path for unaligned rows
            for vec4 in (True, False) if kind == "matvec" else (True,):
                out = np.full((n, rows), np.nan, np.float32)
                run_linear(kind, fmt, w_raw, x, out, None, 0, vec4)
                assert nmse(out, ref) < 1e-10, (rows, cols, n, vec4)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("n_jobs", [2, 3])
def test_matvec_jobs(fmt, n_jobs):
    cols = 256 if fmt in K_QUANTS else 96
    rows = [37, 8, 13][:n_jobs]
    ws = [encode(rng.standard_normal((r, cols)), fmt) for r in rows]
    x = rng.standard_normal((1, cols)).astype(np.float32)
    outs = [rng.standard_normal((1, r)).astype(np.float32) for r in rows]
    biases = [rng.standard_normal(r).astype(np.float32) for r in rows]
    flags = [1, 0, 3][:n_jobs]  # bias; plain; bias + accumulate (and X_VEC4 below)
    refs = []
    for (_raw, ref), out, b, f in zip(ws, outs, biases, flags, strict=True):
        want = x.astype(np.float64) @ ref.T
        if f & 1:
            want = want + b
        if f & 2:
            want = want + out
        refs.append(want)
    groups = [ceil_div(r, MATVEC_ROWS) for r in rows]
    first = np.concatenate([[0], np.cumsum(groups)]).tolist()
    first += [first[-1]] * (4 - len(first))
    pad = lambda v, fill: v + [fill] * (3 - len(v))  # noqa: E731
    vflags = [f | X_VEC4 for f in flags]
    a = args(
        "ii3i3i4iiiQ", cols, n_jobs, *pad(rows, 0), *pad(vflags, 0), *first, 1, 0, ws[0][0].shape[1]
    )
    bufs = [
        a,
        *pad([w[0] for w in ws], ws[0][0]),
        x,
        *pad(outs, outs[0]),
        *pad(biases, biases[0]),
        x,
    ]
    core.sim_dispatch(
        f"matvec_jobs_{fmt}", bufs, [sum(groups), 1], [MATVEC_THREADS], constants=matvec_constants()
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
        [ceil_div(21, MATVEC_ROWS), 1],
        [MATVEC_THREADS],
        constants=c,
    )
    assert nmse(out, h @ g_ref.T) < 1e-10

    outs = [np.full((1, 21), np.nan, np.float32), np.full((1, 9), np.nan, np.float32)]
    g0, g1 = ceil_div(21, MATVEC_ROWS), ceil_div(9, MATVEC_ROWS)
    v4 = X_VEC4 if cols % 4 == 0 else 0
    a = args(
        "ii3i3i4iiiQ", cols, 2, 21, 9, 0, v4, v4, 0, 0, g0, g0 + g1, g0 + g1, 1, 0, g_raw.shape[1]
    )
    core.sim_dispatch(
        f"matvec_jobs_{fmt}",
        [a, g_raw, v_raw, g_raw, x, outs[0], outs[1], outs[0], outs[0], outs[0], outs[0], nw],
        [g0 + g1, 1],
        [MATVEC_THREADS],
        constants=c,
    )
    assert nmse(outs[0], h @ g_ref.T) < 1e-10
    assert nmse(outs[1], h @ v_ref.T) < 1e-10

    out = np.full((1, 21), np.nan, np.float32)
    core.sim_dispatch(
        f"matvec_glu_{fmt}",
        [linear_args(21, cols, 1, 0, g_raw.shape[1]), g_raw, u_raw, x, out, nw],
        [ceil_div(21, GLU_ROWS), 1],
        [MATVEC_THREADS],
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
    a = args("ifQii", cols, scale, raw.shape[1], vocab, 0)
    core.sim_dispatch(f"embed_{fmt}", [a, raw, ids, out], [len(ids)], [64])
    np.testing.assert_array_equal(out, (ref[ids] * scale).astype(np.float32))


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize(
    "n,n_heads,n_kv,head_dim,rope_dims,pos0",
    [c for c in ROPE_CASES if c[5] < 8192],  # the cache holds pos0 + n positions
)
def test_rope_store_kv(kv, neox, n, n_heads, n_kv, head_dim, rope_dims, pos0):
    n_ctx = max(40, pos0 + n)
    q = rng.standard_normal((n, n_heads * head_dim)).astype(np.float32)
    k = rng.standard_normal((n, n_kv * head_dim)).astype(np.float32)
    v = rng.standard_normal((n, n_kv * head_dim)).astype(np.float32)
    inv_freq = (10000.0 ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)
    q_ref = rope_ref(q, n_heads, head_dim, rope_dims, pos0, inv_freq, neox)
    k_ref = rope_ref(k, n_kv, head_dim, rope_dims, pos0, inv_freq, neox)
    kc = np.zeros((n_kv, n_ctx, head_dim), kv)
    vc = np.zeros((n_kv, n_ctx, head_dim), kv)
    rope_store_kv(q, k, v, kc, vc, pos0, rope_dims, inv_freq, neox)
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
            [ceil_div(rows, GLU_ROWS), 1],
            [MATVEC_THREADS],
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
    rope_store_kv(q, k, v, kc, vc, pos0, rope_dims, inv_freq, neox, qw, kw, eps)
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
    core.sim_dispatch("rmsnorm_add_f32", [args("ifQQii", d, eps, d, d, 1, 0), y, w, x], [n], [160])
    assert nmse(x, ref) < 1e-12


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize(
    "n_heads,n_kv,hd,n_ctx,pos0,n,window",
    ATTENTION_CASES,
)
def test_attention(kv, n_heads, n_kv, hd, n_ctx, pos0, n, window):
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    kc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    vc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    scale = 1.0 / np.sqrt(hd)
    out = run_attention(q, kc, vc, n_heads, pos0, window, scale, split_len=0)
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
    out = run_attention(q, kc, vc, n_heads, pos0, window, scale, split_len=split_len)
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


@pytest.mark.parametrize("count", ELEMENTWISE_COUNTS)
def test_glu_softcap(count):
    g = (3 * rng.standard_normal(count)).astype(np.float32)
    u = rng.standard_normal(count).astype(np.float32)
    gd = g.astype(np.float64)

    for gelu in (False, True):
        out = g.copy()
        elementwise("glu", [out, u], count, constants={0: gelu})
        assert nmse(out, glu_ref(g, u, gelu)) < 1e-6

    out = g.copy()
    elementwise("softcap", [out], count, cap=2.5)
    assert nmse(out, 2.5 * np.tanh(gd / 2.5)) < 1e-6


LAYOUT_CASES = [
    (fmt, rows, cols)
    for fmt in sorted(PLANAR)
    for rows, cols in [(5, 3 * 256), (7, 576), (9, 544), (6, 608)]
    if fmt not in K_QUANTS or cols % 256 == 0
]


@pytest.mark.parametrize("fmt, rows, cols", LAYOUT_CASES)
def test_gpu_weight_layout_is_the_planar_one(fmt, rows, cols):
    """The backend's repack at load (cpp/metal/weight_layout.cpp) gives the layout the kernels
    are tested with here (metal_sim_helpers.gpu_layout, written separately): every field of
    every block into its plane, the file's size. Shapes of several rows and blocks, so that a
    plane or block order mix-up shows: rows of whole matvec steps, and the 32-element formats'
    rows with a tail (bytes past the last whole step) that divides the step (K = 576 and 544:
    rows grouped in twos and fours, a partial group left over) or does not (K = 608)."""
    raw = file_bytes(rng.standard_normal((rows, cols)), fmt)
    got = core.gpu_weight_layout(int(FORMATS[fmt]), raw.reshape(-1), rows, cols)
    np.testing.assert_array_equal(got, gpu_layout(raw, fmt).reshape(-1))
    assert not np.array_equal(got, raw.reshape(-1))
    size, fields = PLANAR[fmt]
    off, n = fields[0]
    blocks = raw.reshape(rows, -1, size)[:, :, off : off + n]  # [row, block, quant bytes]
    if fmt == "q8_0" and cols == 576:
        # Written out: rows 0 and 1's last two blocks (64 bytes each) fill the first line,
        # then row 0's first 16 blocks and row 1's; the seventh row comes last, in order.
        np.testing.assert_array_equal(got[:64], blocks[0, 16:].reshape(-1))
        np.testing.assert_array_equal(got[64:128], blocks[1, 16:].reshape(-1))
        np.testing.assert_array_equal(got[128:640], blocks[0, :16].reshape(-1))
        np.testing.assert_array_equal(got[640:1152], blocks[1, :16].reshape(-1))
        np.testing.assert_array_equal(got[6 * 576 : 7 * 576], blocks[6].reshape(-1))
    elif fmt in K_QUANTS or cols == 3 * 256:
        # Rows in order (no grouping): the quants plane leads with row 0's.
        np.testing.assert_array_equal(got[: n * blocks.shape[1]], blocks[0].reshape(-1))
    with pytest.raises(RequestError):
        core.gpu_weight_layout(int(FORMATS["q8_0"]), raw.reshape(-1)[:-1], rows, cols)
