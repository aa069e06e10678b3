"""Continuous batching over Slots (batch.py): many requests, one step loop.

One background thread runs the loop. Requests are submitted from any thread (or asyncio loop)
and stream their tokens back through a Stream of their own. Each step:

1. Admit: waiting requests take free slots, in arrival order. A request takes the free slot
   whose cached tokens share the longest prefix with its prompt (ties: the least recently used
   slot); the slot is truncated to that prefix and only the rest of the prompt is prefilled. At
   least the prompt's last two tokens run again (its last one, for a 1-token prompt): the last
   must run to give logits, and a lone token would take the path whose rounding differs (below),
   so a prompt seen before would not give the answer it gave the first time.
2. Form the step: every decoding sequence gives its last sampled token; sequences still reading
   their prompt give a chunk each, oldest first, within a prefill budget (the tokens left under
   slots.max_batch, and at most ``prefill_chunk`` while other sequences are decoding, so that a
   long prompt delays running streams by one bounded chunk per step, not by its whole length).
3. Run it: ``slots.step(work)``, one forward pass, the logits of each entry's last token.
4. Sample: each sequence whose prompt is complete samples its next token with its own Sampler
   (and its token constraint, if any), streams the released text, and finishes on an end-of-
   generation token, a stop string, a done constraint (reason "stop"), max_tokens or a full
   context (reason "length"). A finished or cancelled sequence frees its slot; the cache it
   leaves (prompt + reply) is what a later request, such as the next turn of a chat, can reuse.

Chunks are never cut to a single token when more remain (unless the budget allows nothing
else): a 1-token forward pass takes the engine's matrix-vector path (int8-quantized activations
for quantized weights on the CPU), whose rounding differs from a batch's enough to change a
greedy choice, while a batch's arithmetic does not depend on how the prompt was split. So a
request's tokens are those of ``Model.generate`` run on the prompt alone.

``make_slots`` is the one place that decides which Slots implementation serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import instrument
from .batch import Slots
from .errors import ContextError, InternalError, MetallicError, RequestError
from .generate import StopStrings, TextStream
from .sampling import Sampler, SamplerSettings

if TYPE_CHECKING:
    from .model import Model
    from .tokenizer import Tokenizer

__all__ = [
    "Finish",
    "QueueFull",
    "Request",
    "RequestStats",
    "Scheduler",
    "SchedulerClosed",
    "Stream",
    "TokenConstraint",
    "TokenEvent",
    "TokenLogprob",
    "make_slots",
]

log = logging.getLogger("metallic.scheduler")

DEFAULT_PREFILL_CHUNK = 256


def make_slots(
    path: str | os.PathLike[str],
    n_slots: int,
    n_ctx: int | None = None,
    backend: str | None = None,
    *,
    threads: int | None = None,
    max_batch: int = 512,
    kv_dtype: str | None = None,
) -> tuple[Model, Slots]:
    """Loads the model for ``n_slots`` sequences of ``n_ctx`` positions each; returns the Model
    (for its tokenizer, metadata and config; not to be generated with while the slots serve)
    and its Slots (``Model.slots()``): one engine, every step one forward pass for all slots.
    """
    from .model import load

    if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
        raise RequestError(f"n_slots must be an integer >= 1, got {n_slots!r}")
    model = load(
        path, backend, n_ctx, threads, max_batch=max_batch, kv_dtype=kv_dtype, n_seq=n_slots
    )
    return model, model.slots()


# -- what a request asks for -------------------------------------------------------------------


class TokenConstraint(Protocol):
    """Restricts which tokens may come next (e.g. JSON output, metallic.constrain)."""

    def allowed(self) -> np.ndarray:
        """A boolean mask over the vocabulary: the tokens allowed next."""
        ...

    def advance(self, token_id: int) -> None:
        """Records the token that was chosen."""
        ...

    def done(self) -> bool:
        """Whether the output is complete (the request then finishes with reason "stop")."""
        ...


@dataclass(frozen=True)
class Request:
    """One generation: prompt token ids and how to continue them."""

    prompt: Sequence[int]
    max_tokens: int | None = None  # None: until a stop rule or a full context
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    stop: Sequence[str] = ()  # stop strings (not part of the output)
    stop_ids: Sequence[int] | None = None  # None: the tokenizer's end-of-generation ids
    logprobs: bool = False  # report each token's log-probability
    top_logprobs: int = 0  # ... and that many alternatives (0..20)
    constraint: TokenConstraint | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """log-softmax of the model's raw logits (before penalties, filters and constraints), as
    OpenAI reports them: the chosen token's, and the ``top`` most likely (id, logprob)."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """A generated token and the text it releases (maybe empty: an incomplete character, or
    text that could still become a stop string). id -1: trailing text released at the end."""

    id: int
    text: str
    logprob: TokenLogprob | None = None


@dataclass
class RequestStats:
    """Counts and times (time.perf_counter seconds) of one request."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, reused from the slot's cache (not run again)
    completion_tokens: int = 0  # tokens sampled, an end-of-generation token included
    submitted: float = 0.0
    admitted: float = 0.0  # took a slot (0: never did)
    first_token: float = 0.0  # sampled its first token (0: none)
    finished: float = 0.0
    token_times: list[float] = field(default_factory=list)  # when each token was sampled

    @property
    def queue_seconds(self) -> float:
        return max(self.admitted - self.submitted, 0.0) if self.admitted else 0.0

    @property
    def time_to_first_token(self) -> float:
        return self.first_token - self.submitted if self.first_token else 0.0

    @property
    def prompt_seconds(self) -> float:
        """From taking a slot to the first token: the prefill."""
        return self.first_token - self.admitted if self.first_token and self.admitted else 0.0

    @property
    def decode_seconds(self) -> float:
        return self.finished - self.first_token if self.first_token else 0.0

    @property
    def total_seconds(self) -> float:
        return self.finished - self.submitted if self.finished else 0.0

    def inter_token_seconds(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in pairwise(t)]


@dataclass(frozen=True)
class Finish:
    """How a request ended. reason: "stop" (end-of-generation token, stop string, constraint
    done), "length" (max_tokens or a full context), "cancelled", or "error" (``error`` says)."""

    reason: str
    stats: RequestStats
    error: BaseException | None = None


class QueueFull(MetallicError):
    """The scheduler's queue is full; try again later (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SchedulerClosed(MetallicError):
    """The scheduler is shutting down and takes no new requests."""


class Observer(Protocol):
    """What a scheduler reports as it runs (the server's metrics). Called on its thread."""

    def on_step(self, n_tokens: int, n_seqs: int, seconds: float) -> None: ...

    def on_finish(self, finish: Finish) -> None: ...


# -- the stream a caller reads -----------------------------------------------------------------


class Stream:
    """A submitted request's output: iterate it (``for`` in a thread, ``async for`` in an
    asyncio loop) for TokenEvents; iteration ends when the request finishes (``finish`` then
    says how) and raises the error of a request that failed. ``cancel()`` stops it at the
    scheduler's next step and frees its slot."""

    def __init__(self, request: Request, scheduler: Scheduler) -> None:
        self.request = request
        self._scheduler = scheduler
        self._q: queue.SimpleQueue[TokenEvent | Finish] = queue.SimpleQueue()
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelled = False
        self.finish: Finish | None = None
        self.stats = RequestStats(prompt_tokens=len(request.prompt))
        self._record: instrument.Served | None = None  # METALLIC_METRICS_* records, if on

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Asks the scheduler to stop this request (no effect once it finished)."""
        if self._cancelled or self.finish is not None:
            return
        self._cancelled = True
        self._scheduler._cancel(self)

    # The scheduler's side.
    def _put(self, item: TokenEvent | Finish) -> None:
        self._q.put(item)
        loop, event = self._loop, self._event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the consumer's loop has closed
                loop.call_soon_threadsafe(event.set)

    def _take(self, item: TokenEvent | Finish) -> TokenEvent | None:
        if isinstance(item, Finish):
            self.finish = item
            if item.error is not None:
                raise item.error
            return None
        return item

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            event = self._take(self._q.get())
            if event is None:
                return
            yield event

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        if self._event is None:
            self._event = asyncio.Event()  # before _loop: the scheduler reads them in order
            self._loop = asyncio.get_running_loop()
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                self._event.clear()
                try:  # an item put before the clear() has its set() already run
                    item = self._q.get_nowait()
                except queue.Empty:
                    await self._event.wait()
                    continue
            event = self._take(item)
            if event is None:
                return
            yield event


# -- the scheduler -----------------------------------------------------------------------------


@dataclass
class _Seq:
    """A request in a slot."""

    stream: Stream
    slot: int
    prompt: list[int]
    pos: int  # prompt tokens in the slot's cache
    sampler: Sampler
    text: TextStream
    stop_ids: frozenset[int]
    history: list[int]  # prompt + sampled tokens: the penalties' window
    next_input: int = -1  # the sampled token to run next (decoding)
    generated: int = 0

    @property
    def prefilling(self) -> bool:
        return self.pos < len(self.prompt)


class Scheduler:
    """Runs requests over ``slots`` with continuous batching (see the module's docstring).

    tokenizer: for the released text and the default stop ids (None: token ids only).
    max_queue: requests that may wait for a slot; more raise QueueFull.
    prefill_chunk: most prompt tokens per step while other sequences are decoding.
    observer: gets each step's size and each finished request (metrics).
    model: the Model the slots belong to, named in METALLIC_METRICS_JSONL_PATH's records.
    """

    def __init__(
        self,
        slots: Slots,
        tokenizer: Tokenizer | None = None,
        *,
        max_queue: int = 64,
        prefill_chunk: int | None = None,
        observer: Observer | None = None,
        model: Model | None = None,
    ) -> None:
        if max_queue < 0:
            raise RequestError(f"max_queue must be >= 0, got {max_queue}")
        self.slots = slots
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.max_batch = slots.max_batch
        chunk = DEFAULT_PREFILL_CHUNK if prefill_chunk is None else prefill_chunk
        if chunk < 1:
            raise RequestError(f"prefill_chunk must be >= 1, got {chunk}")
        self.prefill_chunk = min(chunk, self.max_batch)
        self.observer = observer
        self.model = model
        eog = tokenizer.eog_ids if tokenizer is not None else ()
        self._default_stop_ids = frozenset(eog)
        self._cv = threading.Condition()
        self._waiting: deque[Stream] = deque()
        self._running: list[_Seq] = []  # admission order
        self._free = list(range(slots.n_slots))
        self._last_used = [0.0] * slots.n_slots
        self._closing = False
        self._cancel_on_close = True
        self._thread = threading.Thread(target=self._loop, name="metallic-scheduler", daemon=True)
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return self.slots.n_slots

    @property
    def n_ctx(self) -> int:
        return self.slots.n_ctx

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiting)

    @property
    def slots_in_use(self) -> int:
        return len(self._running)

    def submit(self, request: Request) -> Stream:
        """Queues a request; returns its Stream. Raises QueueFull when max_queue requests are
        already waiting, SchedulerClosed after close(), RequestError/ContextError for a request
        that can never run (checked here, before it waits)."""
        self._check(request)
        stream = Stream(request, self)
        with self._cv:
            if self._closing:
                raise SchedulerClosed("the server is shutting down")
            # Requests the loop has not yet moved into free slots do not count as queued.
            capacity = self.max_queue + len(self._free)
            if len(self._waiting) >= capacity:
                raise QueueFull(
                    f"all {self.n_slots} slots are busy and {len(self._waiting)} requests are "
                    "waiting; try again shortly"
                )
            stream.stats.submitted = time.perf_counter()
            self._waiting.append(stream)
            self._cv.notify_all()
        return stream

    def close(self, *, cancel: bool = True, timeout: float | None = None) -> None:
        """Stops taking requests; cancels the running and waiting ones (cancel=True) or lets
        them finish; joins the thread."""
        with self._cv:
            self._closing = True
            self._cancel_on_close = cancel
            self._cv.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cancel(self, stream: Stream) -> None:
        """A waiting request leaves the queue now; a running one at the loop's next step."""
        with self._cv:
            waiting = stream in self._waiting
            if waiting:
                self._waiting.remove(stream)
            self._cv.notify_all()
        if waiting:
            self._finish(stream, "cancelled")

    def _check(self, r: Request) -> None:
        prompt = r.prompt
        if len(prompt) == 0:
            raise RequestError("the prompt is empty (no tokens)")
        n_vocab = self.slots.n_vocab
        for t in prompt:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise RequestError(f"prompt token ids must be integers, got {t!r}")
            if not 0 <= t < n_vocab:
                raise RequestError(f"token id {int(t)} is outside the vocabulary of {n_vocab}")
        if len(prompt) > self.n_ctx:
            raise ContextError(
                f"the prompt has {len(prompt)} tokens but a slot's context holds {self.n_ctx}"
            )
        if r.max_tokens is not None and (isinstance(r.max_tokens, bool) or r.max_tokens < 0):
            raise RequestError(f"max_tokens must be >= 0, got {r.max_tokens!r}")
        if not 0 <= r.top_logprobs <= 20:
            raise RequestError(f"top_logprobs must be from 0 to 20, got {r.top_logprobs}")
        r.sampler.validate()
        StopStrings(list(r.stop))  # refuses empty or non-str stops

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._waiting or self._running or self._closing):
                        self._cv.wait()
                    if self._closing and self._cancel_on_close:
                        for stream in self._waiting:
                            stream._cancelled = True
                        for q in self._running:
                            q.stream._cancelled = True
                    if self._closing and not self._waiting and not self._running:
                        return
                    self._admit()
                for q in [q for q in self._running if q.stream.cancelled]:
                    self._end(q, "cancelled")
                work, seqs = self._form_step()
                if work:
                    self._run_step(work, seqs)
        except BaseException as e:  # a bug: fail every request rather than leave it hanging
            log.exception("the scheduler loop failed")
            err = e if isinstance(e, MetallicError) else InternalError(f"scheduler: {e!r}")
            with self._cv:
                self._closing = True
                pending = list(self._waiting)
                self._waiting.clear()
            for stream in pending:
                self._finish(stream, "error", err)
            for q in list(self._running):
                self._end(q, "error", err)

    def _admit(self) -> None:
        """Under the lock: waiting requests take free slots, in arrival order. A request takes
        the free slot whose cache shares the longest prefix with its prompt (ties: the least
        recently used), truncated to that prefix."""
        while self._waiting and (self._free or self._waiting[0].cancelled):
            stream = self._waiting.popleft()
            r = stream.request
            if stream.cancelled:  # by close()
                self._finish(stream, "cancelled")
                continue
            if r.max_tokens == 0:
                self._finish(stream, "length")
                continue
            prompt = [int(t) for t in r.prompt]
            # At most all but the last two prompt tokens (see the module's docstring).
            limit = max(len(prompt) - 2, 0)
            best, keep = self._free[0], -1
            for slot in self._free:
                n = _common_prefix(self.slots.tokens(slot), prompt, limit)
                if n > keep or (n == keep and self._last_used[slot] < self._last_used[best]):
                    best, keep = slot, n
            try:
                self.slots.truncate(best, keep)
                stop_ids = self._default_stop_ids if r.stop_ids is None else frozenset(r.stop_ids)
                seq = _Seq(
                    stream=stream,
                    slot=best,
                    prompt=prompt,
                    pos=keep,
                    sampler=Sampler(r.sampler),
                    text=TextStream(self.tokenizer, StopStrings(list(r.stop))),
                    stop_ids=stop_ids,
                    history=list(prompt),
                )
            except Exception as e:  # noqa: BLE001 - reported to the request
                self._finish(stream, "error", e)
                continue
            self._free.remove(best)
            self._running.append(seq)
            stream.stats.cached_tokens = keep
            stream.stats.admitted = time.perf_counter()
            stream._record = instrument.served(self.model, self.n_ctx, stream.stats)

    def _form_step(self) -> tuple[list[tuple[int, list[int]]], list[_Seq]]:
        """Every decoding sequence's token, then prompt chunks within the prefill budget."""
        work: list[tuple[int, list[int]]] = []
        seqs: list[_Seq] = []
        for q in self._running:
            if not q.prefilling:
                work.append((q.slot, [q.next_input]))
                seqs.append(q)
        room = self.max_batch - len(work)
        budget = min(room, self.prefill_chunk) if work else room
        for q in self._running:
            if not q.prefilling:
                continue
            if budget <= 0:
                break
            left = len(q.prompt) - q.pos
            n = min(left, budget)
            if n < left:
                if left - n == 1:
                    n -= 1  # leave two tokens for the next chunk, not one
                if n < 2:
                    if work:
                        break  # wait for a step with room for a chunk of two
                    n = min(left, budget)  # nothing else can run: any chunk is progress
            work.append((q.slot, q.prompt[q.pos : q.pos + n]))
            seqs.append(q)
            budget -= n
        return work, seqs

    def _run_step(self, work: list[tuple[int, list[int]]], seqs: list[_Seq]) -> None:
        t0 = time.perf_counter()
        try:
            logits = self.slots.step(work)
        except Exception as e:  # noqa: BLE001 - a failed step fails its sequences
            for q in seqs:
                self._end(q, "error", e)
            return
        if self.observer is not None:
            n_tokens = sum(len(ids) for _, ids in work)
            with _logged("observer.on_step"):
                self.observer.on_step(n_tokens, len(work), time.perf_counter() - t0)
        for q, (_, ids), row in zip(seqs, work, logits, strict=True):
            if q.prefilling:
                q.pos += len(ids)
                if q.prefilling:
                    continue  # more prompt to read: these logits are not sampled
            try:
                self._sample(q, row)
            except Exception as e:  # noqa: BLE001 - a bad constraint, NaN logits, ...
                self._end(q, "error", e)

    def _sample(self, q: _Seq, raw: np.ndarray) -> None:
        r = q.stream.request
        stats = q.stream.stats
        x = raw
        if r.constraint is not None:
            mask = np.asarray(r.constraint.allowed(), dtype=bool)
            x = np.array(raw, dtype=np.float32, copy=True)
            n = min(mask.size, x.size)
            x[n:] = -np.inf  # tokens past the mask's end are not allowed
            x[:n][~mask[:n]] = -np.inf
        tok = q.sampler.sample(x, q.history)
        now = time.perf_counter()
        q.generated += 1
        stats.completion_tokens = q.generated
        stats.token_times.append(now)
        if q.generated == 1:
            stats.first_token = now
        if tok in q.stop_ids:
            self._end(q, "stop", tail=q.text.drain())
            return
        lp = _logprob(raw, tok, r.top_logprobs) if r.logprobs else None
        q.history.append(tok)
        text = q.text.push(tok)
        if r.constraint is not None:
            r.constraint.advance(tok)
        reason = None
        if q.text.hit or (r.constraint is not None and r.constraint.done()):
            reason = "stop"
        elif r.max_tokens is not None and q.generated >= r.max_tokens:
            reason = "length"
        elif len(q.prompt) + q.generated - 1 >= self.n_ctx:
            reason = "length"  # the cache is full: no room to run this token
        if reason is None:
            self._emit(q, TokenEvent(tok, text, lp))
            q.next_input = tok
            return
        self._emit(q, TokenEvent(tok, text + q.text.drain(), lp))
        self._end(q, reason)

    def _emit(self, q: _Seq, event: TokenEvent) -> None:
        q.stream._put(event)
        if q.stream._record is not None:
            q.stream._record.token(event.id, event.text, len(q.prompt) + q.generated - 1)

    def _end(
        self, q: _Seq, reason: str, error: BaseException | None = None, tail: str = ""
    ) -> None:
        """Retires a running sequence: its slot is free again, its cache kept for reuse."""
        if tail:
            q.stream._put(TokenEvent(-1, tail))
        with self._cv:
            if q in self._running:
                self._running.remove(q)
                self._free.append(q.slot)
            self._last_used[q.slot] = time.perf_counter()
        self._finish(q.stream, reason, error)

    def _finish(self, stream: Stream, reason: str, error: BaseException | None = None) -> None:
        stream.stats.finished = time.perf_counter()
        if stream._record is not None:
            s = stream.stats
            stream._record.end(reason, error, s.prompt_tokens + max(s.completion_tokens - 1, 0))
        finish = Finish(reason, stream.stats, error)
        if self.observer is not None:
            with _logged("observer.on_finish"):
                self.observer.on_finish(finish)
        stream._put(finish)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Runs an observer's callback; its failure is logged, never the requests' problem."""
    try:
        yield
    except Exception:  # noqa: BLE001
        log.exception("%s failed", what)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def _logprob(raw: np.ndarray, tok: int, top: int) -> TokenLogprob:
    x = np.asarray(raw, dtype=np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    alts: tuple[tuple[int, float], ...] = ()
    if top > 0:
        k = min(top, x.size)
        idx = np.argpartition(-x, k - 1)[:k]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        alts = tuple((int(i), float(x[i] - lse)) for i in idx)
    return TokenLogprob(float(x[tok] - lse), alts)
