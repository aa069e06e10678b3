"""Shapes and float64 references shared by the per-op tests of both backends: test_cpu_ops.py
(the CPU backend's ops through _core's cpu_op_* hooks) and test_metal_ops.py (the Metal kernels
in the simulator), in the tuple layouts test_metal_ops.py parametrizes with. Cases marked
"Metal's" are the ones test_metal_ops.py runs; the others reach what only one backend has, such
as the CPU's 128-key chunks of block attention.
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q


def nmse(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    return float(np.sum((got - ref) ** 2) / max(np.sum(ref**2), 1e-30))


# ---- RoPE ------------------------------------------------------------------------------------

# (n, n_heads, n_kv, head_dim, rope_dims, pos0): n rows of q (n_heads heads) and k (n_kv heads)
# rotated at positions pos0 .. pos0 + n - 1.
ROPE_CASES = [
    # Metal's (test_rope_store_kv)
    (1, 6, 2, 16, 16, 7),
    (3, 5, 5, 12, 8, 0),
    (5, 5, 1, 12, 12, 33),
    (2, 4, 1, 256, 128, 30),
    # head_dim 64 and 128 whole, 80 (not a power of two), partial rotation of 256; 9 rows (the CPU
    # splits 8 and more over its threads); positions far out (angles of thousands of radians)
    (9, 8, 2, 64, 64, 4090),
    (2, 4, 4, 128, 128, 1000),
    (3, 2, 1, 80, 80, 129),
    (1, 2, 2, 256, 64, 131071),
]


def rope_inv_freq(rope_dims, base=10000.0):
    return (base ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)


def rope_ref(x, n_heads, head_dim, rope_dims, pos0, inv_freq, neox):
    """The angle is float32(position) * float32(inv_freq) rounded to float32, as both backends
    compute it; the rotation is float64."""
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


# ---- attention -------------------------------------------------------------------------------

# (n_heads, n_kv, head_dim, n_ctx, pos0, n, window): n query rows at positions pos0 .. over a
# cache of n_ctx positions (keys past a row's position are there and must not be seen); window
# > 0 limits a row to its last `window` keys.
ATTENTION_CASES = [
    # Metal's (test_attention)
    (6, 2, 16, 40, 22, 1, 0),
    (6, 1, 12, 40, 0, 1, 0),
    (4, 4, 64, 50, 10, 7, 0),
    (8, 2, 128, 64, 30, 3, 9),
    (2, 1, 256, 16, 2, 3, 0),
    (6, 2, 16, 40, 3, 30, 5),
    # The CPU's block attention takes keys in chunks of 128 (cpu/block_attention.h):
    (4, 2, 64, 200, 100, 60, 0),  # rows 100..159: every row's keys cross position 128
    (4, 2, 64, 200, 127, 2, 0),  # the rows on either side of the boundary
    (4, 1, 128, 300, 150, 20, 50),  # window across the boundary: chunk 0 partly masked
    (4, 2, 64, 300, 200, 9, 128),  # window of exactly one chunk, starting mid-chunk
    (2, 2, 256, 300, 255, 3, 0),  # head_dim 256, keys to 257: a third chunk of one or two keys
    (3, 3, 40, 200, 0, 140, 0),  # a prompt from position 0 in three blocks of rows, odd head_dim
    (8, 1, 64, 300, 270, 1, 0),  # decode (one row) far into the cache, 8 heads on 1 KV head
    (4, 2, 128, 300, 299, 1, 100),  # decode at the last position with a window
]


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


# ---- element-wise ----------------------------------------------------------------------------

# Metal's three, then one past the CPU's 8-wide vectors and one the CPU splits into 4096-value
# chunks over its threads (with a ragged last chunk).
ELEMENTWISE_COUNTS = [1, 255, 1000, 9, 12291]


def glu_ref(g, u, gelu):
    g, u = np.asarray(g, np.float64), np.asarray(u, np.float64)
    with np.errstate(over="ignore"):  # exp(-g) -> inf for very negative g is fine
        act = (
            0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
            if gelu
            else g / (1 + np.exp(-g))
        )
    return act * u


# ---- weights ---------------------------------------------------------------------------------

K_QUANT_HALF_FIELDS = {  # offsets of the half scale fields in a K-quant block
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}


def encode(rng, values, qtype):
    """(raw bytes as [rows, row_bytes] uint8, the values a kernel must see, as float64). gguf-py
    cannot quantize K-quants: random blocks with sane half scales stand in for them."""
    rows, cols = values.shape
    if qtype in K_QUANT_HALF_FIELDS:
        nbytes = gguf.GGML_QUANT_SIZES[qtype][1]
        raw = rng.integers(0, 256, (rows, cols // 256, nbytes), dtype=np.uint8)
        for off in K_QUANT_HALF_FIELDS[qtype]:
            scale = (rng.uniform(0.5, 1.5, raw.shape[:2]) / 64).astype(np.float16)
            raw[:, :, off : off + 2] = scale.view(np.uint8).reshape(rows, cols // 256, 2)
        raw = raw.reshape(rows, -1)
    elif qtype == Q.F32:
        raw = values.astype(np.float32)
    else:
        raw = gguf.quants.quantize(values.astype(np.float32), qtype)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)
    ref = gguf.quants.dequantize(raw, qtype) if qtype != Q.F32 else values.astype(np.float32)
    return raw, ref.astype(np.float64)
