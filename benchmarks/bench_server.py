"""Server load benchmark: `python -m metallic serve` against llama-cpp-python's server, same model,
same threads, same requests, in one run.

    python benchmarks/bench_server.py -m MODEL [--threads 2] [--concurrency 1,4,8,16] [-n 64]

For each concurrency C, C clients stream completions at once (temperature 0, max_tokens n) in
two scenarios: `shared` (every prompt starts with the same system text, then a question of its
own: what a chat service sees) and `distinct` (nothing shared). Reported per server and case:
aggregate decode throughput (completion tokens of all clients / wall time), time to first token
(p50, p95) and the gaps between a stream's tokens (p50, p95). Then the prompt cache: time to
first token of a long system prompt, cold and then cached.

Each server runs in its own process on its own port, one after the other, so they never share the
CPU. A token is a streamed chunk with text (both servers send one per token). The peer is
llama-cpp-python's OpenAI server (`pip install "llama-cpp-python[server]"`); it serves one
request at a time. --no-peer runs metallic alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

SYSTEM = (
    "You are a careful assistant for a library. Answer briefly and name the shelf where a reader "
    "finds each book. The library has shelves for history, science, poetry, travel, cooking, "
    "children's books and reference works; rare books are kept behind the desk. "
)
QUESTIONS = [
    "Where is a book about the Roman empire?",
    "Where do I find poems by Basho?",
    "Which shelf has a guide to Lisbon?",
    "Where are the cookbooks for bread?",
    "Where is an atlas of the stars?",
    "Where can my son find picture books?",
    "Where is a dictionary of Latin?",
    "Where is the first edition of Moby-Dick?",
]


@dataclass
class Result:
    server: str
    case: str
    concurrency: int
    wall: float
    tokens: int
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(cmd: list[str], port: int, name: str, timeout: float = 600.0):
    """Starts a server process and waits until it answers; stops it afterwards."""
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_server_{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{name} did not start in {timeout:.0f} s; see {log.name}")
            time.sleep(0.5)
        print(f"  {name} ready in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def one_stream(
    client: httpx.AsyncClient, url: str, prompt: str, n: int, model: str
) -> tuple[float, list[float], int]:
    """(time to first token, gaps between tokens, tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and choices[0].get("text"):
                stamps.append(time.perf_counter())
    if not stamps:
        return float("nan"), [], 0
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return stamps[0] - t0, gaps, len(stamps)


async def load(base: str, prompts: list[str], n: int, model: str) -> tuple[float, list[Any]]:
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        outs = await asyncio.gather(
            *(one_stream(client, f"{base}/v1/completions", p, n, model) for p in prompts)
        )
        return time.perf_counter() - t0, outs


def prompts_for(case: str, c: int, round_: int) -> list[str]:
    qs = [QUESTIONS[(i + round_) % len(QUESTIONS)] + f" (reader {round_}-{i})" for i in range(c)]
    if case == "shared":
        return [SYSTEM + q for q in qs]
    return [f"Note {round_}-{i}: " + q for i, q in enumerate(qs)]


def run_server(name: str, base: str, args: argparse.Namespace, model: str) -> list[Result]:
    results = []
    asyncio.run(load(base, prompts_for("distinct", 1, 99), 4, model))  # warm-up
    for case in ("shared", "distinct"):
        for c in args.concurrency:
            wall, outs = asyncio.run(load(base, prompts_for(case, c, c), args.n_predict, model))
            r = Result(name, case, c, wall, sum(o[2] for o in outs))
            for ttft, gaps, _ in outs:
                r.ttft.append(ttft)
                r.gaps.extend(gaps)
            results.append(r)
            print(
                f"  {name} {case} c={c}: {r.tok_s:.1f} tok/s, ttft p50 {pct(r.ttft, 0.5):.2f} s",
                file=sys.stderr,
            )
    # The prompt cache: a long system prompt, cold, then again with another question.
    long_system = SYSTEM * args.system_repeat
    cold = asyncio.run(load(base, [long_system + QUESTIONS[0]], 1, model))[1][0][0]
    warm = asyncio.run(load(base, [long_system + QUESTIONS[1]], 1, model))[1][0][0]
    results.append(Result(name, "cache-cold", 1, cold, 1, [cold]))
    results.append(Result(name, "cache-warm", 1, warm, 1, [warm]))
    print(f"  {name} long prompt ttft: cold {cold:.2f} s, cached {warm:.2f} s", file=sys.stderr)
    return results


def table(results: list[Result]) -> str:
    rows = [
        "| server | case | clients | tok/s | ttft p50 (s) | ttft p95 (s) | gap p50 (ms) "
        "| gap p95 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.case.startswith("cache"):
            continue
        rows.append(
            f"| {r.server} | {r.case} | {r.concurrency} | {r.tok_s:.1f} "
            f"| {pct(r.ttft, 0.5):.2f} | {pct(r.ttft, 0.95):.2f} "
            f"| {1e3 * pct(r.gaps, 0.5):.0f} | {1e3 * pct(r.gaps, 0.95):.0f} |"
        )
    rows.append("")
    rows.append("| server | long prompt ttft, cold (s) | cached (s) | cached / cold |")
    rows.append("|---|---:|---:|---:|")
    for name in dict.fromkeys(r.server for r in results):
        cold = next(r.wall for r in results if r.server == name and r.case == "cache-cold")
        warm = next(r.wall for r in results if r.server == name and r.case == "cache-warm")
        rows.append(f"| {name} | {cold:.2f} | {warm:.2f} | {warm / cold:.1%} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="GGUF path (both servers load it)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each server")
    p.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 8, 16],
        help="clients at once, comma-separated (default 1,4,8,16)",
    )
    p.add_argument("-n", "--n-predict", type=int, default=64, help="tokens per completion")
    p.add_argument("--ctx-size", type=int, default=2048, help="context per sequence")
    p.add_argument(
        "--system-repeat",
        type=int,
        default=17,
        help="copies of the system text in the prompt-cache test (17: about 1,000 tokens)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    model = str(Path(args.model).resolve())
    slots = max(args.concurrency)
    results: list[Result] = []

    port = free_port()
    cmd = [sys.executable, "-m", "metallic", "serve", "-m", model, "--backend", "cpu"]
    cmd += ["--threads", str(args.threads), "--slots", str(slots), "--port", str(port)]
    cmd += ["--ctx-size", str(args.ctx_size), "--max-queue", str(4 * slots)]
    cmd += ["--model-alias", "metallic"]
    print(f"metallic: {' '.join(cmd)}", file=sys.stderr)
    with running(cmd, port, "metallic"):
        results += run_server("metallic", f"http://127.0.0.1:{port}", args, "metallic")

    if not args.no_peer:
        port = free_port()
        # llama_cpp.server, loading as llama_peer.py says (safe on AMX CPUs)
        cmd = [sys.executable, "-m", "metallic.llama_peer", "--model", model, "--port", str(port)]
        cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
        cmd += ["--n_ctx", str(args.ctx_size), "--cache", "true"]
        print(f"llama-cpp-python: {' '.join(cmd)}", file=sys.stderr)
        with running(cmd, port, "llama-cpp-python"):
            results += run_server(
                "llama-cpp-python", f"http://127.0.0.1:{port}", args, "llama-cpp-python"
            )

    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
