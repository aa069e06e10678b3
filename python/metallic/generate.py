"""The generation loop: prompt -> cache reuse -> prefill -> sample/decode until a stop rule.

Python owns the policy here (tokenization, sampling, stop rules, streaming text); each step's
compute is one call into the engine.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .sampling import Sampler, SamplerSettings

if TYPE_CHECKING:
    from .model import Model


@dataclass(frozen=True)
class Token:
    """One generated token and the text it releases. The text may be empty while a
    multi-byte character is incomplete or could still become a stop string; held text is
    released with a later token, or at the very end as a text-only Token with id -1."""

    id: int
    text: str


@dataclass
class GenerationStats:
    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # of those, already in the KV cache (not run again)
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    stop_reason: str = ""  # "eog", "length", "stop", "context"
    sample_seconds: float = 0.0  # of decode_seconds, spent sampling
    engine_seconds: float = 0.0  # of decode_seconds, spent in the engine's decode
    # With profiling on: per-op (calls, seconds) of the prompt, and of the decode steps.
    profile_prompt: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    profile_decode: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def prompt_tps(self) -> float:
        run = self.prompt_tokens - self.cached_tokens
        return run / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        # The first generated token comes from the prompt's logits; the rest cost a decode.
        steps = max(self.generated_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else 0.0


class StopStrings:
    """Streams text while watching for stop strings that may span several tokens: text that
    could still be the start of a stop string is held back until it is decided."""

    def __init__(self, stops: Sequence[str]) -> None:
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        self.stops = list(stops)
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Adds text; returns what can be released. After a match, `hit` is set and the text
        before the stop string is returned."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        first = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if first >= 0:
            self.hit = True
            out, self.pending = self.pending[:first], ""
            return out
        # Hold back the longest tail that is a prefix of some stop string.
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _settings(sampler: SamplerSettings | None, overrides: dict[str, Any]) -> SamplerSettings:
    base = sampler or SamplerSettings()
    known = {f.name for f in dataclasses.fields(SamplerSettings)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown sampler setting(s): {', '.join(sorted(unknown))}")
    settings = dataclasses.replace(base, **overrides)
    settings.validate()
    return settings


def generate(
    model: Model,
    prompt: str | Sequence[int],
    max_tokens: int,
    sampler: SamplerSettings | None,
    *,
    stop: Sequence[str] = (),
    stop_ids: Sequence[int] | None = None,
    **overrides: Any,
) -> Iterator[Token]:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ValueError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
    settings = _settings(sampler, overrides)
    stops = StopStrings(stop)
    if isinstance(prompt, str):
        ids = model.tokenize(prompt)
    else:
        ids = [int(i) for i in prompt]
    if not ids:
        raise ValueError("the prompt is empty (no tokens)")
    if stop_ids is None:
        stop_ids = sorted(model.tokenizer.eog_ids) if _has_tokenizer(model) else []
    eog = frozenset(int(i) for i in stop_ids)
    return _run(model, ids, max_tokens, Sampler(settings), stops, eog)


def _has_tokenizer(model: Model) -> bool:
    return "tokenizer.ggml.model" in model.metadata


def _run(
    model: Model,
    ids: list[int],
    max_tokens: int,
    sampler: Sampler,
    stops: StopStrings,
    eog: frozenset[int],
) -> Iterator[Token]:
    stats = GenerationStats(prompt_tokens=len(ids))
    model.last_stats = stats
    if len(ids) > model.n_ctx:
        from .errors import ContextError

        raise ContextError(
            f"the prompt has {len(ids)} tokens but the context holds {model.n_ctx} "
            "(load with a larger n_ctx or shorten the prompt)"
        )

    t0 = time.perf_counter()
    stats.cached_tokens = model.reuse_prefix(ids)
    if model.profiling:
        model.profile(reset=True)
    logits = model.prefill(ids[stats.cached_tokens :])
    stats.prompt_seconds = time.perf_counter() - t0
    if model.profiling:
        stats.profile_prompt = model.profile(reset=True)

    detok = model.tokenizer.stream() if _has_tokenizer(model) else None

    def drain() -> str:
        """Text still held by the detokenizer or the stop matcher, at the end of the run."""
        text = stops.feed(detok.flush()) if detok else ""
        return text if stops.hit else text + stops.flush()

    history = list(ids)
    t1 = time.perf_counter()
    stats.stop_reason = "length"
    for i in range(max_tokens):
        ts = time.perf_counter()
        tok = sampler.sample(logits, history)
        stats.sample_seconds += time.perf_counter() - ts
        stats.generated_tokens += 1
        if tok in eog:
            stats.stop_reason = "eog"
            break
        history.append(tok)
        text = stops.feed(detok.push(tok)) if detok else ""
        if stops.hit:
            stats.stop_reason = "stop"
        elif i == max_tokens - 1:
            stats.stop_reason = "length"
        elif model.n_past >= model.n_ctx:
            stats.stop_reason = "context"  # no room to run this token
        else:
            stats.decode_seconds = time.perf_counter() - t1
            yield Token(tok, text)
            te = time.perf_counter()
            logits = model.decode(tok)
            stats.engine_seconds += time.perf_counter() - te
            continue
        stats.decode_seconds = time.perf_counter() - t1
        if model.profiling:
            stats.profile_decode = model.profile()
        yield Token(tok, text + drain())
        return
    stats.decode_seconds = time.perf_counter() - t1
    if model.profiling:
        stats.profile_decode = model.profile()
    if tail := drain():
        yield Token(-1, tail)
