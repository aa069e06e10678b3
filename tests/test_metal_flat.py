"""The kernels as a Mac without the Metal toolchain compiles them at run time (one flattened
source per .metal file, cpp/metal/flatten_msl.py): the same kernels, the same MSL rules, and
the C++ header that embeds them holds them byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

sys.path.insert(0, str(REPO / "cpp" / "metal"))
from flatten_msl import FlattenError, flatten, header  # noqa: E402

METAL_FILES = sorted((REPO / "metal").glob("*.metal"))


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flat")
    for f in METAL_FILES:
        (out / f.name).write_text(flatten(f, REPO))
    return out


def test_each_header_is_inlined_once_and_no_local_include_is_left(flat: Path) -> None:
    for f in METAL_FILES:
        text = (flat / f.name).read_text()
        starts = [line for line in text.splitlines() if line.startswith("#line 1 ")]
        assert len(starts) == len(set(starts)), f.name  # each file once
        assert starts[0] == f'#line 1 "metal/{f.name}"'
        for line in text.splitlines():
            if line.lstrip().startswith('#include "'):
                # only the host side's includes stay, under #ifndef __METAL_VERSION__
                assert "engine/" in line, (f.name, line)
        assert "#pragma once" not in text


def kernels(files: list[Path], root: Path, out: Path) -> list[str]:
    found = []
    for f in files:
        p = subprocess.run(
            [sys.executable, str(REPO / "cpp/metal/sim/gen_kernels.py"), "--root", str(root)]
            + ["--out", str(out), "--list", str(f)],
            capture_output=True,
            text=True,
            check=True,
        )
        found += [line.split(": ", 1)[1] for line in p.stdout.splitlines()]
    return sorted(found)


def test_the_simulator_finds_the_same_kernels(flat: Path, tmp_path: Path) -> None:
    original = kernels(METAL_FILES, REPO, tmp_path / "a")
    flattened = kernels(sorted(flat.glob("*.metal")), flat, tmp_path / "b")
    assert original and flattened == original


def test_the_flattened_files_keep_the_msl_rules(flat: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(REPO / ".ci/check_msl.py"), *map(str, sorted(flat.glob("*.metal")))],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_embedded_header_holds_the_sources(flat: Path, tmp_path: Path) -> None:
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    sources = {f.name: (flat / f.name).read_text() for f in METAL_FILES}
    (tmp_path / "embedded_msl.h").write_text(header(sources))
    (tmp_path / "dump.cpp").write_text(
        '#include "embedded_msl.h"\n#include <cstdio>\n'
        "int main() {\n"
        "    for (const auto& s : metallic::embedded_msl::kSources) {\n"
        '        std::FILE* f = std::fopen(s.name, "w");\n'
        "        std::fputs(s.text, f);\n"
        "        std::fclose(f);\n"
        '        std::printf("%s %d\\n", s.name, int(s.exact_math));\n'
        "    }\n}\n"
    )
    build = subprocess.run(
        [cxx, "-std=c++17", "dump.cpp", "-o", "dump"], cwd=tmp_path, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    (tmp_path / "out").mkdir()
    run = subprocess.run(
        [str(tmp_path / "dump")], cwd=tmp_path / "out", check=True, capture_output=True, text=True
    )
    for name, text in sources.items():
        assert (tmp_path / "out" / name).read_text() == text, name
    # The kernels that must round as the host, or keep NaN and infinity tests, are compiled
    # without fast math on a Mac without the toolchain too (gpu_metal.mm reads the flag).
    exact = {line.split()[0] for line in run.stdout.splitlines() if line.endswith(" 1")}
    assert exact == {"argmax.metal", "sample.metal"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"k.metal": '#if FOO\n#include "a.h"\n#endif\n', "a.h": "#pragma once\n"},
            "under a condition other than __METAL_VERSION__",
        ),
        ({"k.metal": '#include "a.h"\n', "a.h": "int x;\n"}, "must be #pragma once"),
        ({"k.metal": '#include "missing.h"\n'}, "cannot find"),
        ({"k.metal": "#endif\n"}, "#endif without #if"),
    ],
)
def test_what_cannot_be_flattened_is_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(FlattenError, match=message):
        flatten(tmp_path / "k.metal", tmp_path)


def test_branches_follow_metal_version(tmp_path: Path) -> None:
    (tmp_path / "a.h").write_text("#pragma once\nint a;\n")
    (tmp_path / "host.h").write_text("#pragma once\nint host;\n")
    (tmp_path / "k.metal").write_text(
        '#ifdef __METAL_VERSION__\n#include "a.h"\n#else\n#include "host.h"\n#endif\n'
        '#if !defined(__METAL_VERSION__)\n#include "host.h"\n#endif\n'
    )
    text = flatten(tmp_path / "k.metal", tmp_path)
    assert "int a;" in text  # inlined: Metal compiles this branch
    assert "int host;" not in text and text.count('#include "host.h"') == 2  # left: never opened
