"""The generation loop: prompt -> cache reuse -> prefill -> sample/decode until a stop rule.

Python owns the policy here (tokenization, sampling, stop rules, streaming text); each step's
compute is one call into the engine.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import instrument
from .errors import ContextError, RequestError
from .sampling import Sampler, SamplerSettings, greedy_status_error

if TYPE_CHECKING:
    from .model import Model
    from .tokenizer import Tokenizer

# Tokens per wait in GPU-resident greedy decoding: a burst of 8 is one command buffer, and a
# stop inside it discards at most 7 tokens' work.
RESIDENT_BURST = 8


@dataclass(frozen=True)
class Token:
    """One generated token and the text it releases. The text may be empty while a
    multi-byte character is incomplete or could still become a stop string; held text is
    released with a later token, or at the very end as a text-only Token with id -1."""

    id: int
    text: str


@dataclass
class GenerationStats:
    """What one generate() did and how long it took; ``str()`` gives the one-line summary the
    CLI prints. Times are in seconds; the rates are properties."""

    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # of those, already in the KV cache (not run again)
    tokenize_seconds: float = 0.0  # turning the prompt text into ids
    prompt_seconds: float = 0.0  # running the prompt's uncached tokens (prefill)
    first_token_seconds: float = 0.0  # time to first token: from the call to the first sample
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

    def __str__(self) -> str:
        return (
            f"prompt: {self.prompt_tokens} tokens ({self.cached_tokens} cached) at "
            f"{self.prompt_tps:.1f} tok/s | first token: {1e3 * self.first_token_seconds:.0f} ms "
            f"| decode: {self.generated_tokens} tokens at {self.decode_tps:.1f} tok/s | stop: "
            f"{self.stop_reason}"
        )


class StopStrings:
    """Streams text while watching for stop strings that may span several tokens: text that
    could still be the start of a stop string is held back until it is decided."""

    def __init__(self, stops: Sequence[str]) -> None:
        for s in stops:
            if not isinstance(s, str) or not s:
                raise RequestError(f"stop strings must be non-empty strings, got {s!r}")
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


class TextStream:
    """Generated token ids to the text a stream releases: incremental detokenization (no broken
    UTF-8 character is ever released) followed by the stop-string watch (StopStrings). Without
    a tokenizer (a model driven by token ids alone) it releases no text."""

    def __init__(self, tokenizer: Tokenizer | None, stops: StopStrings) -> None:
        self._detok = tokenizer.stream() if tokenizer is not None else None
        self.stops = stops

    @property
    def hit(self) -> bool:
        """Whether a stop string was found (the text before it has been released)."""
        return self.stops.hit

    def push(self, token_id: int) -> str:
        """Adds one token; returns the text that can be released."""
        return self.stops.feed(self._detok.push(token_id)) if self._detok else ""

    def drain(self) -> str:
        """Ends the stream: the text still held by the detokenizer or the stop matcher."""
        text = self.stops.feed(self._detok.flush()) if self._detok else ""
        return text if self.stops.hit else text + self.stops.flush()


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
    stop: str | Sequence[str] | None = (),
    stop_ids: Sequence[int] | None = None,
    **overrides: Any,
) -> Iterator[Token]:
    if (
        isinstance(max_tokens, (bool, np.bool_))
        or not isinstance(max_tokens, (int, np.integer))
        or max_tokens < 0
    ):
        raise RequestError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    t_call = time.perf_counter()
    settings = _settings(sampler, overrides)
    stops = StopStrings(_stop_strings(stop))
    if isinstance(prompt, str):
        ids = encode_prompt(model, prompt)
    elif isinstance(prompt, (bytes, bytearray, memoryview)):
        # Iterating bytes gives their byte values, which would run as token ids.
        raise RequestError(
            f"prompt must be text (a str) or token ids (a sequence of int), got "
            f"{type(prompt).__name__}: decode it to a str first"
        )
    else:
        ids = _token_ids("prompt", prompt)
    if not ids:
        raise RequestError("the prompt is empty (no tokens)")
    if stop_ids is None:
        stop_ids = sorted(model.tokenizer.eog_ids) if _has_tokenizer(model) else []
    eog = frozenset(_token_ids("stop_ids", stop_ids))
    stats = GenerationStats(prompt_tokens=len(ids), tokenize_seconds=time.perf_counter() - t_call)
    return _run(model, ids, int(max_tokens), Sampler(settings), stops, eog, stats)


def prompt_byte_limit(tokenizer: Tokenizer, n_ctx: int) -> int:
    """The most UTF-8 bytes of text that can fit in ``n_ctx`` tokens: no token stands for more
    than the vocabulary's longest piece."""
    return n_ctx * tokenizer.max_piece_bytes


def encode_prompt(
    model: Model, text: str, *, add_special: bool = True, parse_special: bool = True
) -> list[int]:
    """Tokenizes a prompt (text, or a rendered chat template) for ``model``, first refusing
    with ContextError, without tokenizing it, text too long to fit in its context: tokenizing
    100 MB takes a minute and gigabytes only to be refused. The token count is checked exactly
    when the prompt runs."""
    tok = model.tokenizer
    limit = prompt_byte_limit(tok, model.n_ctx)
    if _utf8_length(text, limit) > limit:
        raise ContextError(
            f"the prompt is over {limit:,} bytes of text, more than a context of "
            f"{model.n_ctx:,} tokens can hold (no token of this vocabulary stands for more than "
            f"{tok.max_piece_bytes} bytes); load with a larger n_ctx or shorten the prompt"
        )
    return tok.encode(text, add_special=add_special, parse_special=parse_special)


def _utf8_length(text: str, limit: int) -> int:
    """The UTF-8 length of ``text``, or, past ``limit``, a lower bound over it, without
    encoding a copy of all of it."""
    if len(text) > limit or text.isascii():
        return len(text)  # a character is at least one byte
    chunk = 1 << 20
    size = 0
    for start in range(0, len(text), chunk):
        # Lone surrogates (from surrogateescape) are encoded as the tokenizer encodes them:
        # three bytes, as U+FFFD is.
        size += len(text[start : start + chunk].encode("utf-8", "surrogatepass"))
        if size > limit:
            break
    return size


def _stop_strings(stop: str | Sequence[str] | None) -> list[str]:
    # A str is itself a sequence of str (its characters), but as a stop it is one string.
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (bytes, bytearray, memoryview)):
        raise RequestError(
            f"stop must be a str or a sequence of str, got {type(stop).__name__}: "
            "decode it to a str first"
        )
    try:
        return list(stop)
    except TypeError:
        raise RequestError(
            f"stop must be a str or a sequence of str, got {type(stop).__name__}"
        ) from None


def _token_ids(name: str, ids: object) -> list[int]:
    """``ids`` as a list of int, refusing what int() would silently change: floats (truncated),
    bools, strings. Python and NumPy integers, and 1-D NumPy integer arrays, are accepted."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise RequestError(
                f"{name} must be a 1-D array of integer token ids, got a {ids.ndim}-D array "
                f"of {ids.dtype}"
            )
        return [int(i) for i in ids]
    if isinstance(ids, (str, bytes, bytearray, memoryview)):
        raise RequestError(
            f"{name} must be a sequence of integer token ids, got {type(ids).__name__}"
        )
    try:
        items = list(ids)  # type: ignore[call-overload]
    except TypeError:
        raise RequestError(
            f"{name} must be a sequence of integer token ids, got {type(ids).__name__}"
        ) from None
    for k, i in enumerate(items):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise RequestError(
                f"{name} must hold integer token ids, got {i!r} ({type(i).__name__}) at index {k}"
            )
    return [int(i) for i in items]


def _has_tokenizer(model: Model) -> bool:
    return "tokenizer.ggml.model" in model.metadata


def _run(
    model: Model,
    ids: list[int],
    max_tokens: int,
    sampler: Sampler,
    stops: StopStrings,
    eog: frozenset[int],
    stats: GenerationStats,
) -> Iterator[Token]:
    if len(ids) > model.n_ctx:
        from .errors import ContextError

        raise ContextError(
            f"the prompt has {len(ids)} tokens but the context holds {model.n_ctx} "
            "(load with a larger n_ctx or shorten the prompt)"
        )

    t_start = time.perf_counter()  # the first next(): a wait for the model counts as latency
    with model._lock.generation() as holder:
        model.last_stats = stats  # under the lock: the stats of the generation that ran last
        # METALLIC_METRICS_JSONL_PATH / _CONSOLE (instrument.py): a record per token and per
        # request; the iterator itself when metrics are off
        steps = _steps(model, ids, max_tokens, sampler, stops, eog, stats, holder, t_start)
        yield from instrument.observe(model, stats, steps)


def _steps(
    model: Model,
    ids: list[int],
    max_tokens: int,
    sampler: Sampler,
    stops: StopStrings,
    eog: frozenset[int],
    stats: GenerationStats,
    holder: Any,
    t_start: float,
) -> Iterator[Token]:
    """The generation itself, run while it holds the model (model.py's _ModelLock)."""
    t0 = time.perf_counter()
    stats.cached_tokens = model._reuse_prefix(ids)
    if model.profiling:
        model.profile(reset=True)
    logits = model._prefill(ids[stats.cached_tokens :])
    stats.prompt_seconds = time.perf_counter() - t0
    if model.profiling:
        stats.profile_prompt = model.profile(reset=True)

    out = TextStream(model.tokenizer if _has_tokenizer(model) else None, stops)

    history = list(ids)
    # GPU-resident decoding (Model.gpu_resident): for greedy settings, and sampled ones the
    # shared pick covers (Sampler.resident_pick), the backend picks the next RESIDENT_BURST
    # tokens itself, one wait for all, with the burst after them already queued on the GPU;
    # they queue here and are streamed one by one, through the same stop checks, each counted
    # as one of the sampler's draws. A queued token's input has already run (the cache is
    # len(queued) positions ahead of the one-token path), so stopping early truncates those
    # (and the engine drops the burst it queued at its next call).
    s = sampler.settings
    sampled = s.shared_pick
    resident = (
        model.gpu_resident
        and (s.greedy or sampled)
        and not s.penalties_active
        and not model.profiling
    )
    queued: deque[tuple[int, int]] = deque()
    t1 = time.perf_counter()
    stats.stop_reason = "length"
    try:
        for i in range(max_tokens):
            ts = time.perf_counter()
            if queued:
                tok, status = queued.popleft()
                if status:
                    raise greedy_status_error(status)
                if sampled:
                    sampler.draws += 1
            else:
                tok = sampler.sample(logits, history)
            stats.sample_seconds += time.perf_counter() - ts
            stats.generated_tokens += 1
            if i == 0:
                # Counted from the call that set the generation going (its tokenizing, a wait
                # for the model, the prefill), as a user waiting for the first word sees it.
                stats.first_token_seconds = stats.tokenize_seconds + time.perf_counter() - t_start
            if tok in eog:
                stats.stop_reason = "eog"
                break
            history.append(tok)
            text = out.push(tok)
            if out.hit:
                stats.stop_reason = "stop"
            elif i == max_tokens - 1:
                stats.stop_reason = "length"
            elif model.n_past - len(queued) >= model.n_ctx:
                stats.stop_reason = "context"  # no room to run this token
            else:
                stats.decode_seconds = time.perf_counter() - t1
                yield Token(tok, text)
                holder.thread = threading.get_ident()  # whoever resumed us holds the model now
                if queued:
                    continue  # this token's pass already ran
                te = time.perf_counter()
                if resident:
                    # This burst, and the next one queued behind it (the same rule, from where
                    # this one ends) so the GPU works while these tokens are streamed.
                    n = min(RESIDENT_BURST, max_tokens - 1 - i, model.n_ctx - model.n_past)
                    n_next = min(
                        RESIDENT_BURST, max_tokens - 1 - (i + n), model.n_ctx - model.n_past - n
                    )
                    burst = model._decode_resident(
                        tok, n, n_next=max(0, n_next), pick=sampler.resident_pick()
                    )
                    queued.extend(zip(*burst, strict=True))
                else:
                    logits = model._decode(tok)
                stats.engine_seconds += time.perf_counter() - te
                continue
            stats.decode_seconds = time.perf_counter() - t1
            if model.profiling:
                stats.profile_decode = model.profile()
            yield Token(tok, text + out.drain())
            return
    finally:
        if queued:
            model._truncate(model.n_past - len(queued))
    stats.decode_seconds = time.perf_counter() - t1
    if model.profiling:
        stats.profile_decode = model.profile()
    if tail := out.drain():
        yield Token(-1, tail)
