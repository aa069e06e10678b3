"""`python -m metallic bench` on tiny models: the JSON it reports, what it records of the run
(build_info), the threads each engine gets, its progress lines, the decode-bandwidth
accounting, and its argument checks. (Its speed numbers live in benchmarks/.)"""

from __future__ import annotations

import argparse
import io
import json
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import pytest
from gguf import GGUFReader

import metallic
from metallic import _core, bench_info
from metallic import bench as bench_module
from metallic.bench import Result, _model_facts, bandwidth_lines, bench_threads, run_bench
from metallic.bench_info import build_info, format_header, source_commit
from metallic.system import logical_cpus
from oracle.tiny_models import tiny_gguf

REPO = Path(__file__).resolve().parents[1]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    # Bytes, decoded here: text mode would turn the progress line's \r into \n.
    proc = subprocess.run(
        [sys.executable, "-m", "metallic", "bench", *args], capture_output=True, timeout=300
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.mark.parametrize("variant", ["gqa2-untied", "mqa-tied"])
def test_decode_bytes_count_what_a_token_reads(variant: str) -> None:
    """Every tensor once; the embedding table only when it doubles as the output matrix."""
    path = tiny_gguf("qwen2", "Q8_0", variant)[0]
    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    expected = sum(sizes.values())
    if "output.weight" in sizes:
        expected -= sizes["token_embd.weight"]
    assert _model_facts(str(path)).decode_bytes == expected


def test_bandwidth_lines() -> None:
    ours = Result("metallic", "cpu", 2, "tg", 128, [40.0, 50.0])
    peer = Result("llama.cpp", "llama.cpp", 2, "tg", 128, [30.0])
    pp = Result("metallic", "cpu", 2, "pp", 512, [300.0])
    lines = bandwidth_lines([pp, ours, peer], 500_000_000, [30e9, 20e9])
    # 500 MB x 45 t/s = 22.5 GB/s against the mean 25 GB/s; no line for prefill.
    assert len(lines) == 2
    assert "22.5 GB/s, 90% of the streaming read bandwidth (25.0 GB/s" in lines[0]
    assert lines[1].startswith("tg128 llama.cpp:") and "60%" in lines[1]
    assert bandwidth_lines([ours], 500_000_000, []) == []


def test_bench_reports_json() -> None:
    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    proc = bench("-m", str(path), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    tests = {r["test"]: r for r in out["results"]}
    assert set(tests) == {"pp8", "tg4"}
    for r in tests.values():
        assert r["engine"] == "metallic" and r["threads"] == 1
        assert len(r["tps"]) == 2 and all(t > 0 for t in r["tps"])
    assert out["peak_rss"]["metallic"] > 1 << 20
    assert out["decode_bytes_per_token"] == _model_facts(str(path)).decode_bytes
    assert len(out["read_bandwidth"]) == 2 and min(out["read_bandwidth"]) > 1e8
    # Progress into a pipe: one plain line per finished step (2 tests x (warm-up + 2 runs)).
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("bench:")]
    assert len(lines) == 6 and "\r" not in proc.stderr, proc.stderr
    # What ran, as llama-bench records it.
    b = out["build"]
    ours = b["metallic"]
    assert ours["version"] == metallic.__version__
    assert ours["git_commit"] == _expected_commit()
    assert ours["kernel_isa"] == _core.kernel_isa()
    assert ours["sanitizers"] == (_core.sanitizers or None)
    assert ours["metal_available"] == _core.metal_available()
    assert ours["metal_sim_available"] == _core.metal_sim_available()
    assert "build_type" in ours and ours["core_file_mtime"]
    assert ours["backend"] == "cpu" and ours["threads"] == 1
    assert b["threads_requested"] == 1 and b["peer"] is None
    assert b["cpu"]["logical_cpus"] == logical_cpus()
    assert b["cpu"]["physical_cores"] == _core.physical_cores()
    assert b["cpu"]["model"]
    assert b["python"] == platform.python_version() and b["numpy"] == numpy.__version__
    assert b["os"] == platform.platform()


def test_bench_table_reports_the_bandwidth_fraction_and_what_ran() -> None:
    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    proc = bench("-m", str(path), "-p", "0", "-n", "4", "-r", "1")  # default threads
    assert proc.returncode == 0, proc.stderr
    assert "| tg4 " in proc.stdout
    assert "of the streaming read bandwidth" in proc.stdout
    n = bench_threads(None)
    assert f"threads: {n} for metallic (the default: metallic's own choice" in proc.stdout
    assert re.search(rf"\| metallic +\| cpu +\| {n} +\| tg4 ", proc.stdout), proc.stdout
    assert proc.stdout.startswith(f"metallic {metallic.__version__} (")


def _expected_commit() -> str | None:
    """HEAD when the tests run from a checkout (the package is then imported from it)."""
    if Path(bench_info.__file__).resolve().parents[2] != REPO:
        return None
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    return out.stdout.decode().strip() if out.returncode == 0 else None


def test_source_commit_only_from_the_package_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy of the package inside some other repository (a venv in a project, an overlay
    under build/) is not that repository's commit."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    copy = tmp_path / "venv" / "site" / "python" / "metallic" / "bench_info.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("")
    monkeypatch.setattr(bench_info, "__file__", str(copy))
    assert source_commit() == {"git_commit": None, "git_dirty": None}
    # At the top of a work tree it is that tree's HEAD.
    top = tmp_path / "python" / "metallic" / "bench_info.py"
    top.parent.mkdir(parents=True)
    top.write_text("")
    monkeypatch.setattr(bench_info, "__file__", str(top))
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert source_commit()["git_commit"] == head.strip()


class _FakeWorker:
    """Stands in for a worker process: records the threads it was given."""

    made: list[tuple[str, int]] = []

    def __init__(self, engine: str, model: str, threads: int, n_ctx: int, backend: str) -> None:
        self.engine = engine
        self.info: dict[str, Any] = {
            "threads": threads,
            "backend": "cpu" if engine == "metallic" else "llama.cpp",
        }
        _FakeWorker.made.append((engine, threads))

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"rss": 1 << 20} if req["test"] == "rss" else {"seconds": 0.01}

    def close(self) -> None:
        pass


@pytest.fixture
def fake_workers(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    _FakeWorker.made = []
    monkeypatch.setattr(bench_module, "_Worker", _FakeWorker)
    return _FakeWorker.made


def test_both_engines_get_metallics_thread_count(
    fake_workers: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A machine with SMT, whatever this one is: 3 cores, 6 logical CPUs.
    monkeypatch.setattr(_core, "physical_cores", lambda: 3)
    monkeypatch.setattr("metallic.system.logical_cpus", lambda: 6)
    assert bench_threads(None) == 3  # metallic's own choice: the physical cores
    assert bench_threads(5) == 5
    assert bench_threads(10_000) == 6  # capped at the logical CPUs, as metallic.load does
    _, _, engines = run_bench("m.gguf", 8, 0, 1, None, "", True, progress=False)
    assert fake_workers == [("metallic", 3), ("llama.cpp", 3)]
    header = format_header(build_info(engines))
    assert "threads: 3 for both engines (the default: metallic's own choice" in header


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal(fake_workers: list[tuple[str, int]]) -> None:
    tty = _FakeTTY()
    run_bench("m.gguf", 8, 4, 2, 1, "", True, progress_stream=tty)
    out = tty.getvalue()
    assert "\n" not in out  # one line, redrawn in place
    assert out.count("\r") == 2 * 2 * 3 + 2  # a redraw per step, then the line is cleared
    assert "bench: tg4 llama.cpp run 2/2 [12/12]" in out
    assert out.endswith("\r") and out.split("\r")[-2].strip() == ""


def test_progress_when_piped_prints_one_line_per_step(
    fake_workers: list[tuple[str, int]],
) -> None:
    log = io.StringIO()
    run_bench("m.gguf", 8, 4, 2, 1, "", True, progress_stream=log)
    out = log.getvalue()
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 2 * 2 * 3  # tests x engines x (warm-up + 2 runs)
    assert lines[0] == "bench: pp8 metallic warm-up [1/12]"
    assert lines[-1] == "bench: tg4 llama.cpp run 2/2 [12/12]"


def test_build_info_records_the_peer() -> None:
    engines = {
        "metallic": {"threads": 2, "backend": "cpu", "kernel_isa": "generic"},
        "llama.cpp": {
            "threads": 2,
            "backend": "llama.cpp",
            "version": "0.3.36",
            "system_info": "CPU : AVX2 = 1",
        },
    }
    info = build_info(engines, 2)
    assert info["peer"] == {
        "name": "llama.cpp",
        "package": "llama-cpp-python",
        "version": "0.3.36",
        "system_info": "CPU : AVX2 = 1",
        "threads": 2,
    }
    assert info["metallic"]["kernel_isa"] == "generic"  # what the worker ran, not the parent
    json.dumps(info)  # all of it goes into --output json
    header = format_header(info)
    assert "llama.cpp (llama-cpp-python 0.3.36): 2 threads" in header
    assert "generic kernels" in header
    assert "threads: 2 for both engines (-t 2)" in header
    engines["llama.cpp"]["threads"] = 4
    assert "threads DIFFER: metallic 2, llama.cpp 4" in format_header(build_info(engines))


def test_every_bench_flag_is_explained() -> None:
    parser = argparse.ArgumentParser()
    bench_module.add_parser(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    b = sub.choices["bench"]
    assert b.description
    for action in b._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
        if action.default not in (None, False, argparse.SUPPRESS) and action.dest != "help":
            assert "default" in action.help, action.option_strings


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "0", "-n", "0"], "nothing to measure"),
        (["-r", "0"], "--repetitions must be >= 1"),
        (["-t", "0"], "--threads must be >= 1"),
        (["-n", "-3"], "--n-gen must be >= 0"),
    ],
)
def test_bench_bad_arguments(args: list[str], message: str) -> None:
    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    proc = bench("-m", str(path), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_writes_its_comparison_as_a_chart(tmp_path: Path) -> None:
    pytest.importorskip("plotly")  # the viz extra (in test too)
    results = [
        Result("metallic", "cpu", 2, "pp", 512, [200.0, 220.0]),
        Result("llama.cpp", "cpu", 2, "pp", 512, [100.0, 110.0]),
        Result("metallic", "cpu", 2, "tg", 128, [30.0, 31.0]),
        Result("llama.cpp", "cpu", 2, "tg", 128, [20.0, 20.0]),
    ]
    page = tmp_path / "bench.html"
    bench_module.write_chart(results, page, "tiny, 2 threads")
    html = page.read_text()
    assert "<html>" in html and "plotly" in html
    assert '"x":["pp512","tg128"]' in html.replace(" ", "")  # the tests on the x axis
    assert '"2.00x"' in html and '"1.52x"' in html  # the ratios, metallic / llama.cpp
    assert "210.0" in html  # a mean
    # and from the command line
    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    chart = tmp_path / "cli.html"
    proc = bench("-m", str(path), "-p", "0", "-n", "2", "-r", "1", "-t", "1", "--chart", str(chart))
    assert proc.returncode == 0, proc.stderr
    assert "tg2" in chart.read_text() and f"chart written to {chart}" in proc.stderr
