"""Helpers for running metal/*.metal kernels through the CPU simulator from pytest."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest

core = pytest.importorskip("metallic._core")
if not hasattr(core, "sim_dispatch"):
    pytest.skip(
        "built without the Metal simulator (METALLIC_METAL_SIM=OFF)", allow_module_level=True
    )


def kernel_shape(name):
    """A launch constant of metal/args.h (enum KernelShape): the kernels are written for it and
    the backend launches with it, so tests and benchmarks read it from there too."""
    text = (Path(__file__).resolve().parents[1] / "metal" / "args.h").read_text()
    return int(re.search(rf"^\s*{name} = (\d+),", text, re.M).group(1))


def args(fmt, *values):
    """Packs an argument struct of metal/args.h (little-endian, explicit padding in fmt)."""
    return np.frombuffer(bytearray(struct.pack("<" + fmt, *values)), dtype=np.uint8).copy()


def ceil_div(a, b):
    return (a + b - 1) // b


# ---- host-side launch helpers (what the Metal backend will do) -------------------------------


def rmsnorm(x, w, eps, tg=256):
    n, d = x.shape
    out = np.zeros_like(x)
    kname = "rmsnorm_f16" if w.dtype == np.float16 else "rmsnorm_f32"
    # x_vec4 as the host sets it: rows of a multiple of 4 floats from a 16-byte aligned start
    a = args("ifQQii", d, eps, d, d, int(d % 4 == 0), 0)
    core.sim_dispatch(kname, [a, x, w, out], [n], [tg])
    return out
