"""The Metal simulator itself: its MSL surface (collectives, vectors, half, atomics, function
constants) and its guards against threadgroup mistakes (tests/metal_kernels/)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from metal_sim_helpers import core

GUARDS = os.path.join(os.path.dirname(__file__), "metal_kernels", "guards.metal")

# The guard kernels are built into development installs only (pyproject.toml's editable
# override turns METALLIC_SIM_TEST_KERNELS on); a wheel leaves them out.
pytestmark = pytest.mark.skipif(
    "guard_missing_barrier" not in core.sim_kernels(),
    reason="this build has no simulator test kernels: install with `pip install -e .` "
    "(or build with -DMETALLIC_SIM_TEST_KERNELS=ON)",
)


def guard_lines(kernel, marker="// GUARD"):
    """Lines of the marked statements inside the named kernel of guards.metal."""
    lines = open(GUARDS).read().splitlines()
    start = next(i for i, s in enumerate(lines) if f"void {kernel}(" in s)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("kernel ")), len(lines)
    )
    return [i + 1 for i in range(start, end) if marker in lines[i]]


def run_isolated(kernel, n_threads=32):
    """Runs a kernel that must abort in a child process; returns (returncode, stderr)."""
    code = (
        "import numpy as np, metallic._core as c\n"
        f"c.sim_dispatch({kernel!r}, [np.zeros(64, np.float32)], [2], [{n_threads}])\n"
        "print('no abort')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


# ---- guards ----------------------------------------------------------------------------------


def test_missing_barrier_reads_poison():
    out = np.zeros(64, np.float32)
    core.sim_dispatch("guard_missing_barrier", [out], [1], [64])
    # every thread read its neighbour before the neighbour wrote: all NaN, except the last
    # thread's read of slot 0, which thread 0 wrote long before
    assert np.isnan(out[:63]).all() and out[63] == 0.0
    core.sim_dispatch("guard_with_barrier", [out], [1], [64])
    assert np.array_equal(out, (np.arange(64) + 1) % 64)
    # the lower neighbour: threadgroup 0 runs forwards (reads see written values), threadgroup 1
    # backwards (reads see the poison)
    out2 = np.zeros((2, 64), np.float32)
    core.sim_dispatch("guard_missing_barrier_down", [out2], [2], [64])
    assert np.array_equal(out2[0, 1:], np.arange(63))
    assert np.isnan(out2[1, 1:]).all()


def test_unwritten_threadgroup_memory_is_nan():
    out = np.zeros(64, np.float32)
    core.sim_dispatch("guard_unwritten", [out], [3], [64])
    assert (out[0::2] == 1.0).all() and np.isnan(out[1::2]).all()


@pytest.mark.parametrize(
    "kernel,what",
    [
        ("guard_divergent_barrier", "threadgroup_barrier reached by only 16 of 32 threads"),
        ("guard_split_barrier", "barrier in divergent control flow"),
        ("guard_divergent_simd", "simd_sum reached by only 16 of 32 lanes"),
        ("guard_tg_oob", "written out of bounds"),
    ],
)
def test_guard_aborts_with_metal_line(kernel, what):
    rc, err = run_isolated(kernel)
    assert rc != 0, err
    # the message starts with file:line of the offending statement (both sites for a split)
    assert err.split(": metal-sim error")[0].endswith(
        tuple(f"guards.metal:{n}" for n in guard_lines(kernel))
    ), err
    for n in guard_lines(kernel):
        assert f"guards.metal:{n}" in err, err
    assert what in err, err


def test_missing_function_constant_aborts():
    rc, err = run_isolated("guard_missing_constant")
    line = next(i + 1 for i, s in enumerate(open(GUARDS)) if "constant int guard_fc" in s)
    assert rc != 0 and f"guards.metal:{line}:" in err and "guard_fc (index 3)" in err, err


def test_threadgroup_limits_are_enforced():
    with pytest.raises(ValueError, match="1..1024"):
        core.sim_dispatch("guard_with_barrier", [np.zeros(64, np.float32)], [1], [2048])
    with pytest.raises(ValueError, match="no kernel"):
        core.sim_dispatch("no_such_kernel", [], [1], [1])
    with pytest.raises(ValueError, match="buffers"):
        core.sim_dispatch("guard_with_barrier", [], [1], [32])


# ---- MSL surface ------------------------------------------------------------------------------


def test_simd_collectives():
    n = 80  # two full simdgroups and a partial one of 16 lanes
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out = np.zeros((n, 10), np.float32)
    core.sim_dispatch("feat_simd", [x, out], [1], [n])
    for base in (0, 32, 64):
        lanes = min(32, n - base)
        v = x[base : base + lanes]
        o = out[base : base + lanes]
        idx = np.arange(lanes)
        np.testing.assert_allclose(o[:, 0], np.float32(v.sum()), rtol=1e-5)
        assert (o[:, 1] == v.max()).all() and (o[:, 2] == v.min()).all()
        src = (idx + 5) % 32
        np.testing.assert_array_equal(
            o[:, 3], np.where(src < lanes, v[np.minimum(src, lanes - 1)], v)
        )
        down = idx + 3
        np.testing.assert_array_equal(
            o[:, 4], np.where(down < lanes, v[np.minimum(down, lanes - 1)], v)
        )
        np.testing.assert_array_equal(o[:, 5], v[idx ^ 1])
        np.testing.assert_array_equal(o[:, 6], v[7])
        np.testing.assert_allclose(
            o[:, 7], np.concatenate([[0], np.cumsum(v)[:-1]]), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(o[:, 8], np.where(idx >= 2, v[np.maximum(idx - 2, 0)], v))
        assert (o[:, 9] == idx.sum()).all()


def test_vectors_half_packed():
    n = 5
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, 4)) * 3).astype(np.float32)
    p = rng.standard_normal((n, 3)).astype(np.float32)  # packed_float3: 12 bytes each
    out = np.zeros((n * 4, 4), np.float32)
    h = np.zeros((n, 4), np.float16)
    bits = np.zeros(n, np.uint32)
    core.sim_dispatch("feat_vectors", [x, out, p, h, bits], [1], [n])
    o = out.reshape(n, 4, 4)
    np.testing.assert_array_equal(o[:, 0], np.concatenate([x[:, 2:], x[:, :2]], axis=1))
    np.testing.assert_array_equal(o[:, 1], np.where(x < 0, 0, x))
    np.testing.assert_array_equal(o[:, 2, :3], p)
    np.testing.assert_allclose(o[:, 2, 3], (x * x).sum(1), rtol=1e-6)
    np.testing.assert_allclose(o[:, 3], x * x + 1 + np.maximum(x, 2) * 0.5, rtol=1e-6)
    # half arithmetic rounds like IEEE binary16: (half)x * 3 rounded once
    np.testing.assert_array_equal(h, x.astype(np.float16) * np.float16(3))
    np.testing.assert_array_equal(bits, x[:, 0].view(np.uint32))


def test_atomics():
    groups, tg = 7, 96
    counter = np.zeros(1, np.uint32)
    fsum = np.zeros(1, np.float32)
    per_group = np.zeros(groups, np.uint32)
    core.sim_dispatch("feat_atomics", [counter, fsum, per_group], [groups], [tg])
    assert counter[0] == groups * tg
    assert fsum[0] == 0.5 * groups * tg
    assert (per_group == tg * (tg - 1) // 2).all()


def test_function_constants_and_dynamic_threadgroup_memory():
    x = np.arange(2 * 3 * 16, dtype=np.float32)
    out = np.zeros_like(x)
    grid, tg = [1, 3, 2], [16, 1, 1]
    core.sim_dispatch(
        "feat_constants", [x, out], grid, tg, tg_mem=[64], constants={0: True, 1: 0.5}
    )
    ref = x.reshape(6, 16)[:, ::-1].reshape(-1) * 0.5 * 2
    np.testing.assert_array_equal(out, ref)
    core.sim_dispatch("feat_constants", [x, out], grid, tg, tg_mem=[64], constants={1: 2.0})
    assert (out == -1).all()


def test_counters():
    core.sim_reset_counters()
    out = np.zeros(64, np.float32)
    core.sim_dispatch("guard_with_barrier", [out], [5], [64])
    c = core.sim_counters()
    assert c["dispatches"] == 1 and c["threadgroups"] == 5 and c["threads"] == 320


# ---- AddressSanitizer build (optional) --------------------------------------------------------
# With a _core built with -DMETALLIC_SIM_ASAN=ON, threadgroup red zones are ASan-poisoned and an
# out-of-bounds access is reported at the faulting .metal line, reads included. Point
# METALLIC_SIM_ASAN_CORE at that build's _core*.so to run this test (see cpp/metal/sim/README.md).


@pytest.mark.skipif(
    not os.environ.get("METALLIC_SIM_ASAN_CORE"), reason="METALLIC_SIM_ASAN_CORE not set"
)
def test_asan_build_reports_threadgroup_oob_at_the_line():
    so = os.environ["METALLIC_SIM_ASAN_CORE"]
    libasan = subprocess.run(
        ["g++", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('metallic._core', {so!r})\n"
        "c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)\n"
        "out = np.zeros(64, np.float32)\n"
        "c.sim_dispatch('guard_with_barrier', [out], [4], [64])\n"
        "c.sim_dispatch('guard_tg_oob', [out], [1], [32])\n"
    )
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode != 0
    line = guard_lines("guard_tg_oob")[0] + 1  # the write after the declaration
    # AddressSanitizer's report, or UndefinedBehaviorSanitizer's bounds check where the build
    # has both (.ci/sanitize): either names the .metal line.
    reported = "AddressSanitizer" in p.stderr or "runtime error: index" in p.stderr
    assert reported and f"guards.metal:{line}" in p.stderr, p.stderr[-3000:]
