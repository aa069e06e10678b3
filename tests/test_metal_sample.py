"""metal/sample.metal: GPU-resident sampling's pick. Its promise is the host's token, bit for bit:
the same candidates in the same order (radix select on the GPU, a heap on the host) and the same
float32 rule over them (cpp/engine/top_k_pick.h, included by both). So every case compares the
kernel, run through the simulator, with _core.pick_token; the rule itself is checked against
the sampler's float64 distribution in test_shared_pick.py."""

import struct

import numpy as np
import pytest

from metal_sim_helpers import core

rng = np.random.default_rng(5)
PICK_TOP_K_MAX = core.pick_top_k_max


def gpu_pick(x, top_k, top_p, min_p, inv_temp, seed, counter, threads=None):
    """sample_top_k_f32 as MetalBackend::sample launches it: one threadgroup."""
    lo, hi = seed & 0xFFFFFFFF, seed >> 32
    packed = struct.pack("<iifffIII", x.size, top_k, top_p, min_p, inv_temp, lo, hi, counter)
    a = np.frombuffer(packed, np.uint8).copy()
    token = np.full(1, -7, np.int32)
    status = np.full(1, -7, np.int32)
    if threads is None:
        threads = min(1024, max(32, -(-x.size // 32) * 32))
    core.sim_dispatch("sample_top_k_f32", [a, x, token, status], [1], [threads])
    return int(token[0]), int(status[0])


def host_pick(x, top_k, top_p, min_p, inv_temp, seed, counter):
    return core.pick_token(x, top_k, top_p, min_p, inv_temp, seed, counter)


def _logits(kind, n):
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    if kind == "ties":  # few distinct values: the k-th largest is shared by many
        x = np.round(x / 2).astype(np.float32)
    elif kind == "masked":  # most of the vocabulary at -inf, fewer survivors than k at times
        x[rng.random(n) < 0.9] = -np.inf
    elif kind == "flat":  # every logit equal: ties all the way, the smallest indices win
        x[:] = 0.25
    elif kind == "signed_zero":  # -0 and +0 order by key: -0 below +0
        x = rng.choice(np.array([-0.0, 0.0, -1.0], np.float32), n)
    elif kind == "wide":  # logits so far apart that exp underflows for most
        x = (400 * rng.standard_normal(n)).astype(np.float32)
    return x


KINDS = ["normal", "ties", "masked", "flat", "signed_zero", "wide"]
SETTINGS = [  # top_k, top_p, min_p, inv_temp
    (40, 0.95, 0.05, 1 / 0.8),
    (1, 1.0, 0.0, 1.0),
    (PICK_TOP_K_MAX, 1.0, 0.0, 1.0),
    (7, 0.5, 0.0, 3.0),
    (100, 1.0, 0.2, 0.25),
    (33, 0.9, 0.0, 0.0),  # inv_temp 0: uniform over the kept candidates
]


@pytest.mark.parametrize("n", [1, 5, 300, 4097, 70_000])
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_picks_the_host_token(kind, n):
    x = _logits(kind, n)
    for top_k, top_p, min_p, inv_temp in SETTINGS:
        for _ in range(3 if n < 50_000 else 1):
            seed = int(rng.integers(0, 2**64, dtype=np.uint64))
            counter = int(rng.integers(0, 2**32))
            args = (top_k, top_p, min_p, inv_temp, seed, counter)
            want = host_pick(x, *args)
            assert gpu_pick(x, *args) == want, (kind, n, args)


def test_any_threadgroup_width_picks_the_same():
    x = _logits("ties", 3000)
    args = (50, 0.9, 0.01, 1.3, 99, 5)
    want = host_pick(x, *args)
    for threads in (32, 96, 256, 1024):
        assert gpu_pick(x, *args, threads=threads) == want


@pytest.mark.parametrize(
    ("poison", "status"),
    [("nan", 1), ("inf", 2), ("all_masked", 3)],
)
def test_unusable_logits_report_the_host_status(poison, status):
    x = _logits("normal", 1000)
    if poison == "nan":
        x[777] = np.nan
    elif poison == "inf":
        x[3] = np.inf
    else:
        x[:] = -np.inf
    args = (40, 0.95, 0.05, 1.25, 1, 0)
    assert host_pick(x, *args) == (0, status)
    assert gpu_pick(x, *args) == (0, status)


def test_a_run_of_draws_matches_token_for_token():
    """One logits vector, 300 consecutive draws of a stream: the GPU makes the host's choices."""
    x = _logits("normal", 2000)
    args = (40, 0.95, 0.05, 1 / 0.7, 2**63 + 12345)
    host = [host_pick(x, *args, c)[0] for c in range(300)]
    gpu = [gpu_pick(x, *args, c)[0] for c in range(300)]
    assert gpu == host
    assert len(set(host)) > 5  # a real distribution, not one token
