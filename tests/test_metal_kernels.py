"""metal/*.metal kernels, run in the CPU Metal simulator, against NumPy references."""

import numpy as np
import pytest

from metal_sim_helpers import argmax, nmse, rmsnorm

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


@pytest.mark.parametrize(
    "rows,n,tg", [(1, 151936, 1024), (3, 1000, 256), (2, 31, 64), (4, 1, 32), (1, 5000, 96)]
)
def test_argmax(rows, n, tg):
    x = rng.standard_normal((rows, n)).astype(np.float32)
    assert np.array_equal(argmax(x, tg), np.argmax(x, axis=1))


def test_argmax_ties_pick_first():
    x = np.zeros((3, 4000), np.float32)
    x[0, [17, 900, 3999]] = 5.0
    x[1, :] = -1.0
    x[2, [2500, 1200]] = 3.0
    assert list(argmax(x, 256)) == [17, 0, 1200]
