"""A projected time per token on named Apple chips, from the memory traffic the Metal simulator
measures (cpp/metal/sim/README.md, "Memory traffic"). A projection, not a measurement: it
exists to rank kernel designs against each other on the simulator, where no GPU time exists.

The model, per dispatch d (docs/metal.md, "Projected time per token"):

    t(d) = max(memory(d), issue(d)) + overhead
    memory(d) = unique_bytes(d) / bandwidth
    issue(d)  = (lines_touched(d) + tg_instructions(d) + bank_conflicts(d)) / (cores x clock)

* unique_bytes: the distinct 128-byte lines of device memory the dispatch touched, x 128. Each
  line is assumed to cross the memory bus once per dispatch (re-reads inside a dispatch hit the
  caches, nothing survives from one dispatch to the next), at the chip's peak bandwidth.
* issue: each GPU core's load/store path is assumed to move one 128-byte line (device) or one
  threadgroup-memory access per clock; an uncoalesced instruction costs one clock per line it
  touches, a bank conflict one clock per extra cycle. Arithmetic is not counted: the simulator
  does not measure it, and decode is bound by memory.
* overhead: a fixed cost per dispatch (launch and the barrier between dependent dispatches),
  assumed, not published.

Per token the figures of the token's dispatches add up. Next to it, the memory roofline: the
weight bytes a token reads (what the host declares) over the bandwidth, the bound no design
beats.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Per-dispatch cost; Apple publishes none. Assumed: 5 us, the order of a dependent dispatch's
# launch and drain on Apple GPUs as commonly measured (not a published number).
DISPATCH_OVERHEAD_S = 5e-6
LINE_BYTES = 128
# One 128-byte line or one threadgroup access per GPU core per clock (assumed, not published).
LINES_PER_CORE_CLOCK = 1.0


@dataclass(frozen=True)
class Chip:
    name: str
    bandwidth_gbs: float  # unified memory bandwidth, GB/s (10^9 bytes)
    gpu_cores: int  # the largest GPU of the chip
    clock_ghz: float  # GPU clock: never published by Apple, assumed (see CHIP_SOURCES)


# Memory bandwidth and GPU cores as Apple announced them (largest configuration of each chip;
# binned versions have fewer GPU cores, and the 30-core M3 Max and 32-core M4 Max less
# bandwidth: 300 and 410 GB/s). Sources, Apple Newsroom press releases:
#   M1        "Apple unleashes M1" (2020-11-10): up to 8-core GPU, 2.6 TFLOPS. Bandwidth not
#             stated; the M2 release gives M2's 100 GB/s as "50 percent more than M1" and the M1
#             Max release M1 Max's 400 GB/s as "nearly 6x M1". Assumed 68.25 GB/s (LPDDR4X-4266
#             on a 128-bit bus, which both statements agree with).
#   M1 Pro/Max "Introducing M1 Pro and M1 Max" (2021-10-18): 200 GB/s, 16-core GPU; 400 GB/s,
#             32-core GPU.
#   M2        "Apple unveils M2" (2022-06-06): 100 GB/s, up to 10-core GPU.
#   M2 Pro/Max "Apple unveils M2 Pro and M2 Max" (2023-01-17): 200 GB/s, up to 19-core GPU;
#             400 GB/s, up to 38-core GPU.
#   M3 family "Apple unveils M3, M3 Pro, and M3 Max" (2023-10-30) and the MacBook Pro (Nov 2023)
#             tech specs: M3 100 GB/s, 10-core GPU; M3 Pro 150 GB/s, up to 18-core GPU; M3 Max
#             up to 400 GB/s, up to 40-core GPU.
#   M4        "Apple introduces M4 chip" (2024-05-07): 120 GB/s, 10-core GPU.
#   M4 Pro/Max "Apple introduces M4 Pro and M4 Max" (2024-10-30): 273 GB/s, up to 20-core GPU;
#             up to 546 GB/s, up to 40-core GPU.
# GPU clocks: not published by Apple for any chip. M1: assumed 1.278 GHz, what M1's published
# 2.6 TFLOPS gives with 8 cores x 128 FP32 lanes x 2 flops per FMA (the 128 lanes per core are
# not published either). M1 Pro/Max: not published, assumed 1.296 GHz (third-party estimates).
# M2 on: not published, assumed 1.4 GHz. Only the issue part of the projection depends on them.
CHIP_SOURCES = "https://www.apple.com/newsroom/ (press releases listed in metallic/projection.py)"

CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip("M1", 68.25, 8, 1.278),
        Chip("M1 Pro", 200, 16, 1.296),
        Chip("M1 Max", 400, 32, 1.296),
        Chip("M2", 100, 10, 1.4),
        Chip("M2 Pro", 200, 19, 1.4),
        Chip("M2 Max", 400, 38, 1.4),
        Chip("M3", 100, 10, 1.4),
        Chip("M3 Pro", 150, 18, 1.4),
        Chip("M3 Max", 400, 40, 1.4),
        Chip("M4", 120, 10, 1.4),
        Chip("M4 Pro", 273, 20, 1.4),
        Chip("M4 Max", 546, 40, 1.4),
    )
}
DEFAULT_CHIP = "M3 Pro"


def chip(name: str) -> Chip:
    """The chip of that name (case and spacing forgiven: "m3pro", "M3 Pro")."""
    key = "".join(name.split()).lower()
    for c in CHIPS.values():
        if "".join(c.name.split()).lower() == key:
            return c
    raise ValueError(f"unknown chip {name!r}; known: {', '.join(CHIPS)}")


@dataclass(frozen=True)
class Projection:
    """A projected time, in seconds, with its parts. `seconds` is the sum over dispatches of
    max(memory, issue) plus the overheads, so memory + issue + overhead >= seconds."""

    chip: Chip
    dispatches: int
    memory_s: float  # sum over dispatches of memory(d)
    issue_s: float  # sum over dispatches of issue(d)
    overhead_s: float
    seconds: float
    memory_bound: int  # dispatches where memory(d) >= issue(d)
    unique_bytes: int

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.seconds if self.seconds > 0 else float("inf")


def dispatch_times(d: Mapping[str, Any], c: Chip) -> tuple[float, float]:
    """(memory, issue) seconds of one dispatch's measured traffic on chip c."""
    memory = d["unique_bytes"] / (c.bandwidth_gbs * 1e9)
    slots = d["lines_touched"] + d["tg_instructions"] + d["bank_conflicts"]
    issue = slots / (c.gpu_cores * LINES_PER_CORE_CLOCK * c.clock_ghz * 1e9)
    return memory, issue


def project(
    dispatches: Iterable[Mapping[str, Any]],
    c: Chip,
    overhead_s: float = DISPATCH_OVERHEAD_S,
) -> Projection:
    """Projected time of a sequence of dispatches (`_core.sim_traffic(per_dispatch=True)
    ["per_dispatch"]`, or any mappings with unique_bytes, lines_touched, tg_instructions and
    bank_conflicts) on chip c."""
    n = 0
    mem = iss = total = 0.0
    bound = 0
    ub = 0
    for d in dispatches:
        m, i = dispatch_times(d, c)
        n += 1
        mem += m
        iss += i
        total += max(m, i)
        bound += m >= i
        ub += d["unique_bytes"]
    over = n * overhead_s
    return Projection(c, n, mem, iss, over, total + over, bound, ub)


def roofline_seconds(weight_bytes: int, c: Chip) -> float:
    """The memory roofline of a token: its weight bytes at the chip's peak bandwidth."""
    return weight_bytes / (c.bandwidth_gbs * 1e9)


def format_report(
    traffic: Mapping[str, Any],
    gpu: Mapping[str, Any],
    weight_bytes: int,
    c: Chip,
    tokens: int = 1,
) -> list[str]:
    """Lines describing one measured decode (per token, `tokens` tokens measured): what the
    simulator measured, and the projection for chip c next to the memory roofline."""
    per = traffic["per_dispatch"]
    p = project(per, c)
    t = tokens
    mb = 1e6
    lt, lm = traffic["lines_touched"], traffic["lines_min"]
    roofline = roofline_seconds(weight_bytes, c)
    out = [
        f"metal-sim traffic per decoded token (measured by the simulator over {t} token"
        f"{'s' if t != 1 else ''}):",
        f"  dispatches {traffic['dispatches'] / t:.0f}, command buffers "
        f"{gpu.get('command_buffers', 0) / t:.0f}",
        f"  declared weight bytes {gpu.get('declared_weight_bytes', 0) / t / mb:.1f} MB; measured: "
        f"loaded {traffic['loaded_bytes'] / t / mb:.1f} MB, stored "
        f"{traffic['stored_bytes'] / t / mb:.2f} MB, distinct lines "
        f"{traffic['unique_bytes'] / t / mb:.1f} MB",
        f"  device loads {traffic['load_instructions'] / t:,.0f} simdgroup instructions, lines "
        f"touched / minimum {lt / lm if lm else 0:.2f}x, active lanes "
        f"{traffic['active_lane_fraction']:.0%}, bank conflicts "
        f"{traffic['bank_conflicts'] / t:,.0f} cycles, barriers {traffic['barriers'] / t:,.0f}",
        f"  projection for {c.name} ({c.bandwidth_gbs:g} GB/s, {c.gpu_cores} GPU cores, "
        f"{c.clock_ghz:g} GHz assumed): {p.seconds / t * 1e3:.2f} ms/token = "
        f"{t / p.seconds if p.seconds else 0:.0f} tok/s",
        f"    memory {p.memory_s / t * 1e3:.2f} ms, issue {p.issue_s / t * 1e3:.2f} ms, "
        f"dispatch overhead {p.overhead_s / t * 1e3:.2f} ms ({DISPATCH_OVERHEAD_S * 1e6:g} us "
        f"each, assumed); {p.memory_bound} of {p.dispatches} dispatches memory-bound",
        f"  memory roofline for {c.name} (weights {weight_bytes / mb:.1f} MB / bandwidth): "
        f"{roofline * 1e3:.2f} ms/token = {1 / roofline:.0f} tok/s (the projection at "
        f"{roofline / (p.seconds / t) if p.seconds else 0:.1%} of it)",
    ]
    return out
