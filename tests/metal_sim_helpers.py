"""Helpers for running metal/*.metal kernels through the CPU simulator from pytest."""

import struct

import numpy as np
import pytest

core = pytest.importorskip("metallic._core")
if not hasattr(core, "sim_dispatch"):
    pytest.skip(
        "built without the Metal simulator (METALLIC_METAL_SIM=OFF)", allow_module_level=True
    )


def args(fmt, *values):
    """Packs an argument struct of metal/args.h (little-endian, explicit padding in fmt)."""
    return np.frombuffer(bytearray(struct.pack("<" + fmt, *values)), dtype=np.uint8).copy()


def ceil_div(a, b):
    return (a + b - 1) // b


def nmse(got, ref):
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    return float(np.sum((got - ref) ** 2) / max(np.sum(ref**2), 1e-30))


# ---- host-side launch helpers (what the Metal backend will do) -------------------------------


def rmsnorm(x, w, eps, tg=256):
    n, d = x.shape
    out = np.zeros_like(x)
    kname = "rmsnorm_f16" if w.dtype == np.float16 else "rmsnorm_f32"
    core.sim_dispatch(kname, [args("ifQQ", d, eps, d, d), x, w, out], [n], [tg])
    return out


def argmax(x, tg=1024):
    rows, n = x.shape
    out = np.full(rows, -1, np.int32)
    core.sim_dispatch("argmax_f32", [args("iiQ", n, 0, n), x, out], [rows], [tg])
    return out
