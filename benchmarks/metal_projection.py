"""The Metal decode table of docs/metal.md for the four benchmark models: one decoded token each
on the Metal simulator with its traffic counters on, and the projection for an Apple chip.

Runs `python -m metallic bench -p 0 -n 1 -r 1 --backend metal-sim --output json` per model (a
process each, as bench does) and prints one markdown table: dispatches, declared weight bytes,
what the lanes loaded and touched, active lanes, and the projected time per token next to the
memory roofline. Counts are the simulator's, deterministic; the times are a projection
(python/metallic/projection.py states its assumptions), never a measurement.

    python benchmarks/metal_projection.py [--chip "M3 Pro"] [--json DIR]

Counting slows the simulator about 80x: a few minutes for the four models on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from metallic.projection import DEFAULT_CHIP, chip, roofline_seconds  # noqa: E402
from models import benchmark_models  # noqa: E402


def measure(path: Path, chip_name: str) -> dict:
    """bench's JSON record of one decoded token on metal-sim (its metal_sim_traffic part)."""
    cmd = [sys.executable, "-m", "metallic", "bench", "-m", str(path), "-p", "0", "-n", "1"]
    cmd += ["-r", "1", "--backend", "metal-sim", "--chip", chip_name, "--output", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)["metal_sim_traffic"]


def rows(results: dict[str, dict], chip_name: str) -> list[str]:
    c = chip(chip_name)
    names = list(results)
    g = {n: results[n]["gpu"] for n in names}
    p = {n: results[n]["projection"] for n in names}
    declared = {n: g[n]["declared_weight_bytes"] for n in names}

    def line(label: str, cell) -> str:  # noqa: ANN001
        return f"| {label} | " + " | ".join(cell(n) for n in names) + " |"

    roof = {n: roofline_seconds(declared[n], c) for n in names}
    parts = ("memory_seconds", "issue_seconds", "overhead_seconds")
    return [
        "| per decoded token | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        line("dispatches", lambda n: str(g[n]["dispatches"])),
        line("command buffers / syncs", lambda n: f"{g[n]['command_buffers']} / {g[n]['syncs']}"),
        line("declared weight bytes", lambda n: f"{declared[n] / 1e6:.1f} MB"),
        line("distinct lines (x declared)", lambda n: f"{g[n]['unique_bytes'] / declared[n]:.3f}x"),
        line(
            "lanes' loaded bytes (x declared)",
            lambda n: f"{g[n]['loaded_bytes'] / declared[n]:.2f}x",
        ),
        line(
            "lines touched / minimum", lambda n: f"{g[n]['lines_touched'] / g[n]['lines_min']:.2f}x"
        ),
        line("active lanes", lambda n: f"{100 * g[n]['active_lane_fraction']:.0f}%"),
        line(
            f"projection {c.name}: memory / issue / overhead",
            lambda n: " / ".join(f"{p[n][k] * 1e3:.2f}" for k in parts) + " ms",
        ),
        line(
            f"**projection {c.name}**",
            lambda n: (
                f"{p[n]['seconds_per_token'] * 1e3:.3f} ms = "
                f"{1 / p[n]['seconds_per_token']:.0f} tok/s"
            ),
        ),
        line(
            f"memory roofline {c.name} (projection's share)",
            lambda n: f"{1 / roof[n]:.0f} tok/s ({100 * roof[n] / p[n]['seconds_per_token']:.1f}%)",
        ),
    ]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chip", default=DEFAULT_CHIP, help="the Apple chip to project onto")
    ap.add_argument("--json", type=Path, help="also keep each model's bench JSON in this directory")
    args = ap.parse_args(argv)
    try:
        chip(args.chip)  # an unknown name fails here, before minutes of simulation
    except ValueError as e:
        ap.error(str(e))
    results = {}
    for name, make in benchmark_models().items():
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results[name] = measure(make(), args.chip)
        if args.json:
            args.json.mkdir(parents=True, exist_ok=True)
            (args.json / f"{name}.json").write_text(json.dumps(results[name], indent=1))
    print("\n".join(rows(results, args.chip)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
