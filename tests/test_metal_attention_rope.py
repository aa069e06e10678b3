"""attention_rope(_split): RoPE (with the optional qk-norm), the KV-cache write and attention in
one dispatch for decode steps and short chunks. Its promise is to compute the same floats as
rope_store_kv followed by attention (the backend picks either by chunk length), so the check is
bitwise against that pair: the output, and the whole cache (the new rows written once, nothing
else touched). The pair itself is checked against float64 references in test_metal_ops.py."""

import numpy as np
import pytest

from metal_attention_helpers import attention as run_attention
from metal_attention_helpers import attention_rope, rope_store_kv

rng = np.random.default_rng(23)

# (n_heads, n_kv, head_dim, rope_dims, pos0, n, window, split_len): split_len 0 is attention,
# > 0 attention_split with that length (one token).
CASES = [
    (14, 2, 64, 64, 30, 1, 0, 0),  # Qwen2.5-0.5B's heads, decode
    (14, 2, 64, 64, 5, 8, 0, 0),  # a chunk of 8: 7 blocks per kv head, one writer
    (14, 2, 64, 64, 300, 1, 0, 64),  # long-context decode, split
    (4, 1, 256, 256, 9, 8, 5, 0),  # Gemma 3 270M's heads, sliding window shorter than the chunk
    (4, 1, 256, 256, 700, 1, 512, 64),  # ... split within the window
    (6, 2, 12, 8, 3, 3, 0, 0),  # head size not a multiple of 8, partial rotation
    (8, 8, 80, 80, 0, 2, 0, 0),  # no GQA, an empty cache, head size 80
    (9, 3, 40, 20, 17, 5, 3, 0),  # three query heads per kv head, window 3
]


@pytest.mark.parametrize("kv", [np.float16, np.float32])
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("n_heads,n_kv,hd,rope_dims,pos0,n,window,split_len", CASES)
def test_fused_equals_rope_store_kv_then_attention(
    kv, neox, qk_norm, n_heads, n_kv, hd, rope_dims, pos0, n, window, split_len
):
    n_ctx = pos0 + n + 3
    eps = 1e-6
    q = (2 * rng.standard_normal((n, n_heads * hd))).astype(np.float32)
    k = (2 * rng.standard_normal((n, n_kv * hd))).astype(np.float32)
    v = rng.standard_normal((n, n_kv * hd)).astype(np.float32)
    inv_freq = (10000.0 ** (-np.arange(0, rope_dims, 2) / rope_dims)).astype(np.float32)
    qw = (1 + 0.1 * rng.standard_normal(hd)).astype(np.float32) if qk_norm else None
    kw = (1 + 0.1 * rng.standard_normal(hd)).astype(np.float32) if qk_norm else None
    kc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    vc = rng.standard_normal((n_kv, n_ctx, hd)).astype(kv)
    scale = 1.0 / np.sqrt(hd)

    # The pair: rope_store_kv (q and k rotated in place), then attention.
    q1, k1, kc1, vc1 = q.copy(), k.copy(), kc.copy(), vc.copy()
    rope_store_kv(q1, k1, v, kc1, vc1, pos0, rope_dims, inv_freq, neox, qw, kw, eps)
    ref = run_attention(q1, kc1, vc1, n_heads, pos0, window, scale, split_len=split_len, tile=False)

    # Fused, over a cache whose new rows hold NaN: they must be computed, not read.
    q2, k2, kc2, vc2 = q.copy(), k.copy(), kc.copy(), vc.copy()
    kc2[:, pos0 : pos0 + n] = np.nan
    vc2[:, pos0 : pos0 + n] = np.nan
    out = attention_rope(
        q2, k2, v, kc2, vc2, pos0, window, scale, rope_dims, inv_freq, neox, qw, kw, eps, split_len
    )

    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(kc2, kc1)
    np.testing.assert_array_equal(vc2, vc1)
    np.testing.assert_array_equal(q2, q)  # the fused kernel leaves q and k as projected
    np.testing.assert_array_equal(k2, k)
