"""`python -m metallic bench` on tiny models: the JSON it reports, the decode-bandwidth
accounting, and its argument checks. (Its speed numbers live in benchmarks/.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import GGUFReader

from metallic.bench import Result, _model_facts, bandwidth_lines
from oracle.tiny_models import tiny_gguf


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metallic", "bench", *args],
        capture_output=True,
        text=True,
        timeout=300,
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
    assert "bench:" in proc.stderr  # the progress line


def test_bench_table_reports_the_bandwidth_fraction() -> None:
    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    proc = bench("-m", str(path), "-p", "0", "-n", "4", "-r", "1", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    assert "| tg4 " in proc.stdout
    assert "of the streaming read bandwidth" in proc.stdout


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
