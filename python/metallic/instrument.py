"""Instrumentation switched by environment variables: logs, metrics as JSON lines, a live status
line, per-op profiling. docs/inference-path.md has the table; in short:

=============================  ==============================================================
METALLIC_LOG_LEVEL             level of the ``metallic`` logger (DEBUG, INFO, WARNING, ERROR,
                               or a number); set, it also gets a stderr handler if it has none
METALLIC_METRICS_JSONL_PATH    append one JSON line per generated token and one per request
                               (its end) to this file
METALLIC_METRICS_CONSOLE       1: a live status line on stderr (tokens, tok/s, cache, memory)
METALLIC_ENABLE_PROFILING      1: time every op of the forward pass (the same as
                               METALLIC_PROFILE=1 and load(profile=True)); the per-op times,
                               and on Metal the command buffers' GPU time, go into each
                               request's JSON line
=============================  ==============================================================

They are read when this module is first imported (metallic.model imports it), and again by
``configure()``. With none of them set the hooks cost one test of a module global per request:
``observe`` hands the generation's token iterator back unchanged.

The C++ core logs nothing: it reports every problem as an exception (errors.py), and its only
writes to stderr are the messages of a failed internal assertion or simulator check printed just
before the process aborts, which no logger could forward.

The generation loop reports through one call (generate.py)::

    yield from instrument.observe(model, stats, _steps(...))

which passes the tokens through, writing a token record for each and a request record when the
generation ends (normally, by an error, or closed early by its consumer).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from .system import peak_rss_bytes

log = logging.getLogger("metallic")

ENV_LOG_LEVEL = "METALLIC_LOG_LEVEL"
ENV_JSONL = "METALLIC_METRICS_JSONL_PATH"
ENV_CONSOLE = "METALLIC_METRICS_CONSOLE"
ENV_PROFILING = "METALLIC_ENABLE_PROFILING"
ENV_PROFILE = "METALLIC_PROFILE"  # the older name of the same switch

# The fields of the records, as documented (tests check every record has exactly these).
TOKEN_FIELDS = (
    "type",  # "token"
    "request",  # the request's number in this process, from 1
    "time",  # Unix time of the token's sampling, seconds
    "index",  # 0 for the first generated token
    "token",  # its id
    "text",  # the text it released (may be "" while a character or a stop string is pending)
    "elapsed_seconds",  # since the request started
    "prompt_tokens_per_second",  # the prompt's uncached tokens over its prefill time
    "decode_tokens_per_second",  # decode steps so far over their time (0 for the first token)
    "n_past",  # positions the KV cache holds
    "n_ctx",  # positions it can hold
    "cache_use",  # n_past / n_ctx
    "peak_rss_bytes",  # the process's peak resident memory so far
)
REQUEST_FIELDS = (
    "type",  # "request"
    "request",
    "start_time",  # Unix times
    "end_time",
    "model",  # the GGUF file
    "backend",
    "prompt_tokens",
    "cached_tokens",  # of the prompt, reused from the cache
    "generated_tokens",
    "stop_reason",  # "eog", "length", "stop", "context", "closed" (consumer stopped), "error"
    "error",  # the exception's type and message, or null
    "first_token_seconds",
    "prompt_seconds",
    "decode_seconds",
    "prompt_tokens_per_second",
    "decode_tokens_per_second",
    "n_past",
    "n_ctx",
    "cache_use",
    "peak_rss_bytes",
    "profile",  # with profiling: {"prompt": {op: [calls, seconds]}, "decode": {...}}, and on
    # Metal "gpu": {"command_buffers": n, "seconds": their GPU time}; else null
)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def parse_level(text: str) -> int:
    """'debug' / 'INFO' / '10' -> a logging level; ValueError otherwise."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    level = logging.getLevelName(t.upper())
    if not isinstance(level, int):
        raise ValueError(f"{ENV_LOG_LEVEL}={text!r} is not a logging level")
    return level


@dataclass(frozen=True)
class Settings:
    log_level: int | None = None
    jsonl_path: str | None = None
    console: bool = False
    profiling: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        level = None
        if raw := env.get(ENV_LOG_LEVEL, "").strip():
            try:
                level = parse_level(raw)
            except ValueError as e:
                print(f"warning: {e}; ignored", file=sys.stderr)
        return cls(
            log_level=level,
            jsonl_path=env.get(ENV_JSONL, "").strip() or None,
            console=_flag(env, ENV_CONSOLE),
            profiling=_flag(env, ENV_PROFILING) or _flag(env, ENV_PROFILE),
        )


def profiling_requested(env: Mapping[str, str] | None = None) -> bool:
    """METALLIC_ENABLE_PROFILING or METALLIC_PROFILE: load()'s default for profile=."""
    return Settings.from_env(env).profiling


_handler: logging.Handler | None = None


def configure_logging(level: int | None) -> None:
    """Sets the ``metallic`` logger's level; with a level, logs reach stderr through a handler
    of ours unless the logger (or the application, on the root) already has one."""
    global _handler
    if level is None:
        return
    log.setLevel(level)
    if not log.handlers and not logging.getLogger().handlers:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(_handler)


class Metrics:
    """The sinks: the JSON lines file and the console line. Thread-safe (one lock)."""

    def __init__(self, settings: Settings, console: TextIO | None = None) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._console = console if console is not None else sys.stderr
        self._last_draw = 0.0

    def write(self, record: dict[str, Any]) -> None:
        path = self.settings.jsonl_path
        if not path:
            return
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        with self._lock:
            # Opened per record, appended and closed: the file stays whole whatever becomes of
            # the process, and several processes may share it (each line is one write).
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)

    def status(self, text: str, final: bool = False) -> None:
        """The console line: redrawn in place (at most 10 times a second) on a terminal; on
        anything else, written once per request, at its end."""
        if not self.settings.console:
            return
        tty = getattr(self._console, "isatty", lambda: False)()
        now = time.monotonic()
        with self._lock:
            if tty:
                if not final and now - self._last_draw < 0.1:
                    return
                self._last_draw = now
                self._console.write(f"\r\x1b[2K{text}" + ("\n" if final else ""))
            elif final:
                self._console.write(text + "\n")
            self._console.flush()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)


_settings = Settings()
_metrics: Metrics | None = None


def configure(env: Mapping[str, str] | None = None, console: TextIO | None = None) -> Settings:
    """(Re)reads the environment (or `env`): the logger's level and the metrics sinks."""
    global _settings, _metrics
    _settings = Settings.from_env(env)
    configure_logging(_settings.log_level)
    active = _settings.jsonl_path is not None or _settings.console
    _metrics = Metrics(_settings, console) if active else None
    return _settings


def settings() -> Settings:
    return _settings


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class _Request:
    """One generation's metrics as it runs."""

    def __init__(self, metrics: Metrics, model: Any, stats: Any) -> None:
        self.m = metrics
        self.model = model
        self.stats = stats
        self.id = metrics.next_id()
        self.start = time.time()
        self.t0 = time.perf_counter()
        self.count = 0
        self.t_first = 0.0
        self.text_bytes = 0
        self.gpu0 = self._gpu()

    def _gpu(self) -> dict[str, int]:
        """The GPU backend's counters (empty on the CPU), read when profiling: the request's
        command buffers and their GPU time are the difference between its end and start."""
        if not getattr(self.model, "profiling", False):
            return {}
        return dict(getattr(self.model, "gpu_stats", dict)())

    def _cache(self) -> dict[str, Any]:
        n_past, n_ctx = int(self.model.n_past), int(self.model.n_ctx)
        return {"n_past": n_past, "n_ctx": n_ctx, "cache_use": n_past / n_ctx if n_ctx else 0.0}

    def token(self, tok: Any) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.t_first = now
        decode = _rate(self.count, now - self.t_first)
        prompt = float(self.stats.prompt_tps)
        cache = self._cache()
        rss = peak_rss_bytes()
        self.m.write(
            {
                "type": "token",
                "request": self.id,
                "time": time.time(),
                "index": self.count,
                "token": int(tok.id),
                "text": tok.text,
                "elapsed_seconds": now - self.t0,
                "prompt_tokens_per_second": _finite(prompt),
                "decode_tokens_per_second": _finite(decode),
                **cache,
                "peak_rss_bytes": rss,
            }
        )
        self.count += 1
        self.m.status(self._status_line(decode, cache, rss))

    def _status_line(self, decode: float, cache: dict[str, Any], rss: int) -> str:
        return (
            f"[metallic #{self.id}] {self.count} tokens | prompt {self.stats.prompt_tps:.1f} "
            f"tok/s | decode {decode:.1f} tok/s | cache {cache['n_past']}/{cache['n_ctx']} | "
            f"peak {rss / 2**20:.0f} MiB"
        )

    def end(self, stop_reason: str, error: BaseException | None) -> None:
        s = self.stats
        profile = None
        if getattr(self.model, "profiling", False):
            profile = {
                "prompt": {k: list(v) for k, v in s.profile_prompt.items()},
                "decode": {k: list(v) for k, v in s.profile_decode.items()},
            }
            gpu1 = self._gpu()
            if "gpu_ns" in gpu1 and "gpu_ns" in self.gpu0:  # a Metal backend
                profile["gpu"] = {
                    "command_buffers": gpu1["command_buffers"] - self.gpu0["command_buffers"],
                    "seconds": (gpu1["gpu_ns"] - self.gpu0["gpu_ns"]) / 1e9,
                }
        cache = self._cache()
        rss = peak_rss_bytes()
        self.m.write(
            {
                "type": "request",
                "request": self.id,
                "start_time": self.start,
                "end_time": time.time(),
                "model": str(self.model.path),
                "backend": self.model.backend,
                "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens,
                "generated_tokens": s.generated_tokens,
                "stop_reason": stop_reason,
                "error": None if error is None else f"{type(error).__name__}: {error}",
                "first_token_seconds": s.first_token_seconds,
                "prompt_seconds": s.prompt_seconds,
                "decode_seconds": s.decode_seconds,
                "prompt_tokens_per_second": _finite(float(s.prompt_tps)),
                "decode_tokens_per_second": _finite(float(s.decode_tps)),
                **cache,
                "peak_rss_bytes": rss,
                "profile": profile,
            }
        )
        decode = float(s.decode_tps)
        self.m.status(self._status_line(decode, cache, rss) + f" | {stop_reason}", final=True)
        log.debug("request %d: %s", self.id, s)


def observe(model: Any, stats: Any, tokens: Iterator[Any]) -> Iterator[Any]:
    """The generation's tokens (generate.py's Token: .id, .text), passed through; with metrics
    on, each token (id >= 0) and the request's end are recorded. `stats` is the generation's
    GenerationStats, complete when the iterator ends."""
    if _metrics is None:
        return tokens
    return _observed(_metrics, model, stats, tokens)


def _observed(metrics: Metrics, model: Any, stats: Any, tokens: Iterator[Any]) -> Iterator[Any]:
    req = _Request(metrics, model, stats)
    reason: str | None = None
    error: BaseException | None = None
    try:
        for tok in tokens:
            if tok.id >= 0:
                req.token(tok)
            yield tok
        reason = stats.stop_reason or "length"
    except GeneratorExit:
        reason = "closed"
        close = getattr(tokens, "close", None)
        if close is not None:  # as `yield from` would: the generation ends now
            close()
        raise
    except BaseException as e:
        reason, error = "error", e
        raise
    finally:
        req.end(reason or "closed", error)


class _Token:
    __slots__ = ("id", "text")

    def __init__(self, token_id: int, text: str) -> None:
        self.id, self.text = token_id, text


class _ServedModel:
    """What a record names of a served request's model: the file, the backend, the slot's
    cache (n_past is set before each record)."""

    profiling = False  # per-op times are the batch's, not one request's

    def __init__(self, model: Any, n_ctx: int) -> None:
        self.path = getattr(model, "path", "")
        self.backend = getattr(model, "backend", "")
        self.n_ctx = n_ctx
        self.n_past = 0


class _ServedStats:
    """The scheduler's RequestStats under GenerationStats' names, as _Request reads them."""

    def __init__(self, stats: Any) -> None:
        self.s = stats

    prompt_tokens = property(lambda self: self.s.prompt_tokens)
    cached_tokens = property(lambda self: self.s.cached_tokens)
    generated_tokens = property(lambda self: self.s.completion_tokens)
    first_token_seconds = property(lambda self: self.s.time_to_first_token)
    prompt_seconds = property(lambda self: self.s.prompt_seconds)
    decode_seconds = property(lambda self: self.s.decode_seconds)
    prompt_tps = property(
        lambda self: _rate(self.s.prompt_tokens - self.s.cached_tokens, self.s.prompt_seconds)
    )
    decode_tps = property(
        lambda self: _rate(max(self.s.completion_tokens - 1, 0), self.s.decode_seconds)
    )


class Served:
    """The records of a request the scheduler runs (the server's): a token record per token it
    streams and a request record at its end, as observe() writes them for a generation."""

    def __init__(self, metrics: Metrics, model: Any, n_ctx: int, stats: Any) -> None:
        self._model = _ServedModel(model, n_ctx)
        self._req = _Request(metrics, self._model, _ServedStats(stats))

    def token(self, token_id: int, text: str, n_past: int) -> None:
        self._model.n_past = n_past
        self._req.token(_Token(token_id, text))

    def end(self, reason: str, error: BaseException | None, n_past: int) -> None:
        self._model.n_past = n_past
        # the scheduler's reasons under the records' names ("cancelled": the client left)
        self._req.end({"cancelled": "closed"}.get(reason, reason), error)


def served(model: Any, n_ctx: int, stats: Any) -> Served | None:
    """A scheduled request's records, or None when metrics are off (scheduler.py)."""
    return None if _metrics is None else Served(_metrics, model, n_ctx, stats)


configure()
