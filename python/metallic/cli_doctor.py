"""`doctor`: what a user pastes into a bug report. The machine, the build, whether Metal can run
and why not, and the GPU self-test's result (selftest.py), one `key: value` line each."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

# The environment variables that change what metallic runs, reported when set.
_ENV = (
    "METALLIC_BACKEND",
    "METALLIC_SELF_TEST",
    "METALLIC_METALLIB",
    "METALLIC_SIM_SKIP_KERNEL",
    "METALLIC_SIM_MAX_BUFFER_LENGTH",
    "METALLIC_PROFILE",
    "METALLIC_ENABLE_PROFILING",
    "METALLIC_LOG_LEVEL",
    "METALLIC_METRICS_JSONL_PATH",
    "METALLIC_METRICS_CONSOLE",
)
_PACKAGES = ("numpy", "gguf", "jinja2", "huggingface_hub")


def register(sub: Any) -> None:
    d = sub.add_parser(
        "doctor",
        help="show the machine, the build and the GPU self-test, for bug reports",
        description="Print what a bug report needs, one 'key: value' line each: metallic and "
        "Python versions, OS, chip, CPU kernel set, CPUs, memory, whether Metal can run here "
        "(and why not), the GPU, where the Metal kernels come from, the result of the GPU "
        "self-test (a tiny model on the GPU against the CPU backend; `auto` uses Metal only when "
        "it passes), the backend `auto` chooses, the simulator, the versions of the "
        "dependencies and the METALLIC_* variables set. Exit status 1 when the self-test ran "
        "and failed.",
    )
    d.add_argument(
        "--backend",
        choices=("metal", "metal-sim"),
        default="metal",
        help="where to run the self-test: metal (the default; not run when this machine has no "
        "usable Metal GPU) or metal-sim (the Metal kernels on the CPU simulator, on any machine "
        "whose build has it)",
    )
    d.add_argument(
        "--formats",
        type=formats_arg,
        default=None,
        metavar="LIST",
        help="weight formats the self-test covers, comma-separated (F16,Q8_0,Q4_K is the "
        "default), or 'all' for every format the Metal backend reads",
    )
    d.add_argument("--json", action="store_true", help="print one JSON object instead")
    d.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    info = report(args.backend, args.formats)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for key, value in info.items():
            print(f"{key}: {_text(key, value)}")
    test = info["self_test"]
    return 1 if test["ran"] and not test["passed"] else 0


def formats_arg(text: str) -> list[Any]:
    """--formats: names of weight formats the self-test covers, or 'all'."""
    from .selftest import supported_types

    supported = supported_types()
    if text.strip().lower() == "all":
        return list(supported)
    names = {t.name: t for t in supported}
    out = []
    for name in (n.strip().upper() for n in text.split(",") if n.strip()):
        if name not in names:
            raise argparse.ArgumentTypeError(
                f"unknown or unsupported format '{name}' (supported: {', '.join(names)}, or all)"
            )
        if names[name] not in out:
            out.append(names[name])
    if not out:
        raise argparse.ArgumentTypeError("no format given")
    return out


def report(backend: str = "metal", formats: list[Any] | None = None) -> dict[str, Any]:
    """Every line of `doctor`, in order. `backend`: where the self-test runs."""
    from . import __version__, _core
    from .system import cpu_model, logical_cpus

    mac = sys.platform == "darwin"
    info: dict[str, Any] = {
        "metallic": f"metallic-llm {__version__} ({os.path.dirname(os.path.abspath(__file__))})",
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
        f"{sys.executable})",
        "os": platform.platform(),
        "macos": (platform.mac_ver()[0] or "unknown") if mac else "n/a (not macOS)",
        "machine": _machine(mac),
        "chip": cpu_model() or "unknown",
        "cpu_kernels": _core.kernel_isa(),
        "logical_cpus": logical_cpus(),
        "physical_cores": _core.physical_cores(),
        "memory": _memory_bytes(mac),
    }
    metal_ok = bool(_core.metal_available())
    info["metal"] = "available" if metal_ok else f"not available: {_core.metal_problem()}"
    info["gpu"] = _gpu_name(mac)
    # What MTLDevice says of itself (supportsFamily:, its limits); empty with no device.
    device = dict(_core.metal_device_info())
    info["gpu_family"] = device.get("family", "n/a (no Metal device)")
    info["gpu_limits"] = (
        "recommended working set "
        f"{int(device['recommended_max_working_set_size']) / 2**30:.1f} GiB, "
        f"largest buffer {int(device['max_buffer_length']) / 2**30:.1f} GiB, "
        f"unified memory: {device['has_unified_memory']}"
        if device
        else "n/a (no Metal device)"
    )
    info["metal_library"] = _core.metal_library()
    info["metal_sim"] = (
        "available (backend 'metal-sim')"
        if _core.metal_sim_available()
        else "not in this build (METALLIC_METAL_SIM=OFF)"
    )
    info["self_test"] = _self_test(backend, formats)
    info["auto_backend"] = _auto_backend(formats)
    for name in _PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = "not installed"
    env = [f"{k}={os.environ[k]}" for k in _ENV if os.environ.get(k)]
    info["environment"] = " ".join(env) if env else "none of metallic's variables set"
    return info


def _self_test(backend: str, formats: list[Any] | None) -> dict[str, Any]:
    from . import _core
    from .selftest import DEFAULT_TYPES, gpu_self_test

    names = ", ".join(t.name for t in (formats or DEFAULT_TYPES))
    out: dict[str, Any] = {
        "backend": backend,
        "formats": names,
        "ran": False,
        "passed": None,
        "seconds": None,
    }
    if backend == "metal" and not _core.metal_available():
        out["detail"] = (
            "not run: no usable Metal GPU (--backend metal-sim runs it on the simulator)"
        )
        return out
    if backend == "metal-sim" and not _core.metal_sim_available():
        out["detail"] = "not run: this build has no simulator"
        return out
    try:
        result = gpu_self_test(backend, formats)
    except Exception as e:  # a report must print whatever broke: the failure is its content
        out.update(ran=True, passed=False, detail=f"error: {type(e).__name__}: {e}", seconds=0.0)
        return out
    out.update(ran=True, passed=result.passed, detail=result.detail, seconds=result.seconds)
    return out


def _auto_backend(formats: list[Any] | None) -> str:
    import warnings

    from .model import choose_backend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note is the value shown
        try:
            chosen, note = choose_backend("auto", formats)
        except Exception as e:  # as for the self-test: shown, not raised
            return f"error: {type(e).__name__}: {e}"
    return f"{chosen} ({note})" if note else chosen


def _text(key: str, value: Any) -> str:
    if key == "self_test":
        if not value["ran"]:
            return f"{value['detail']} [{value['backend']}]"
        return f"{value['detail']} [{value['backend']}, {value['seconds']:.2f} s]"
    if key == "memory":
        return f"{value / 2**30:.1f} GiB" if value else "unknown"
    return str(value)


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _machine(mac: bool) -> str:
    machine = platform.machine() or "unknown"
    # An x86_64 Python on Apple silicon runs under Rosetta 2, where Metal's Apple GPU is out of
    # reach of an Intel build: worth seeing in a report at once.
    if mac and _sysctl("sysctl.proc_translated") == "1":
        machine += " (under Rosetta 2 translation: an Intel Python on Apple silicon)"
    return machine


def _memory_bytes(mac: bool) -> int | None:
    if mac:
        text = _sysctl("hw.memsize")
        return int(text) if text.isdigit() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_name(mac: bool) -> str:
    """The GPU as macOS's system_profiler names it, with its core count (which Metal does not
    report)."""
    if not mac:
        return "n/a (not macOS)"
    try:
        out = subprocess.run(
            ["system_profiler", "SPDisplaysDataType", "-json"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        gpus = json.loads(out.stdout).get("SPDisplaysDataType", [])
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown (system_profiler failed)"
    names = []
    for g in gpus:
        name = g.get("sppci_model") or g.get("_name") or "unknown"
        cores = g.get("sppci_cores")
        metal = g.get("spdisplays_mtlgpufamilysupport")
        extra = ", ".join(x for x in (f"{cores} cores" if cores else "", metal or "") if x)
        names.append(f"{name} ({extra})" if extra else name)
    return "; ".join(names) or "none found by system_profiler"
