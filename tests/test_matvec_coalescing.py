"""#17's per-instruction targets for the decode matvecs, measured by the simulator's traffic
counters: at least 90% of every touched 128-byte line used (lines touched at most 1.11x the
fewest that could hold the bytes) and at least 90% of lanes active, for K >= 640. The layouts
that make it so: the planar weight copies (cpp/metal/weight_layout.h, formats.h layout<F>)
with lanes reading contiguous words, and the float formats' head (LINEAR_HEAD_SHIFT), which
starts the blocks at a line whatever the file's alignment. The whole-model figures are in
docs/metal.md (benchmarks/metal_projection.py)."""

import numpy as np
import pytest

from metal_sim_helpers import core
from test_metal_kernels import _matvec
from test_metal_ops import FLOAT_FORMATS, FORMATS, K_QUANTS, encode
from test_sim_traffic import aligned

if not core.sim_counting_available():
    pytest.skip("this build cannot count memory traffic", allow_module_level=True)

rng = np.random.default_rng(3)
# The benchmark models' formats (Qwen2.5 F16 and Q8_0, SmolLM2 Q4_1, Gemma 3 Q4_K_M's Q4_K,
# Q5_0, Q6_K, Q8_0) and the other planar ones.
TARGET = [
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
]


def measure(kind, fmt, cols, rows=64, misalign=0, use_head=True):
    """One matvec dispatch over aligned buffers (the weights `misalign` bytes past a line, as a
    file may place a float matrix, with the head the host would set unless use_head is off):
    (lines touched / minimum, active lane fraction)."""
    raw, _ = encode(rng.standard_normal((rows, cols)), fmt)
    ws = []
    for _ in range(2 if kind == "glu" else 1):
        buf = aligned(np.zeros(raw.nbytes + misalign, np.uint8))
        w = buf[misalign:].reshape(raw.shape)
        w[...] = raw
        ws.append(w)
    x = aligned(rng.standard_normal((1, cols)).astype(np.float32))
    elem = 4 if fmt == "f32" else 2
    head = (128 - misalign) % 128 // elem if use_head else 0  # the host's, for a float matrix
    was = core.sim_counting()
    core.sim_set_counting(True)
    try:
        core.sim_reset_traffic()
        _matvec(kind, fmt, ws, x, head=head)
        t = core.sim_traffic()
    finally:
        core.sim_set_counting(was)
        core.sim_reset_traffic()
    return t["lines_touched"] / t["lines_min"], t["active_lane_fraction"]


@pytest.mark.parametrize("fmt", TARGET)
@pytest.mark.parametrize("kind", ["matvec", "jobs", "glu"])
def test_lines_and_lanes(fmt, kind):
    cols = 1024 if fmt in K_QUANTS else 896  # Qwen2.5-0.5B's width; K-quants whole blocks
    lines, lanes = measure(kind, fmt, cols)
    assert lines <= 1.11, f"{fmt} {kind}: lines touched {lines:.2f}x the minimum"
    assert lanes >= 0.90, f"{fmt} {kind}: {100 * lanes:.0f}% of lanes active"


@pytest.mark.parametrize("fmt", sorted(FLOAT_FORMATS))
def test_a_misaligned_float_matrix_keeps_whole_lines(fmt):
    """A float matrix 32 bytes past a line (GGUF's default alignment): with the head its loads
    still fill lines; without it each 256-byte load of a row would touch three. The head's
    elements and the blocks it leaves over the steps cost lanes: measured 89% here (K = 896,
    one matvec), 90 to 93% over the whole Qwen2.5-0.5B F16 token (docs/metal.md)."""
    lines, lanes = measure("matvec", fmt, 896, misalign=32)
    assert lines <= 1.11 and lanes >= 0.85, (lines, lanes)
    no_head, _ = measure("matvec", fmt, 896, misalign=32, use_head=False)
    assert no_head > 1.15, no_head  # the misalignment is real: the head is what fixes it


def test_the_targets_cover_every_format_with_a_kernel():
    assert set(TARGET) == set(FORMATS)
