#!/usr/bin/env python3
"""Address-space check of metal/*.metal with clang in C++ for OpenCL mode.

The simulator compiles the kernels as plain C++, where MSL's address spaces are empty macros, so
it cannot see a device pointer handed to a function that takes threadgroup memory, or a
threadgroup pointer stored into a device one. clang's C++ for OpenCL keeps __global, __local,
__private and __constant apart: each .metal file, rewritten the way the simulator rewrites it
(cpp/metal/sim/gen_kernels.py: attributes stripped, `threadgroup T x[N];` declarations turned
into references), is type-checked against .ci/metal_opencl/prelude.h, which maps
device->__global, threadgroup->__local, thread->__private, constant->__constant and declares
the Metal library. Templated kernels are checked through their explicit instantiations (kernel
templates are not OpenCL kernels, so `kernel` maps to nothing and they are checked as ordinary
functions with the same address-space rules).

Usage: check_metal_address_spaces.py [files.metal...]   (default: metal/*.metal)
Exit status 0 when every file type-checks; 77 when clang is missing (skip).
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "cpp", "metal", "sim"))
import gen_kernels  # noqa: E402

PRELUDE_DIR = os.path.join(ROOT, ".ci", "metal_opencl")


def find_clang():
    for name in ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14"):
        p = shutil.which(name)
        if p:
            return p
    return None


def main(argv):
    files = argv or sorted(glob.glob(os.path.join(ROOT, "metal", "*.metal")))
    clang = find_clang()
    if not clang:
        print("check_metal_address_spaces: clang not found (apt-get install clang); skipped")
        return 77
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        # Rewritten copies of every .metal and .h under metal/, paths mirrored,
        # #line to the original.
        srcs = glob.glob(os.path.join(ROOT, "metal", "*.metal")) + glob.glob(
            os.path.join(ROOT, "metal", "*.h")
        )
        # Headers the kernels share with the host (GGML block layouts, the sampler's pick):
        # whatever a kernel source includes from outside metal/.
        for src in list(srcs):
            with open(src, encoding="utf-8") as f:
                for inc in re.findall(r'^\s*#\s*include\s*"([^"]+)"', f.read(), re.M):
                    path = os.path.normpath(os.path.join(os.path.dirname(src), inc))
                    if os.path.dirname(path) != os.path.join(ROOT, "metal"):
                        srcs.append(path)
        for src in set(srcs) | {os.path.abspath(f) for f in files}:
            rel = os.path.relpath(src, ROOT)
            dst = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(src, encoding="utf-8") as f:
                text = gen_kernels.rewrite(f.read(), opencl=True)
            with open(dst, "w", encoding="utf-8") as f:
                f.write(f'#line 1 "{src}"\n{text}')
        for f in files:
            rel = os.path.relpath(os.path.abspath(f), ROOT)
            # -cl-no-stdinc: no OpenCL builtin library; the prelude declares Metal's instead.
            cmd = [
                clang,
                "-x",
                "cl",
                "-cl-std=clc++2021",
                "-cl-no-stdinc",
                "-fsyntax-only",
                "-Wno-unknown-attributes",
                "-I",
                PRELUDE_DIR,
                os.path.join(tmp, rel),
            ]
            p = subprocess.run(cmd, capture_output=True, text=True)
            status = "ok" if p.returncode == 0 else "FAILED"
            print(f"{rel:<28} {status}")
            if p.returncode != 0:
                failed += 1
                sys.stdout.write(p.stderr)
    print(f"{len(files) - failed:d} passed, {failed:d} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
