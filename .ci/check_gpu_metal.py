#!/usr/bin/env python3
"""Syntax and ARC check of cpp/metal/gpu_metal.mm with clang on machines without Apple's SDK.

The file is compiled with -fsyntax-only as Objective-C++ with ARC against .ci/metal_objc_stubs/,
which declares the Foundation and Metal API the file uses with the signatures of Apple's
documentation. It catches C++/Objective-C++ mistakes and misspelled selectors (relative to the
stubs); it cannot catch a wrong stub: compiling on a Mac remains the real test.

Checked twice: as built with Apple's Metal toolchain (metallic.metallib), and as built without
it (METALLIC_METAL_RUNTIME_SOURCE: the kernels embedded by cpp/metal/flatten_msl.py).

Exit status 0 when the file checks; 77 when clang is missing (skip).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    clang = next(
        (
            shutil.which(c)
            for c in (
                "clang++",
                "clang++-19",
                "clang++-18",
                "clang++-17",
                "clang++-16",
                "clang++-15",
                "clang++-14",
            )
            if shutil.which(c)
        ),
        None,
    )
    if not clang:
        print("check_gpu_metal: clang++ not found; skipped")
        return 77
    cmd = [
        clang,
        "-std=c++17",
        "-fsyntax-only",
        "-x",
        "objective-c++",
        "-fobjc-arc",
        "-fobjc-runtime=macosx-13",
        "-fblocks",
        "-D__APPLE__",
        "-Wall",
        "-I",
        os.path.join(ROOT, ".ci", "metal_objc_stubs"),
        "-I",
        os.path.join(ROOT, "cpp"),
        os.path.join(ROOT, "cpp", "metal", "gpu_metal.mm"),
    ]
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        kernels = sorted(glob.glob(os.path.join(ROOT, "metal", "*.metal")))
        flatten = os.path.join(ROOT, "cpp", "metal", "flatten_msl.py")
        header = os.path.join(tmp, "embedded_msl.h")
        subprocess.run(
            [sys.executable, flatten, "--root", ROOT, "--header", header, *kernels], check=True
        )
        for label, extra in (
            ("precompiled library", []),
            ("embedded source", ["-DMETALLIC_METAL_RUNTIME_SOURCE", "-I", tmp]),
        ):
            p = subprocess.run(cmd[:-1] + extra + cmd[-1:], capture_output=True, text=True)
            sys.stdout.write(p.stdout + p.stderr)
            print(f"cpp/metal/gpu_metal.mm ({label})", "ok" if p.returncode == 0 else "FAILED")
            status = status or p.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
