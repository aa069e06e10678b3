"""Instrumentation by environment (metallic/instrument.py): the JSON lines, the console line,
the log level, the profiling switch. The sinks are driven as generate.py drives them
(``instrument.observe(model, stats, tokens)``) around a real generation of a small model."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import metallic
from metallic import instrument

PROMPT = [5, 6, 7, 8]


@pytest.fixture(autouse=True)
def restore() -> Iterator[None]:
    logger = logging.getLogger("metallic")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    instrument.configure({})


@pytest.fixture
def path(small_gguf: Path) -> Path:
    return small_gguf  # no tokenizer: the tokens' text is ""


class LastStats:
    """The generation's GenerationStats, which generate() creates when it starts."""

    def __init__(self, model: metallic.Model) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model.last_stats, name)


def generate(model: metallic.Model, n: int, **kw: Any) -> Iterator[Any]:
    """Model.generate, which records through instrument.observe (generate.py's _run)."""
    return model.generate(PROMPT, n, temperature=0, stop_ids=[], **kw)


def records(p: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in p.read_text().splitlines()]


def test_jsonl_has_one_record_per_token_and_one_per_request(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.jsonl"
    instrument.configure({"METALLIC_METRICS_JSONL_PATH": str(out)})
    m = metallic.load(path, n_ctx=32)
    got = [t.id for t in generate(m, 6) if t.id >= 0]
    recs = records(out)
    tokens, (request,) = recs[:-1], recs[-1:]
    assert [r["type"] for r in tokens] == ["token"] * 6 and request["type"] == "request"
    for r in tokens:
        assert tuple(r) == instrument.TOKEN_FIELDS
    assert tuple(request) == instrument.REQUEST_FIELDS
    assert [r["token"] for r in tokens] == got
    assert [r["index"] for r in tokens] == list(range(6))
    assert len({r["request"] for r in recs}) == 1
    times = [r["time"] for r in tokens]
    assert times == sorted(times) and request["start_time"] <= times[0] <= request["end_time"]
    # The cache grows by one position per decoded token (the last token is not decoded).
    assert [r["n_past"] for r in tokens] == [len(PROMPT) + i for i in range(6)]
    assert all(r["cache_use"] == r["n_past"] / 32 and r["n_ctx"] == 32 for r in tokens)
    assert tokens[0]["decode_tokens_per_second"] == 0 and tokens[-1]["decode_tokens_per_second"] > 0
    assert all(r["prompt_tokens_per_second"] > 0 and r["peak_rss_bytes"] > 0 for r in tokens)
    s = m.last_stats
    assert (request["prompt_tokens"], request["generated_tokens"]) == (len(PROMPT), 6)
    assert (request["stop_reason"], request["error"], request["profile"]) == ("length", None, None)
    assert request["decode_tokens_per_second"] == pytest.approx(s.decode_tps)
    assert request["backend"] == m.backend and request["model"] == str(path)
    # A second request appends, numbered on.
    list(generate(m, 2))
    assert [r["request"] for r in records(out)[7:]] == [2, 2, 2]


def test_closed_early_and_failed_requests_are_recorded(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics.jsonl"
    instrument.configure({"METALLIC_METRICS_JSONL_PATH": str(out)})
    m = metallic.load(path, n_ctx=32)
    it = generate(m, 10)
    next(it), next(it)
    it.close()  # the consumer stops: the request ends there
    assert [(r["type"], r.get("stop_reason")) for r in records(out)] == [
        ("token", None),
        ("token", None),
        ("request", "closed"),
    ]
    m.truncate(0)  # the model is free again: the generation was closed, not left hanging

    def failing() -> Iterator[Any]:
        yield from m.generate(PROMPT, 3, temperature=0, stop_ids=[])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # a stream that fails, observed itself
        list(instrument.observe(m, LastStats(m), failing()))
    last = records(out)[-1]
    assert (last["stop_reason"], last["error"]) == ("error", "RuntimeError: boom")


def test_profiling_switch_and_per_op_times(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env, want in (
        ({"METALLIC_ENABLE_PROFILING": "1"}, True),
        ({"METALLIC_PROFILE": "1"}, True),
        ({"METALLIC_ENABLE_PROFILING": "0"}, False),
        ({}, False),
    ):
        assert instrument.profiling_requested(env) is want
    monkeypatch.delenv("METALLIC_PROFILE", raising=False)
    monkeypatch.setenv("METALLIC_ENABLE_PROFILING", "1")
    m = metallic.load(path, n_ctx=32)
    assert m.profiling
    out = tmp_path / "metrics.jsonl"
    instrument.configure({"METALLIC_METRICS_JSONL_PATH": str(out)})
    list(generate(m, 4))
    profile = records(out)[-1]["profile"]
    assert set(profile) == {"prompt", "decode"}
    calls, seconds = profile["decode"]["attention"]
    assert calls == 3 * m.config.n_layer and seconds > 0  # 3 decode steps


def test_console_line(path: Path) -> None:
    console = io.StringIO()  # not a terminal: one line per request, at its end
    instrument.configure({"METALLIC_METRICS_CONSOLE": "1"}, console=console)
    m = metallic.load(path, n_ctx=32)
    list(generate(m, 5))
    (line,) = console.getvalue().splitlines()
    assert "5 tokens" in line and "cache 8/32" in line and line.endswith("| length")


def test_metrics_off_costs_nothing(path: Path) -> None:
    instrument.configure({})
    tokens = iter([])
    assert instrument.observe(None, None, tokens) is tokens


def test_log_level_filters(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.NOTSET)  # capture whatever the metallic logger lets through
    instrument.configure({"METALLIC_LOG_LEVEL": "warning"})
    metallic.load(path, n_ctx=8)
    assert not [r for r in caplog.records if r.name == "metallic.model"]
    instrument.configure({"METALLIC_LOG_LEVEL": "INFO"})
    metallic.load(path, n_ctx=8)
    (rec,) = [r for r in caplog.records if r.name == "metallic.model"]
    assert rec.levelno == logging.INFO and "loaded" in rec.getMessage()
    assert instrument.parse_level("10") == logging.DEBUG
    with pytest.raises(ValueError):
        instrument.parse_level("loud")


def test_generate_flags_set_the_same_switches(path: Path, tmp_path: Path) -> None:
    from metallic.cli import main

    out = tmp_path / "m.jsonl"
    argv = ["generate", "-m", str(path), "--prompt-ids", "1,2,3", "-n", "2", "--temp", "0"]
    flags = ["--metrics-jsonl", str(out), "--log-level", "debug", "--metrics-console"]
    assert main([*argv, "--output-format", "none", *flags]) == 0
    s = instrument.settings()
    assert (s.jsonl_path, s.log_level, s.console) == (str(out), logging.DEBUG, True)
    assert logging.getLogger("metallic").level == logging.DEBUG
    with pytest.raises(SystemExit):
        main([*argv, "--log-level", "loud"])  # refused when parsed


def test_profiling_on_metal_records_the_command_buffers_gpu_time(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Metal backend (the simulator here) a profiled request's record also has its command
    buffers and their GPU time (gpu_stats' gpu_ns: Metal's GPUEndTime - GPUStartTime)."""
    monkeypatch.setenv("METALLIC_ENABLE_PROFILING", "1")
    m = metallic.load(path, n_ctx=32, backend="metal-sim")
    out = tmp_path / "metrics.jsonl"
    instrument.configure({"METALLIC_METRICS_JSONL_PATH": str(out)})
    before = m.gpu_stats()
    list(generate(m, 4))
    after = m.gpu_stats()
    gpu = records(out)[-1]["profile"]["gpu"]
    # one command buffer for the prompt and one per decode step; their time within the request's
    assert gpu["command_buffers"] == after["command_buffers"] - before["command_buffers"] == 4
    assert 0 < gpu["seconds"] <= records(out)[-1]["end_time"] - records(out)[-1]["start_time"]


def test_served_requests_are_recorded(path: Path, tmp_path: Path) -> None:
    """The scheduler's requests (the server's) write the same records: each request's tokens
    under its own number, in its own order, and one request record at its end."""
    from metallic.sampling import SamplerSettings
    from metallic.scheduler import Request, Scheduler, make_slots

    out = tmp_path / "metrics.jsonl"
    instrument.configure({"METALLIC_METRICS_JSONL_PATH": str(out)})
    model, slots = make_slots(path, 2, 32, "cpu", threads=1)
    greedy = SamplerSettings(temperature=0)
    with Scheduler(slots, model=model) as sched:
        streams = [sched.submit(Request([1, 2, 3 + k], 4 + k, greedy, stop_ids=[])) for k in (0, 1)]
        got = [[e.id for e in s] for s in streams]
    recs = records(out)
    requests = [r for r in recs if r["type"] == "request"]
    assert len(requests) == 2 and all(tuple(r) == instrument.REQUEST_FIELDS for r in requests)
    for req in requests:
        tokens = [r for r in recs if r["type"] == "token" and r["request"] == req["request"]]
        assert all(tuple(r) == instrument.TOKEN_FIELDS for r in tokens)
        assert [r["token"] for r in tokens] in got  # one request's tokens, in order
        assert [r["index"] for r in tokens] == list(range(len(tokens)))
        assert req["generated_tokens"] == len(tokens) and req["stop_reason"] == "length"
        assert req["model"] == str(path) and req["backend"] == "cpu" and req["n_ctx"] == 32
        assert req["n_past"] == 3 + len(tokens) - 1  # the prompt and all but the last token
