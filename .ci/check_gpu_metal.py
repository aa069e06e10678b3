#!/usr/bin/env python3
"""Syntax and ARC check of cpp/metal/gpu_metal.mm with clang on machines without Apple's SDK.

The file is compiled with -fsyntax-only as Objective-C++ with ARC against .ci/metal_objc_stubs/,
which declares the Foundation and Metal API the file uses with the signatures of Apple's
documentation. It catches C++/Objective-C++ mistakes and misspelled selectors (relative to the
stubs); it cannot catch a wrong stub: compiling on a Mac remains the real test.

Exit status 0 when the file checks; 77 when clang is missing (skip).
"""

import os
import shutil
import subprocess
import sys

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
    p = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(p.stdout + p.stderr)
    print("cpp/metal/gpu_metal.mm", "ok" if p.returncode == 0 else "FAILED")
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
