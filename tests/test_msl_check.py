"""The MSL rule checker (.ci/check_msl.py): the kernels pass, and the mistakes neither the
simulator nor the OpenCL address-space check can see are caught, each by its own rule and at its
line. Planted cases mark the lines that must be reported with `// PLANT`."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "check_msl.py")
# The last commit with rope.metal's mixed-width signatures (scalar thread_position_in_threadgroup
# beside a uint2 threadgroup_position_in_grid); pinned, since HEAD moves past the fix.


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def violations(stdout):
    """[(file, line, rule)] of the checker's output lines."""
    out = []
    for s in stdout.splitlines():
        m = re.match(r"^(.*?):(\d+): ([a-z-]+): ", s)
        if m:
            out.append((m.group(1), int(m.group(2)), m.group(3)))
    return out


def test_kernels_pass():
    p = run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert violations(p.stdout) == []
    assert "0 violations" in p.stderr


def test_summary_reports_what_each_file_needs():
    p = run("--summary")
    lines = {s.split(":", 1)[0]: s for s in p.stdout.splitlines()}
    assert lines["target"].startswith("target: metal3.0 (CMakeLists.txt), Apple7")
    assert "MSL 2.3, Apple7+" in lines["metal/gemm.metal"]
    assert "simdgroup_matrix 2.3 Apple7+ (metal/gemm.h:" in lines["metal/gemm.metal"]
    assert "simd reductions 2.1 Apple7+" in lines["metal/rope.metal"]
    assert "atomic_float 3.0 Apple7+" in lines["tests/metal_kernels/features.metal"]
    # No comment counts: gemm.h's header comment names simdgroup_matrix on line 1.
    assert "(metal/gemm.h:1)" not in lines["metal/gemm.metal"]


def test_the_fixed_rope_passes():
    # Before the fix every kernel of rope.metal mixed a uint2 threadgroup position with a scalar
    # thread position (PLANTED["rope-mixed-width"] below is that pattern, caught).
    assert run(os.path.join(ROOT, "metal", "rope.metal")).returncode == 0


HEAD = "#include <metal_stdlib>\nusing namespace metal;\n"

# (rule, source): every line marked // PLANT must be reported under that rule, and nothing else.
PLANTED = {
    "rope-mixed-width": (
        "builtin-width",
        """
kernel void rope(device float* x [[buffer(0)]],
                 uint2 tgpig [[threadgroup_position_in_grid]],
                 uint i [[thread_position_in_threadgroup]]) {  // PLANT
    x[tgpig.x + i] = 0.0f;
}
kernel void sizes(device float* x [[buffer(0)]],
                  uint3 tpig [[thread_position_in_grid]],
                  uint3 tpg [[threads_per_grid]],
                  ushort2 ntg [[threads_per_threadgroup]]) {  // PLANT
    x[tpig.x] = 0.0f;
}
kernel void agreeing(device float* x [[buffer(0)]],
                     uint3 tgpig [[threadgroup_position_in_grid]],
                     ushort3 tpitg [[thread_position_in_threadgroup]],
                     ushort3 ntg [[threads_per_threadgroup]],
                     ushort tiitg [[thread_index_in_threadgroup]],
                     ushort tiisg [[thread_index_in_simdgroup]]) {
    x[tgpig.x * ntg.x + tpitg.x] = float(tiitg + tiisg);
}
""",
    ),
    "simd-index-type": (
        "builtin-type",
        """
kernel void k(device float* x [[buffer(0)]],
              uint2 lane [[thread_index_in_simdgroup]],  // PLANT
              int sg [[simdgroup_index_in_threadgroup]],  // PLANT
              float n [[threads_per_simdgroup]],  // PLANT
              uint4 gid [[thread_position_in_grid]]) {  // PLANT
    x[gid.x] = float(sg);
}
""",
    ),
    "duplicate-buffer": (
        "buffer-index",
        """
kernel void k(device float* x [[buffer(0)]],
              device const float* y [[buffer(1)]],
              device float* z [[buffer(1)]],  // PLANT
              device float* w [[buffer(31)]],  // PLANT
              uint i [[thread_position_in_grid]]) {
    x[i] = y[i] + z[i] + w[i];
}
""",
    ),
    "duplicate-threadgroup": (
        "threadgroup-index",
        """
kernel void k(device float* x [[buffer(0)]],
              threadgroup float* a [[threadgroup(0)]],
              threadgroup float* b [[threadgroup(0)]],  // PLANT
              uint i [[thread_position_in_grid]]) {
    x[i] = a[i] + b[i];
}
""",
    ),
    "kernel-return": (
        "kernel-return",
        """
kernel float k(device float* x [[buffer(0)]], uint i [[thread_position_in_grid]]) {  // PLANT
    return x[i];
}
""",
    ),
    "address-space": (
        "address-space",
        """
kernel void k(float* x [[buffer(0)]],  // PLANT
              thread float* y [[buffer(1)]],  // PLANT
              device float* s [[threadgroup(0)]],  // PLANT
              thread float* t,  // PLANT
              constant float& scale [[buffer(2)]],
              uint i [[thread_position_in_grid]]) {
    x[i] = y[i] * scale + s[i] + t[i];
}
""",
    ),
    "execution-width-and-simd-width": (
        "builtin-conflict",
        """
kernel void k(device uint* x [[buffer(0)]],
              uint w [[thread_execution_width]],
              uint n [[threads_per_simdgroup]]) {  // PLANT
    x[0] = w + n;
}
""",
    ),
    "mismatched-types": (
        "builtin-type-match",
        """
kernel void k(device float* x [[buffer(0)]],
              ushort3 tpitg [[thread_position_in_threadgroup]],
              uint3 ntg [[threads_per_threadgroup]],  // PLANT
              uint tiitg [[thread_index_in_threadgroup]],  // PLANT
              ushort lane [[thread_index_in_simdgroup]],
              uint sg [[simdgroup_index_in_threadgroup]]) {  // PLANT
    x[tiitg] = float(tpitg.x + ntg.x + lane + sg);
}
""",
    ),
    "duplicate-kernel-name": (
        "host-name",
        """
template <typename T>
kernel void k(device T* x [[buffer(0)]], uint i [[thread_position_in_grid]]) { x[i] = T(0); }
template [[host_name("k_f32")]] [[kernel]] decltype(k<float>) k<float>;
template [[host_name("k_f32")]] [[kernel]] decltype(k<half>) k<half>;  // PLANT
kernel void k_f16(device half* x [[buffer(0)]]) { x[0] = 0; }
#if __METAL_VERSION__ >= 310
kernel void k_bf16(device bfloat* x [[buffer(0)]]) { x[0] = 0; }
#else
kernel void k_bf16(device ushort* x [[buffer(0)]]) { x[0] = 0; }
#endif
template [[host_name("k_f16")]] [[kernel]] decltype(k<half>) k<half>;  // PLANT
""",
    ),
    "bfloat-above-metal3.0": (
        "msl-version",
        """
// bfloat in a comment counts for nothing
#if __METAL_VERSION__ >= 310
kernel void guarded(device bfloat* x [[buffer(0)]]) { x[0] = bfloat(0.0f); }
#endif
kernel void k(device bfloat* x [[buffer(0)]]) { x[0] = bfloat(0.0f); }  // PLANT
""",
    ),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_planted_mistake_is_caught(tmp_path, case):
    rule, body = PLANTED[case]
    src = tmp_path / f"{case}.metal"
    src.write_text(HEAD + body)
    p = run(str(src))
    assert p.returncode == 1, p.stdout + p.stderr
    lines = src.read_text().splitlines()
    expected = [(str(src), i + 1, rule) for i, s in enumerate(lines) if "// PLANT" in s]
    assert expected
    assert violations(p.stdout) == expected, p.stdout


SIMDGROUP_MATRIX = """
kernel void mm(device const float* a [[buffer(0)]],
               device float* c [[buffer(1)]],
               uint sg [[simdgroup_index_in_threadgroup]]) {
    simdgroup_float8x8 m;  // PLANT
    simdgroup_load(m, a, 8);
    simdgroup_multiply_accumulate(m, m, m, m);
    simdgroup_store(m, c + sg * 64, 8);
}
"""


def test_simdgroup_matrix_above_a_lower_declared_target(tmp_path):
    """The target is read from the CMake file's -std=metalX.Y: simdgroup_matrix (MSL 2.3) fails
    under metal2.2 and passes under the project's metal3.0."""
    src = tmp_path / "mm.metal"
    src.write_text(HEAD + SIMDGROUP_MATRIX)
    cmake = tmp_path / "CMakeLists.txt"
    cmake.write_text(
        "# -std=metal3.1 in a comment does not count\n"
        "add_custom_command(COMMAND xcrun -sdk macosx metal -std=metal2.2 -c x.metal)\n"
    )
    p = run("--cmake", str(cmake), "--summary", str(src))
    assert p.returncode == 1, p.stdout + p.stderr
    line = next(i + 1 for i, s in enumerate(src.read_text().splitlines()) if "// PLANT" in s)
    assert violations(p.stdout) == [(str(src), line, "msl-version")], p.stdout
    assert "needs MSL 2.3; the target is metal2.2" in p.stdout
    assert f"{src}: MSL 2.3, Apple7+" in p.stdout
    # --target overrides the CMake file; the project's own target accepts it.
    assert run("--cmake", str(cmake), "--target", "2.3", str(src)).returncode == 0
    assert run(str(src)).returncode == 0
