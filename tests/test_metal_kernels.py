"""metal/*.metal kernels, run in the CPU Metal simulator, against NumPy references."""

import numpy as np
import pytest

from metal_sim_helpers import rmsnorm
from op_cases import nmse

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
