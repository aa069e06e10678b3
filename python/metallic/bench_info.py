"""What a benchmark ran: both engines' versions and build options, the source commit, the
machine and the interpreter, as llama-bench records it with each result (bench.py prints it
above the table and puts it in the JSON)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from .system import cpu_model


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_commit() -> dict[str, Any]:
    """The git commit of the source tree this package runs from, or nulls.

    Read at run time, not at build time: the build (scikit-build-core, CMakeLists.txt) records
    no commit in the core, and an sdist build has no repository to ask. So it is known only
    when the package runs from a checkout (an editable install: this file is
    <repo>/python/metallic/bench_info.py and <repo> is a git work tree); an installed wheel reports
    null. It describes the Python sources; the compiled core is rebuilt only on install and may
    predate it: core_file_mtime (build_info) tells when the core was built."""
    none = {"git_commit": None, "git_dirty": None}
    root = Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root:
        return none  # not a checkout, or a repository that merely contains an installed copy
    head = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if head is None:
        return none
    return {
        "git_commit": head.strip(),
        "git_dirty": None if status is None else bool(status.strip()),
    }


def build_info(
    engines: dict[str, dict[str, Any]], threads_requested: int | None = None
) -> dict[str, Any]:
    """What ran, as llama-bench records it with each result: both engines' versions and build
    options, the threads and backend each worker reported (`engines`: run_bench's third
    value), the machine and the interpreter. The text header (format_header) and the JSON
    output are both made from this."""
    import numpy

    from . import __version__, _core
    from .system import logical_cpus

    ours = engines.get("metallic", {})
    build_type = getattr(_core, "build_type", None)  # not exposed by the core (yet): null
    info: dict[str, Any] = {
        "metallic": {
            "version": __version__,
            **source_commit(),
            "core_file_mtime": _mtime(_core.__file__),
            "kernel_isa": ours.get("kernel_isa", _core.kernel_isa()),
            "sanitizers": _core.sanitizers or None,
            "build_type": build_type() if callable(build_type) else build_type,
            "metal_available": bool(_core.metal_available()),
            "metal_sim_available": bool(_core.metal_sim_available()),
            "backend": ours.get("backend"),
            "threads": ours.get("threads"),
        },
        "peer": None,
        "threads_requested": threads_requested,  # null: the default, metallic's own choice
        "cpu": {
            "model": cpu_model(),
            "logical_cpus": logical_cpus(),
            "physical_cores": _core.physical_cores(),
        },
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "os": platform.platform(),
    }
    if "llama.cpp" in engines:
        peer = engines["llama.cpp"]
        info["peer"] = {
            "name": "llama.cpp",
            "package": "llama-cpp-python",
            "version": peer.get("version"),
            "system_info": peer.get("system_info"),
            "threads": peer.get("threads"),
        }
    return info


def _mtime(path: str | None) -> str | None:
    if not path:
        return None
    try:
        t = os.stat(path).st_mtime
    except OSError:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def format_header(info: dict[str, Any]) -> str:
    """build_info() as the lines printed above the table."""
    m = info["metallic"]
    commit = m["git_commit"]
    if commit is None:
        source = "source commit unknown"
    else:
        source = f"git {commit[:12]}" + (" + uncommitted changes" if m["git_dirty"] else "")
    lines = [
        f"metallic {m['version']} ({source}): backend {m['backend']}, {m['threads']} threads, "
        f"{m['kernel_isa']} kernels",
        f"  core file from {m['core_file_mtime'] or '?'}: build type "
        f"{m['build_type'] or 'unknown'}, sanitizers {m['sanitizers'] or 'none'}, "
        f"metal {'yes' if m['metal_available'] else 'no'}, "
        f"metal-sim {'yes' if m['metal_sim_available'] else 'no'}",
    ]
    peer = info["peer"]
    if peer:
        lines.append(
            f"{peer['name']} ({peer['package']} {peer['version']}): {peer['threads']} threads"
        )
        if peer["system_info"]:
            lines.append(f"  {peer['system_info']}")
    cpu = info["cpu"]
    lines.append(
        f"CPU: {cpu['model'] or 'unknown'} ({cpu['logical_cpus']} logical CPUs, "
        f"{cpu['physical_cores']} physical cores); {info['os']}; Python {info['python']}, "
        f"numpy {info['numpy']}"
    )
    counts = {m["threads"]} | ({peer["threads"]} if peer else set())
    asked = info["threads_requested"]
    if not asked:
        how = "the default: metallic's own choice, the physical cores"
    elif asked != m["threads"]:
        how = f"-t {asked}, capped at the logical CPUs"
    else:
        how = f"-t {asked}"
    if len(counts) == 1:
        both = "both engines" if peer else "metallic"
        lines.append(f"threads: {m['threads']} for {both} ({how})")
    else:  # never by design; said loudly if it happens
        lines.append(f"threads DIFFER: metallic {m['threads']}, llama.cpp {peer['threads']}")
    return "\n".join(lines)
