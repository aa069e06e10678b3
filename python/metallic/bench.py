"""`python -m metallic bench`: llama-bench-style throughput of prompt processing (ppN) and
token generation (tgN), optionally head to head with llama.cpp on the same file.

Each engine runs in its own worker process (this module's `worker` entry point), so each one's
peak memory is its own and neither pays for the other's threads. The parent drives the workers
in turn (ours, llama.cpp, ours, ...) so both see the same machine conditions, and reports mean
and standard deviation over the repetitions after one warm-up.

ppN: N prompt tokens processed as one batch into an empty cache.
tgN: N tokens decoded one at a time into an empty cache (no sampling), as llama-bench does.

Decode reads every weight once per token, so tgN is also reported as a fraction of the memory
bandwidth: weight bytes per token x tokens/s against a streaming read measured by the parent
between the repetitions (the VM's bandwidth drifts with its neighbours; a figure from another
moment would not compare).

Both engines get the same thread count: -t, else the one metallic chooses on its own (the
physical cores). Every output records what ran (bench_info.py: versions, the source commit,
the core's build options and kernel set, the CPU, the threads of each side), as llama-bench
does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from . import llama_peer
from .bench_info import build_info, format_header
from .model import BACKENDS
from .system import peak_rss_bytes

# -- worker side ----------------------------------------------------------------------------


class _Ours:
    def __init__(self, model: str, threads: int | None, n_ctx: int, backend: str | None) -> None:
        import metallic

        self.m = metallic.load(model, n_ctx=n_ctx, threads=threads, backend=backend)
        self.vocab = self.m.n_vocab
        self.threads = self.m.threads
        self.backend = self.m.backend

    def facts(self) -> dict[str, Any]:
        from . import _core

        # Read here, not in the parent: METALLIC_FORCE_GENERIC in this process's environment
        # picks the kernel set.
        return {"kernel_isa": _core.kernel_isa()}

    def pp(self, ids: list[int]) -> None:
        self.m.reset()
        self.m.prefill(ids)

    def tg(self, ids: list[int]) -> None:
        self.m.reset()
        for i in ids:
            self.m.decode(i)

    def traffic(self, ids: list[int]) -> dict[str, Any]:
        """metal-sim only: the memory traffic the simulator measures while decoding ids (after
        one uncounted token, so the first token's one-time work is not in it). Counting slows
        the simulator, so it is on for this alone."""
        from . import _core

        if not _core.sim_counting_available():
            return {"unavailable": "this build cannot count the simulator's memory traffic"}
        self.m.reset()
        self.m.decode(ids[0])
        _core.sim_set_counting(True)
        try:
            self.m.reset_gpu_stats()  # on metal-sim this resets the traffic too
            for i in ids[1:]:
                self.m.decode(i)
            t = _core.sim_traffic(per_dispatch=True)
            gpu = {k: v for k, v in self.m.gpu_stats().items() if k != "kernels"}
        finally:
            _core.sim_set_counting(False)
        keys = ("kernel", "unique_bytes", "lines_touched", "lines_min", "tg_instructions")
        keys += ("bank_conflicts", "loaded_bytes")
        t["per_dispatch"] = [{k: d[k] for k in keys} for d in t["per_dispatch"]]
        return {"traffic": t, "gpu": gpu, "tokens": len(ids) - 1}


class _LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API: llama_decode on a batch, no logits
    copied back to Python, as llama-bench measures it."""

    def __init__(self, model: str, threads: int | None, n_ctx: int, backend: str | None) -> None:
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        mp = llama_peer.model_params(L)  # safe on AMX CPUs (llama_peer.py)
        self.model = L.llama_model_load_from_file(model.encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_ctx
        cp.n_ubatch = 512
        self.threads = bench_threads(threads)
        cp.n_threads = cp.n_threads_batch = self.threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.backend = "llama.cpp"

    def _run(self, ids: list[int]) -> None:
        arr = (self.L.llama_token * len(ids))(*ids)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(ids))) != 0:
            raise RuntimeError("llama_decode failed")

    def _clear(self) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def pp(self, ids: list[int]) -> None:
        self._clear()
        self._run(ids)

    def facts(self) -> dict[str, Any]:
        info = self.L.llama_print_system_info()
        return {
            "version": getattr(self.L, "__version__", None),
            "system_info": info.decode(errors="replace").strip(" |") if info else None,
        }

    def close(self) -> None:
        """Frees the context and the model now: the low-level API's handles have no finalizer,
        so dropping this object alone would keep both for the life of the process."""
        if self.ctx:
            self.L.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.L.llama_model_free(self.model)
            self.model = None

    def tg(self, ids: list[int]) -> None:
        self._clear()
        for i in ids:
            self._run([i])


def worker(argv: list[str]) -> int:
    """Loads one engine, then answers lines of JSON requests {"test": "pp"|"tg", "n": N} with
    {"seconds": s}; {"test": "rss"} answers the peak resident memory."""
    engine_name, model, threads, n_ctx, backend = argv
    cls = _Ours if engine_name == "metallic" else _LlamaCpp
    engine = cls(model, int(threads) or None, int(n_ctx), backend or None)
    ready = {"ready": True, "threads": engine.threads, "backend": engine.backend}
    print(json.dumps({**ready, **engine.facts()}), flush=True)
    import random

    rng = random.Random(0)
    for line in sys.stdin:
        req = json.loads(line)
        if req["test"] == "rss":
            print(json.dumps({"rss": peak_rss_bytes()}), flush=True)
            continue
        if req["test"] == "traffic":
            ids = [rng.randrange(engine.vocab) for _ in range(req["n"] + 1)]
            print(json.dumps(engine.traffic(ids)), flush=True)
            continue
        ids = [rng.randrange(engine.vocab) for _ in range(req["n"])]
        t0 = time.perf_counter()
        getattr(engine, req["test"])(ids)
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    return 0


# -- parent side ----------------------------------------------------------------------------


class _Worker:
    def __init__(self, engine: str, model: str, threads: int, n_ctx: int, backend: str) -> None:
        self.engine = engine
        env = dict(os.environ)
        if engine == "llama.cpp":
            env.pop("METALLIC_BACKEND", None)
        # llama.cpp logs a lot: an unread pipe would fill up and block the worker.
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [
            sys.executable,
            "-m",
            "metallic.bench",
            "--worker",
            engine,
            model,
            str(threads),
            str(n_ctx),
            backend,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            err = self.log.read().strip()[-2000:]
            raise RuntimeError(f"{self.engine} worker failed: {err}")
        return json.loads(line)

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


@dataclass
class Result:
    engine: str
    backend: str
    threads: int
    test: str
    n: int
    tps: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tps)

    @property
    def std(self) -> float:
        return statistics.stdev(self.tps) if len(self.tps) > 1 else 0.0


def _read_bandwidth(threads: int) -> float:
    """Streaming read bandwidth in bytes/s over a buffer far past the last-level cache, with
    the same threads as the engines (the best of three passes)."""
    from . import _core

    return float(_core.read_bandwidth(256 << 20, threads, 3))


def bench_threads(requested: int | None) -> int:
    """The threads both engines get: `requested`, else what metallic.load chooses on its own (the
    physical cores among the CPUs this process may run on); capped at the logical CPUs, as
    metallic.load caps it, so the peer is not given more than metallic takes."""
    from . import _core
    from .system import logical_cpus

    return max(1, min(requested or _core.physical_cores(), logical_cpus()))


class _Progress:
    """Progress on a stream (stderr): redrawn in place with \\r on a terminal; elsewhere (a pipe,
    a log file) one plain line per finished step, since there the redraws would run together
    into one long line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.width = 0

    def step(self, text: str) -> None:
        if self.tty:
            self.width = max(self.width, len(text))
            print("\r" + text.ljust(self.width), end="", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)

    def done(self) -> None:
        if self.tty and self.width:
            print("\r" + " " * self.width + "\r", end="", file=self.stream, flush=True)


def run_bench(
    model: str,
    pp: int,
    tg: int,
    reps: int,
    threads: int | None,
    backend: str,
    vs_llama_cpp: bool,
    progress: bool = True,
    bandwidth: list[float] | None = None,
    progress_stream: TextIO | None = None,
    traffic: dict[str, Any] | None = None,
) -> tuple[list[Result], dict[str, int], dict[str, dict[str, Any]]]:
    """Runs the tests with the same thread count for both engines (bench_threads(threads)).
    Returns the results, each engine's peak RSS and what each worker reported when ready
    (threads, backend, versions). With `bandwidth` (a list) and a tg test, the streaming read
    bandwidth measured after each tg round is appended to it. With `traffic` (a dict), backend
    metal-sim and a tg test, the simulator's measured memory traffic of decoding (worker
    request "traffic", after the timed runs) is put into it."""
    n_ctx = max(pp, tg) + 16
    threads = bench_threads(threads)
    workers = [_Worker("metallic", model, threads, n_ctx, backend)]
    if vs_llama_cpp:
        workers.append(_Worker("llama.cpp", model, threads, n_ctx, ""))
    tests = [(t, n) for t, n in (("pp", pp), ("tg", tg)) if n > 0]
    results = {
        (w.engine, t): Result(w.engine, w.info["backend"], w.info["threads"], t, n)
        for w in workers
        for t, n in tests
    }
    total = len(tests) * (reps + 1) * len(workers)
    done = 0
    shown = _Progress(progress_stream or sys.stderr) if progress else None
    try:
        for test, n in tests:
            for rep in range(reps + 1):  # the first round warms up and is not counted
                for w in workers:  # interleaved: A B A B ...
                    seconds = w.ask({"test": test, "n": n})["seconds"]
                    if rep > 0:
                        results[(w.engine, test)].tps.append(n / seconds)
                    done += 1
                    if shown:
                        what = "warm-up" if rep == 0 else f"run {rep}/{reps}"
                        shown.step(f"bench: {test}{n} {w.engine} {what} [{done}/{total}]")
                if test == "tg" and rep > 0 and bandwidth is not None:
                    bandwidth.append(_read_bandwidth(workers[0].info["threads"]))
        if traffic is not None and backend == "metal-sim" and tg > 0:
            if shown:
                shown.step("bench: measuring metal-sim memory traffic")
            traffic.update(workers[0].ask({"test": "traffic", "n": min(tg, TRAFFIC_TOKENS)}))
        rss = {w.engine: w.ask({"test": "rss"})["rss"] for w in workers}
    finally:
        for w in workers:
            w.close()
        if shown:
            shown.done()
    return list(results.values()), rss, {w.engine: w.info for w in workers}


@dataclass
class ModelFacts:
    name: str
    size: int  # file bytes
    params: int
    decode_bytes: int  # weight bytes one decoded token reads


def _model_facts(path: str) -> ModelFacts:
    from .config import model_config
    from .gguf_file import read_gguf

    g = read_gguf(path)
    cfg = model_config(g)
    params = sum(t.n_elements for t in g.tensors.values())
    # A token reads every tensor once, except the embedding table, of which it reads one row;
    # a model without output.weight reads the whole table again as its output projection.
    read = sum(t.nbytes for t in g.tensors.values())
    embd = g.tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in g.tensors:
        read -= embd.nbytes
    return ModelFacts(f"{cfg.arch} {cfg.name}".strip(), g.file_size, params, read)


def bandwidth_lines(results: list[Result], decode_bytes: int, bandwidth: list[float]) -> list[str]:
    """tgN as bytes read per second against the measured streaming read, per engine."""
    if not bandwidth:
        return []
    bw = statistics.fmean(bandwidth)
    out = []
    for r in results:
        if r.test == "tg" and r.backend in ("cpu", "llama.cpp"):
            rate = decode_bytes * r.mean
            out.append(
                f"tg{r.n} {r.engine}: {decode_bytes / 1e6:.0f} MB of weights per token x "
                f"{r.mean:.2f} t/s = {rate / 1e9:.1f} GB/s, {rate / bw:.0%} of the streaming "
                f"read bandwidth ({bw / 1e9:.1f} GB/s, measured between the runs)"
            )
    return out


def format_table(
    model: str, size: int, params: int, results: list[Result], rss: dict[str, int]
) -> str:
    rows = [("model", "size", "params", "engine", "backend", "threads", "test", "t/s")]
    for r in results:
        rows.append(
            (
                model,
                f"{size / 2**20:.0f} MiB",
                f"{params / 1e6:.0f} M",
                r.engine,
                r.backend,
                str(r.threads),
                f"{r.test}{r.n}",
                f"{r.mean:.2f} ± {r.std:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    out = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows[1:]]
    by = {(r.engine, r.test): r for r in results}
    for test in dict.fromkeys(r.test for r in results):
        if ("llama.cpp", test) in by and ("metallic", test) in by:
            ratio = by[("metallic", test)].mean / by[("llama.cpp", test)].mean
            out.append(f"{test}{by[('metallic', test)].n}: metallic / llama.cpp = {ratio:.2f}x")
    for engine, b in rss.items():
        out.append(f"peak RSS {engine}: {b / 2**20:.0f} MiB")
    return "\n".join(out)


def cmd_bench(args: argparse.Namespace) -> int:
    from .models import resolve_model

    path = str(resolve_model(args.model))
    facts = _model_facts(path)
    name, size, params = facts.name, facts.size, facts.params
    if args.vs_llama_cpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise SystemExit(
                'error: --vs-llama-cpp needs llama-cpp-python: pip install "metallic-llm[bench]"'
            ) from None
    threads = bench_threads(args.threads)
    if args.threads is not None and threads != args.threads:
        print(
            f"bench: -t {args.threads} is more than the CPUs here; both engines get {threads}",
            file=sys.stderr,
        )
    bandwidth: list[float] = []
    traffic: dict[str, Any] = {}
    results, rss, engines = run_bench(
        path,
        args.n_prompt,
        args.n_gen,
        args.repetitions,
        threads,
        args.backend or "",
        args.vs_llama_cpp,
        bandwidth=bandwidth,
        traffic=traffic,
    )
    info = build_info(engines, args.threads)
    bw_lines = bandwidth_lines(results, facts.decode_bytes, bandwidth)
    traffic_lines: list[str] = []
    if "unavailable" in traffic:
        traffic_lines = [f"metal-sim traffic: not measured ({traffic.pop('unavailable')})"]
    if traffic:
        from .projection import chip, format_report, project

        c = chip(args.chip)
        traffic_lines = format_report(
            traffic["traffic"], traffic["gpu"], facts.decode_bytes, c, traffic["tokens"]
        )
        p = project(traffic["traffic"]["per_dispatch"], c)
        per = traffic["tokens"]
        traffic["projection"] = {
            "chip": c.name,
            "seconds_per_token": p.seconds / per,
            "memory_seconds": p.memory_s / per,
            "issue_seconds": p.issue_s / per,
            "overhead_seconds": p.overhead_s / per,
        }
    if args.output == "json":
        json.dump(
            {
                "build": info,
                "model": name,
                "path": path,
                "size": size,
                "params": params,
                "peak_rss": rss,
                "decode_bytes_per_token": facts.decode_bytes,
                "read_bandwidth": bandwidth,
                **({"metal_sim_traffic": _traffic_summary(traffic)} if traffic else {}),
                "results": [
                    {
                        "engine": r.engine,
                        "backend": r.backend,
                        "threads": r.threads,
                        "test": f"{r.test}{r.n}",
                        "tps": r.tps,
                        "mean": r.mean,
                        "std": r.std,
                    }
                    for r in results
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
    elif args.output == "csv":
        print("model,engine,backend,threads,test,mean_tps,std_tps")
        for r in results:
            print(
                f"{name},{r.engine},{r.backend},{r.threads},{r.test}{r.n},{r.mean:.3f},{r.std:.3f}"
            )
    else:
        print(format_header(info))
        print()
        print(format_table(name, size, params, results, rss))
        for line in bw_lines:
            print(line)
        for line in traffic_lines:
            print(line)
    if args.chart:
        write_chart(results, args.chart, f"{name}, {threads} threads")
        print(f"bench: chart written to {args.chart}", file=sys.stderr)
    return 0


# Tokens decoded with counting on (after one uncounted token): counting slows the simulator
# several times over, and every decoded token reads the same weights.
TRAFFIC_TOKENS = 1


def _traffic_summary(traffic: dict[str, Any]) -> dict[str, Any]:
    """The JSON output's metal_sim_traffic: totals over the measured tokens, per kernel, and the
    projection (per token); the per-dispatch list stays out."""
    t = {k: v for k, v in traffic["traffic"].items() if k != "per_dispatch"}
    return {
        "tokens": traffic["tokens"],
        "measured": t,
        "gpu": traffic["gpu"],
        "projection": traffic["projection"],
    }


def write_chart(results: list[Result], path: str | Path, title: str) -> None:
    """The comparison as one self-contained page (plotly, the `viz` extra): tokens/s of each
    test per engine, the spread of the repetitions as error bars, and each test's ratio
    metallic / llama.cpp above its bars when both ran."""
    from .trace_html import _plotly  # the viz extra's import, with its install hint

    go = _plotly()
    tests = list(dict.fromkeys(f"{r.test}{r.n}" for r in results))
    fig = go.Figure()
    for engine in dict.fromkeys(r.engine for r in results):
        rows = {f"{r.test}{r.n}": r for r in results if r.engine == engine}
        fig.add_bar(
            name=engine,
            x=tests,
            y=[rows[t].mean if t in rows else None for t in tests],
            error_y={"type": "data", "array": [rows[t].std if t in rows else 0 for t in tests]},
        )
    by = {(r.engine, f"{r.test}{r.n}"): r.mean for r in results}
    for t in tests:
        ours, peer = by.get(("metallic", t)), by.get(("llama.cpp", t))
        if ours and peer:
            top = max(ours, peer)
            fig.add_annotation(x=t, y=top, text=f"{ours / peer:.2f}x", showarrow=False, yshift=18)
    fig.update_layout(title=f"metallic bench: {title}", yaxis_title="tokens/s", barmode="group")
    Path(path).write_text(fig.to_html(full_html=True, include_plotlyjs=True))


def add_parser(sub: Any) -> None:
    from .models import DEFAULT_MODEL
    from .projection import CHIPS, DEFAULT_CHIP

    b = sub.add_parser(
        "bench",
        help="measure prompt and generation throughput (optionally vs llama.cpp)",
        description="llama-bench-style throughput: ppN processes N prompt tokens in one batch, "
        "tgN decodes N tokens one by one, each into an empty cache; tokens/s as mean ± std over "
        "the repetitions after one warm-up round. Each engine runs in its own process and the "
        "runs alternate between them. Both engines get the same thread count. Every output "
        "records what ran: versions, source commit, the core's build options and kernel set, "
        "CPU, threads. Progress goes to stderr: redrawn in place on a terminal, one line per "
        "step otherwise.",
    )
    b.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="PATH|NAME",
        help="a GGUF file, a model name (see `list`), or hf:OWNER/REPO[:QUANT] "
        f"(default: {DEFAULT_MODEL})",
    )
    b.add_argument(
        "-p",
        "--n-prompt",
        type=int,
        default=512,
        metavar="N",
        help="prompt tokens for the pp test; 0 skips it (default 512)",
    )
    b.add_argument(
        "-n",
        "--n-gen",
        type=int,
        default=128,
        metavar="N",
        help="generated tokens for the tg test; 0 skips it (default 128)",
    )
    b.add_argument(
        "-r",
        "--repetitions",
        type=int,
        default=5,
        metavar="R",
        help="measured repetitions per test and engine, after one warm-up round that is not "
        "counted (default 5)",
    )
    b.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for both engines, capped at the logical CPUs (default: what metallic "
        "chooses on its own, the physical cores; llama.cpp gets the same count)",
    )
    b.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="metallic's backend: auto (Metal if present, else cpu), cpu, metal, or metal-sim "
        "(the Metal simulator, for correctness, not speed); llama.cpp always runs its own "
        "default build (default: auto; $METALLIC_BACKEND, when set, takes the place of auto)",
    )
    b.add_argument(
        "--chip",
        default=DEFAULT_CHIP,
        metavar="NAME",
        help="with --backend metal-sim: the Apple chip the simulator's measured memory traffic "
        f"is projected onto (one of {', '.join(CHIPS)}; default {DEFAULT_CHIP}); a projection "
        "to rank designs by, not a measurement (docs/metal.md)",
    )
    b.add_argument(
        "--vs-llama-cpp",
        action="store_true",
        help="also run llama.cpp (llama-cpp-python, the bench extra) on the same file and "
        "threads, interleaved with metallic, and print the ratios metallic / llama.cpp",
    )
    b.add_argument(
        "--chart",
        metavar="FILE",
        help="also write the comparison as a self-contained HTML chart (tokens/s per test and "
        "engine, the ratios; needs plotly, the viz extra)",
    )
    b.add_argument(
        "--output",
        choices=["table", "json", "csv"],
        default="table",
        help="table: a header of what ran, then tokens/s, the ratios, peak RSS and decode "
        "bandwidth; json: every repetition's tokens/s, peak RSS, the bandwidth measured, and "
        "what ran under 'build'; csv: one row per engine and test (default: table)",
    )
    b.set_defaults(func=cmd_bench)


def validate(args: argparse.Namespace) -> None:
    for name in ("n_prompt", "n_gen"):
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 0")
    if args.repetitions < 1:
        raise SystemExit("error: --repetitions must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("error: --threads must be >= 1")
    if args.n_prompt == 0 and args.n_gen == 0:
        raise SystemExit("error: nothing to measure (both -p and -n are 0)")
    from .projection import chip

    try:
        chip(args.chip)
    except ValueError as e:
        raise SystemExit(f"error: --chip: {e}") from None


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        raise SystemExit(worker(sys.argv[2:]))
    raise SystemExit("usage: python -m metallic bench ...")
