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


# The formats the Metal backend stores planar: block bytes and the (offset, size) of each field of
# a GGUF block, in the order of the planes (quants, high bits, scale, min).
PLANAR = {
    "q8_0": (34, [(2, 32), (0, 2)]),
    "q4_0": (18, [(2, 16), (0, 2)]),
    "q4_1": (20, [(4, 16), (0, 2), (2, 2)]),
    "q5_0": (22, [(6, 16), (2, 4), (0, 2)]),
    "q5_1": (24, [(8, 16), (4, 4), (0, 2), (2, 2)]),
    "q4_k": (144, [(16, 128), (4, 12), (0, 4)]),
    "q5_k": (176, [(48, 128), (16, 32), (4, 12), (0, 4)]),
    "q6_k": (210, [(0, 128), (128, 64), (192, 16), (208, 2)]),
    "q2_k": (84, [(16, 64), (0, 16), (80, 4)]),
    "q3_k": (110, [(32, 64), (0, 32), (96, 12), (108, 2)]),
}


def grouped_rows(plane, step):
    """The quants plane of the 32-element formats ([rows, bytes] uint8) with the rows grouped
    as the backend stores them (cpp/metal/weight_layout.cpp, quant_plane_offset): a matvec step
    reads `step` bytes of a row, a row's last bytes % step are its tail; when the tail divides
    the step, each group of step // tail rows stores its tails first, then each row's remaining
    bytes. Rows past the last whole group stay in order."""
    rows, n = plane.shape
    tail = n % step
    if tail == 0 or step % tail:
        return plane.reshape(-1)
    g = step // tail
    whole = rows - rows % g
    if whole == 0:
        return plane.reshape(-1)
    groups = plane[:whole].reshape(whole // g, g, n)
    tails = groups[:, :, n - tail :].reshape(whole // g, -1)
    mains = groups[:, :, : n - tail].reshape(whole // g, -1)
    grouped = np.concatenate([tails, mains], axis=1).reshape(-1)
    return np.concatenate([grouped, plane[whole:].reshape(-1)])


def gpu_layout(raw, fmt):
    """Rows of GGUF blocks ([rows, row_bytes] uint8) as the Metal backend stores them
    (cpp/metal/weight_layout.h): the PLANAR formats as planes, each field of every block in
    row order (the 32-element formats' quants with grouped_rows); the other formats as they
    are. Written here independently of the C++ repack, which the model tests check (metal-sim
    against the CPU backend)."""
    if fmt not in PLANAR:
        return raw
    size, fields = PLANAR[fmt]
    rows, row_bytes = raw.shape
    blocks = raw.reshape(-1, size)
    planes = [blocks[:, off : off + n].reshape(-1) for off, n in fields]
    if fmt in ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):  # a step: 4 blocks' quants
        planes[0] = grouped_rows(planes[0].reshape(rows, -1), 4 * fields[0][1])
    return np.concatenate(planes).reshape(rows, row_bytes)


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
