"""Launching metal/attention.metal's kernels through the simulator as the Metal backend does
(cpp/metal/metal_backend.cpp, MetalBackend::attention)."""

import numpy as np

from metal_sim_helpers import args, ceil_div, core, kernel_shape

ATTN_ROWS = kernel_shape("ATTN_ROWS")  # query rows (token, head) per threadgroup
SIMDGROUPS = 4  # kAttentionSimdgroups
SPLIT_LEN, SPLIT_MIN, MAX_SPLITS = (
    64,
    256,
    64,
)  # kAttentionSplitLen, kAttentionSplitMin, ...MaxSplits


def host_split_len(n, pos0, window):
    """The split length the backend picks (0: no split)."""
    start = max(0, pos0 - window + 1) if window > 0 else 0
    length = pos0 - start + 1
    if n != 1 or length < SPLIT_MIN:
        return 0
    return SPLIT_LEN * ceil_div(length, SPLIT_LEN * MAX_SPLITS)


MATVEC_TOKENS = kernel_shape("MATVEC_TOKENS")  # longer prompt chunks take the GEMM


def host_uses_tile(n, hd):
    """Whether the backend runs attention_tile (prompt chunks that take the GEMM, head sizes of a
    multiple of 8)."""
    return n > MATVEC_TOKENS and hd % 8 == 0


def _merge_bytes(hd, nsg):
    """attention's threadgroup memory: the simdgroups' merge."""
    lanes = 1  # lanes per cache row (attn_lanes_per_row)
    while lanes < 32 and 8 * lanes < hd:
        lanes *= 2
    return max(16, (nsg - 1) * ATTN_ROWS * (2 + 8 * lanes) * 4)


def rope_store_kv(
    q, k, v, kc, vc, pos0, rope_dims, inv_freq, neox, q_norm=None, k_norm=None, eps=1e-6
):
    """rope_store_kv_* in place on q and k, writing the chunk's K and V rows into kc, vc."""
    n_kv, n_ctx, hd = kc.shape
    n, n_heads = q.shape[0], q.shape[1] // hd
    a = args("iiiiiiif", n_heads, n_kv, hd, rope_dims, n_ctx, pos0, int(q_norm is not None), eps)
    name = "rope_store_kv_f16" if kc.dtype == np.float16 else "rope_store_kv_f32"
    qw = inv_freq if q_norm is None else q_norm
    kw = inv_freq if k_norm is None else k_norm
    core.sim_dispatch(
        name,
        [a, q, k, v, kc, vc, inv_freq, qw, kw],
        [n, n_heads + n_kv],
        [ceil_div(hd, 32) * 32],
        constants={2: neox},
    )


def attention_rope(
    q, k, v, kc, vc, pos0, window, scale, rope_dims, inv_freq, neox, q_norm=None, k_norm=None,
    eps=1e-6, split_len=None, nsg=SIMDGROUPS,
):  # fmt: skip
    """out (n, n_heads * head_dim) of attention_rope(_split) (+ attention_merge): rope_store_kv's
    work and attention in one dispatch, on q and k as projected; writes the new K and V rows into
    kc, vc. split_len None: as the backend decides."""
    n = q.shape[0]
    n_kv, n_ctx, hd = kc.shape
    n_heads = q.shape[1] // hd
    assert n <= MATVEC_TOKENS
    if split_len is None:
        split_len = host_split_len(n, pos0, window)
    chunks, align4 = ceil_div(hd, 32), lambda f: (f + 3) // 4 * 4
    k_offset = align4((ATTN_ROWS + n) * chunks) + align4(ATTN_ROWS * hd)
    prologue = k_offset * 4 + 2 * n * hd * kc.itemsize
    tg_mem = [ceil_div(max(_merge_bytes(hd, nsg), prologue), 16) * 16]
    assert tg_mem[0] <= 32768
    a = args("iiiiiifii", n_heads, n_kv, hd, n_ctx, pos0, window, scale, split_len, n)
    r = args("iiiiiiif", n_heads, n_kv, hd, rope_dims, n_ctx, pos0, int(q_norm is not None), eps)
    qw = inv_freq if q_norm is None else q_norm
    kw = inv_freq if k_norm is None else k_norm
    suffix = "f16" if kc.dtype == np.float16 else "f32"
    blocks = ceil_div(n * (n_heads // n_kv), ATTN_ROWS)
    out = np.full((n, n_heads * hd), np.nan, np.float32)
    rope_bufs = [r, k, v, inv_freq, qw, kw]
    if split_len == 0:
        bufs = [a, q, kc, vc, out, *rope_bufs]
        core.sim_dispatch(
            f"attention_rope_{suffix}", bufs, [n_kv * blocks], [32 * nsg], tg_mem=tg_mem,
            constants={2: neox},
        )  # fmt: skip
        return out
    assert n == 1
    start = max(0, pos0 - window + 1) if window > 0 else 0
    splits = pos0 // split_len - start // split_len + 1
    partial = np.full(n_heads * splits * (hd + 2), np.nan, np.float32)
    bufs = [a, q, kc, vc, partial, *rope_bufs]
    grid = [n_kv * blocks, splits]
    core.sim_dispatch(
        f"attention_rope_split_{suffix}", bufs, grid, [32 * nsg], tg_mem=tg_mem, constants={2: neox}
    )
    core.sim_dispatch("attention_merge", [a, partial, out], [n_heads], [ceil_div(hd, 32) * 32])
    return out


def attention(q, kc, vc, n_heads, pos0, window, scale, split_len=None, tile=None, nsg=SIMDGROUPS):
    """out (n, n_heads * head_dim) of the attention kernels over the cache kc, vc
    ([n_kv][n_ctx][head_dim], float16 or float32). split_len None: as the backend decides; 0: not
    split; > 0: attention_split with that split length plus attention_merge (one token). tile
    None: as the backend decides; True: attention_tile; False: attention (or the split)."""
    n = q.shape[0]
    n_kv, n_ctx, hd = kc.shape
    if split_len is None:
        split_len = host_split_len(n, pos0, window)
    if tile is None:
        tile = split_len == 0 and host_uses_tile(n, hd)
    suffix = "f16" if kc.dtype == np.float16 else "f32"
    if tile:
        assert split_len == 0 and hd % 8 == 0
        out = np.full((n, n_heads * hd), np.nan, np.float32)
        a = args("iiiiiifii", n_heads, n_kv, hd, n_ctx, pos0, window, scale, 0, n)
        grid = [n_kv * ceil_div(n * (n_heads // n_kv), 8 * nsg)]
        stride = hd + ((8 - hd % 32) + 32) % 32  # attn_tile_stride
        tg_mem = [(16 * stride + 128 * nsg) * 4]
        bufs = [a, q, kc, vc, out]
        constants = {0: hd // 8}
        core.sim_dispatch(
            f"attention_tile_{suffix}", bufs, grid, [32 * nsg], tg_mem=tg_mem, constants=constants
        )
        return out
    blocks = ceil_div(n * (n_heads // n_kv), ATTN_ROWS)
    tg_mem = [ceil_div(_merge_bytes(hd, nsg), 16) * 16]
    out = np.full((n, n_heads * hd), np.nan, np.float32)
    a = args("iiiiiifii", n_heads, n_kv, hd, n_ctx, pos0, window, scale, split_len, n)
    if split_len == 0:
        bufs = [a, q, kc, vc, out]
        core.sim_dispatch(f"attention_{suffix}", bufs, [n_kv * blocks], [32 * nsg], tg_mem=tg_mem)
        return out
    assert n == 1
    start = max(0, pos0 - window + 1) if window > 0 else 0
    splits = pos0 // split_len - start // split_len + 1
    partial = np.full(n_heads * splits * (hd + 2), np.nan, np.float32)
    bufs = [a, q, kc, vc, partial]
    grid = [n_kv * blocks, splits]
    core.sim_dispatch(f"attention_split_{suffix}", bufs, grid, [32 * nsg], tg_mem=tg_mem)
    core.sim_dispatch("attention_merge", [a, partial, out], [n_heads], [ceil_div(hd, 32) * 32])
    return out
