"""The clang C++-for-OpenCL address-space check of metal/*.metal
(.ci/check_metal_address_spaces.py): the real kernels pass, and the mistakes the simulator cannot
see are caught with their lines."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, ".ci", "check_metal_address_spaces.py")
NEGATIVE = os.path.join(
    ROOT, "tests", "metal_kernels", "opencl_negative", "address_space_mistakes.metal"
)

# CI installs clang (.ci/run), and conftest.py fails a skip there; elsewhere it is optional.
pytestmark = pytest.mark.skipif(
    shutil.which("clang") is None, reason="clang not installed (apt-get install clang)"
)


def run(*files):
    return subprocess.run(
        [sys.executable, SCRIPT, *files], capture_output=True, text=True, timeout=300
    )


def test_metal_kernels_pass():
    p = run()
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0 failed" in p.stdout


def test_address_space_mistakes_are_caught():
    p = run(NEGATIVE)
    assert p.returncode == 1
    lines = open(NEGATIVE).read().splitlines()
    expected = [i + 1 for i, s in enumerate(lines) if "// MISTAKE" in s]
    assert len(expected) == 4
    for n in expected:
        assert f"address_space_mistakes.metal:{n}:" in p.stdout, p.stdout


@pytest.mark.skipif(
    shutil.which("clang++") is None,
    reason="clang++ not installed (apt-get install clang): the Objective-C++ check of gpu_metal.mm",
)
def test_gpu_metal_mm_type_checks_against_the_api_stubs():
    """cpp/metal/gpu_metal.mm (compiled only on Apple) as Objective-C++ with ARC against
    .ci/metal_objc_stubs: catches syntax, C++ and selector mistakes before a Mac sees the file."""
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, ".ci", "check_gpu_metal.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    # both builds: with the Metal toolchain's metallib, and with the embedded kernel sources
    assert "(precompiled library) ok" in p.stdout and "(embedded source) ok" in p.stdout
