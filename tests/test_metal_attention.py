"""metal/attention.metal's kernels in the simulator against a float64 reference, launched as the
Metal backend launches them (metal_attention_helpers.py): attention_tile for prompt chunks,
attention (and the split) for decode and ragged head sizes; GQA groups smaller and larger than
a threadgroup's rows, head sizes for every lanes-per-row count (1 to 32) and ragged ones,
f16 and f32 caches, sliding windows, decode around the split threshold and splits that start
mid-split, and the independence of a query row from the rows that share its threadgroup."""

import numpy as np
import pytest

from metal_attention_helpers import SPLIT_LEN, SPLIT_MIN, attention, host_split_len
from op_cases import attention_ref, nmse

rng = np.random.default_rng(2024)


def make(n_heads, n_kv, hd, n_ctx, n, kv=np.float16):
    q = rng.standard_normal((n, n_heads * hd)).astype(np.float32)
    kc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    vc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    return q, kc, vc


def check(n_heads, n_kv, hd, n_ctx, pos0, n, window, kv=np.float16, split_len=None, tile=None):
    q, kc, vc = make(n_heads, n_kv, hd, n_ctx, n, kv)
    scale = 1.0 / np.sqrt(hd)
    out = attention(q, kc, vc, n_heads, pos0, window, scale, split_len, tile)
    ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale)
    assert np.isfinite(out).all()
    assert nmse(out, ref) < 1e-10, nmse(out, ref)
    return out


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize(
    "hd",
    [
        1,
        5,
        8,
        13,
        16,
        24,
        30,
        64,
        72,
        128,
        130,
        256,
    ],  # 1, 1, 1, 2, 2, 4, 4, 8, 16, 16, 32, 32 lanes
)
def test_head_sizes(kv, hd):
    check(4, 2, hd, 80, 40, 11, 0, kv)  # a prompt chunk: attention_tile if hd % 8 == 0
    check(4, 2, hd, 80, 40, 5, 0, kv)  # a short one: attention
    if hd % 8 == 0:
        check(4, 2, hd, 80, 40, 5, 0, kv, tile=True)
        check(4, 2, hd, 80, 40, 11, 0, kv, tile=False)
    check(4, 2, hd, 80, 70, 1, 0, kv)  # decode


@pytest.mark.parametrize(
    "n_heads,n_kv,n",
    [
        (14, 2, 1),  # Qwen2.5-0.5B: 7 heads per kv head, one block per kv head
        (14, 2, 5),  # blocks of 8 rows straddle tokens
        (16, 1, 1),  # 16 heads on one kv head: two blocks per token
        (24, 1, 3),  # MQA, 3 blocks per token
        (4, 4, 9),  # no GQA: a block is 8 tokens of one head
        (14, 2, 40),  # attention_tile: 280 rows per kv head, 9 threadgroups of 32
        (6, 2, 11),
    ],
)
def test_gqa(n_heads, n_kv, n):
    check(n_heads, n_kv, 64, 64, 20, n, 0, tile=False)
    check(n_heads, n_kv, 64, 64, 20, n, 0, tile=True)


@pytest.mark.parametrize("window", [1, 2, 7, 33, 64, 500])
def test_windows(window):
    check(4, 2, 32, 200, 90, 30, 0 if window == 500 else window)
    check(4, 2, 32, 200, 90, 30, 0 if window == 500 else window, tile=False)
    check(4, 2, 32, 200, 150, 1, window)


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize(
    "pos0,window",
    [
        (SPLIT_MIN - 2, 0),  # one position short of splitting: the unsplit kernel
        (SPLIT_MIN - 1, 0),  # the first split decode: exactly SPLIT_MIN positions
        (SPLIT_MIN, 0),
        (1000, 0),
        (1000, 300),  # a window whose start is mid-split
        (1000, SPLIT_MIN),
        (1000, 700),
    ],
)
def test_split_decode(kv, pos0, window):
    split = host_split_len(1, pos0, window)
    start = max(0, pos0 - window + 1) if window > 0 else 0
    assert (split > 0) == (pos0 - start + 1 >= SPLIT_MIN)
    check(14, 2, 64, pos0 + 3, pos0, 1, window, kv)


def test_split_lengths():
    """Forced split lengths, and the backend's longer splits past SPLIT_LEN * 64 positions."""
    for split_len in (1, 7, 32, 64, 200):
        check(6, 2, 16, 400, 333, 1, 0, split_len=split_len)
    pos0 = SPLIT_LEN * 64 + 100
    assert host_split_len(1, pos0, 0) == 2 * SPLIT_LEN
    check(2, 1, 8, pos0 + 1, pos0, 1, 0)


@pytest.mark.parametrize("window", [0, 9, 50])
@pytest.mark.parametrize("tile", [False, True])
def test_rows_do_not_depend_on_their_threadgroup(tile, window):
    """A query row's result is bitwise the same whether it is computed in one prompt chunk or
    another, with other rows in its threadgroup or (attention) alone, as a decode is."""
    n_heads, n_kv, hd, n_ctx = 6, 2, 40, 128
    q, kc, vc = make(n_heads, n_kv, hd, n_ctx, 40)
    pos0, scale = 57, 1.0 / np.sqrt(hd)

    def run(a, b):  # rows a .. b - 1
        return attention(q[a:b], kc, vc, n_heads, pos0 + a, window, scale, 0, tile)

    whole = run(0, 40)
    np.testing.assert_array_equal(whole, np.concatenate([run(0, 13), run(13, 15), run(15, 40)]))
    np.testing.assert_array_equal(whole, np.concatenate([run(0, 2), run(2, 39), run(39, 40)]))
    single = np.concatenate([run(t, t + 1) for t in range(0, 40, 7)])
    np.testing.assert_array_equal(whole[0:40:7], single)


def test_reads_only_the_windows():
    """Cache rows outside every query row's window (past the last position, before the first
    window's start) may hold anything, NaN included: they must not be read."""
    n_heads, n_kv, hd, n_ctx = 4, 2, 64, 400
    for pos0, n, window, split in ((50, 20, 16, 0), (300, 1, 100, None), (300, 1, 0, None)):
        q, kc, vc = make(n_heads, n_kv, hd, n_ctx, n)
        start = max(0, pos0 - window + 1) if window > 0 else 0
        for c in (kc, vc):
            c[:, pos0 + n :] = np.nan
            c[:, :start] = np.nan
        scale = 1.0 / np.sqrt(hd)
        out = attention(q, kc, vc, n_heads, pos0, window, scale, split)
        kc, vc = np.nan_to_num(kc), np.nan_to_num(vc)
        ref = attention_ref(q, kc, vc, n_heads, n_kv, hd, pos0, window, scale)
        assert nmse(out, ref) < 1e-10


def test_large_scores_do_not_overflow():
    """Scores of several hundred (exp overflows without the running max) stay finite."""
    n_heads, n_kv, hd, n_ctx = 4, 1, 32, 300
    q, kc, vc = make(n_heads, n_kv, hd, n_ctx, 3)
    q *= 60
    for pos0, n in ((10, 3), (290, 1)):
        scale = 1.0 / np.sqrt(hd)
        out = attention(q[:n], kc, vc, n_heads, pos0, 0, scale)
        ref = attention_ref(q[:n], kc, vc, n_heads, n_kv, hd, pos0, 0, scale)
        assert np.isfinite(out).all() and nmse(out, ref) < 1e-10
