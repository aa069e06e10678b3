"""metallic.projection: the projected time per token on Apple chips from the simulator's measured
traffic (the arithmetic, the chip table), and that `bench --backend metal-sim` prints it."""

import json
import subprocess
import sys

import pytest

from metallic import projection as P


def d(unique=0, touched=0, tg=0, conflicts=0):
    return {
        "unique_bytes": unique,
        "lines_touched": touched,
        "tg_instructions": tg,
        "bank_conflicts": conflicts,
    }


def test_chip_table():
    assert list(P.CHIPS) == [
        "M1", "M1 Pro", "M1 Max", "M2", "M2 Pro", "M2 Max",
        "M3", "M3 Pro", "M3 Max", "M4", "M4 Pro", "M4 Max",
    ]  # fmt: skip
    m3p = P.CHIPS["M3 Pro"]
    assert (m3p.bandwidth_gbs, m3p.gpu_cores) == (150, 18)
    assert P.CHIPS["M4 Max"].bandwidth_gbs == 546 and P.CHIPS["M2 Max"].gpu_cores == 38
    assert P.chip("m3pro") is m3p and P.chip(" M3  Pro ") is m3p
    with pytest.raises(ValueError, match="unknown chip"):
        P.chip("M5 Ultra")
    assert P.DEFAULT_CHIP == "M3 Pro"


def test_memory_bound_dispatch():
    c = P.Chip("test", 100, 10, 1.0)  # 100 GB/s; 10 cores x 1 GHz = 1e10 lines/s
    # 1 MB at 100 GB/s = 10 us; 1000 lines at 1e10/s = 0.1 us
    p = P.project([d(unique=1_000_000, touched=1000)], c, overhead_s=2e-6)
    assert p.memory_s == pytest.approx(10e-6)
    assert p.issue_s == pytest.approx(0.1e-6)
    assert p.overhead_s == pytest.approx(2e-6)
    assert p.seconds == pytest.approx(12e-6)
    assert p.memory_bound == 1 and p.dispatches == 1 and p.unique_bytes == 1_000_000
    assert p.tokens_per_second == pytest.approx(1 / 12e-6)


def test_issue_bound_dispatch_counts_uncoalesced_lines_and_conflicts():
    c = P.Chip("test", 100, 10, 1.0)
    # 128 KB = 1.28 us of memory, but 100k lines + 10k threadgroup accesses + 10k conflict
    # cycles = 120k slots = 12 us of issue
    p = P.project([d(unique=128_000, touched=100_000, tg=10_000, conflicts=10_000)], c, 0.0)
    assert p.seconds == pytest.approx(12e-6)
    assert p.memory_bound == 0


def test_per_dispatch_max_then_sum():
    """One memory-bound and one issue-bound dispatch: the maxima add up, not the sums' max."""
    c = P.Chip("test", 100, 10, 1.0)
    a = d(unique=1_000_000)  # 10 us memory
    b = d(touched=100_000)  # 10 us issue
    p = P.project([a, b], c, overhead_s=1e-6)
    assert p.memory_s == pytest.approx(10e-6) and p.issue_s == pytest.approx(10e-6)
    assert p.seconds == pytest.approx(22e-6)
    assert p.dispatches == 2 and p.memory_bound == 1


def test_roofline():
    assert P.roofline_seconds(150_000_000, P.CHIPS["M3 Pro"]) == pytest.approx(1e-3)


def test_report_lines():
    t = {
        "dispatches": 4,
        "loaded_bytes": 3_000_000,
        "stored_bytes": 10_000,
        "unique_bytes": 2_000_000,
        "load_instructions": 1000,
        "lines_touched": 600,
        "lines_min": 200,
        "active_lane_fraction": 0.5,
        "bank_conflicts": 0,
        "barriers": 2,
        "per_dispatch": [d(unique=500_000, touched=150)] * 4,
    }
    gpu = {"command_buffers": 2, "declared_weight_bytes": 1_800_000}
    lines = P.format_report(t, gpu, 1_800_000, P.CHIPS["M3 Pro"], tokens=2)
    text = "\n".join(lines)
    assert "dispatches 2, command buffers 1" in text
    assert "declared weight bytes 0.9 MB" in text and "loaded 1.5 MB" in text
    assert "lines touched / minimum 3.00x" in text and "active lanes 50%" in text
    assert "projection for M3 Pro (150 GB/s, 18 GPU cores" in text
    # per token: 2 dispatches x (500 kB / 150 GB/s = 3.33 us) + 2 x 5 us = 16.67 us
    assert "0.02 ms/token = 60000 tok/s" in text
    assert "memory roofline for M3 Pro (weights 1.8 MB / bandwidth): 0.01 ms/token" in text
    assert "(the projection at 72.0% of it)" in text  # 12 us of 16.67 us


def test_bench_metal_sim_prints_the_projection():
    from metallic import _core

    if not (_core.metal_sim_available() and _core.sim_counting_available()):
        pytest.skip("needs the Metal simulator with traffic counting")
    from oracle.tiny_models import tiny_gguf

    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    cmd = [sys.executable, "-m", "metallic", "bench", "-m", str(path), "-p", "0", "-n", "2"]
    cmd += ["-r", "1", "-t", "1", "--backend", "metal-sim", "--chip", "M4 Max"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "metal-sim traffic per decoded token" in out
    assert "projection for M4 Max (546 GB/s, 40 GPU cores" in out
    assert "memory roofline for M4 Max" in out
    assert "dispatch overhead" in out and "issue" in out
    # and the projection is in the JSON output too
    cmd[cmd.index("M4 Max")] = "M1"
    proc = subprocess.run(cmd + ["--output", "json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    j = json.loads(proc.stdout)["metal_sim_traffic"]
    assert j["projection"]["chip"] == "M1" and j["projection"]["seconds_per_token"] > 0
    assert j["measured"]["loaded_bytes"] > 0 and j["gpu"]["declared_weight_bytes"] > 0


def test_bench_rejects_an_unknown_chip():
    cmd = [sys.executable, "-m", "metallic", "bench", "--chip", "M9", "-n", "1", "-p", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown chip" in proc.stderr
    assert "Traceback" not in proc.stderr
