"""The continuous-batching scheduler (metallic/scheduler.py) without HTTP.

The key property: a request's tokens do not depend on what else runs. Greedy outputs of
requests run together (more requests than slots, joining and leaving at different steps, long
prompts read in chunks beside running streams, prompts reusing a slot's cached prefix) equal
Model.generate's for each prompt alone; so do seeded sampled outputs. Token-level behaviour is
tested on the suite's small random-weight model (no tokenizer; hundreds of times cheaper per
token than a real one), text (stop strings, end-of-generation, streamed text) on SmolLM2.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from metallic import ContextError, RequestError
from metallic.sampling import SamplerSettings
from metallic.scheduler import (
    Finish,
    QueueFull,
    Request,
    Scheduler,
    SchedulerClosed,
    TokenEvent,
    make_slots,
)
from oracle.tiny_models import VARIANTS, tiny_gguf
from server_helpers import GatedSlots, chat_ids, greedy, load_reference, load_slots, wait_until
from small_gguf import write_small_gguf

GREEDY = SamplerSettings(temperature=0)
N_CTX = 256
MAX_BATCH = 24  # small, so that long prompts are read in several steps
N_SLOTS = 3


class Recorder:
    """The scheduler's observer: every step's (tokens, sequences), every finish."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.finished: list[Finish] = []

    def on_step(self, n_tokens: int, n_seqs: int, seconds: float) -> None:
        self.steps.append((n_tokens, n_seqs))

    def on_finish(self, finish: Finish) -> None:
        self.finished.append(finish)


def prompt(k: int, n: int = 12) -> list[int]:
    """A prompt of n token ids of the small model's vocabulary (300), different per k."""
    rng = np.random.default_rng(k)
    return [int(t) for t in rng.integers(1, 300, n)]


@pytest.fixture(scope="module")
def small_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_gguf(tmp_path_factory.mktemp("sched") / "small.gguf", n_ctx=N_CTX)


@pytest.fixture(scope="module")
def ref(small_path: Path):
    import metallic

    return metallic.load(small_path, backend="cpu", n_ctx=N_CTX, threads=1)


@pytest.fixture(scope="module")
def slots(small_path: Path):
    return make_slots(small_path, N_SLOTS, N_CTX, "cpu", threads=1, max_batch=MAX_BATCH)[1]


@pytest.fixture
def make(slots) -> Iterator:
    """Schedulers (no tokenizer) over the module's slots, emptied first (prefix reuse starts
    cold); closed at the end of the test."""
    made: list[Scheduler] = []

    def make_scheduler(target=None, tokenizer=None, **kw):
        target = slots if target is None else target
        for i in range(target.n_slots):
            target.truncate(i, 0)
        kw.setdefault("observer", Recorder())
        s = Scheduler(target, tokenizer, **kw)
        made.append(s)
        return s

    yield make_scheduler
    for s in made:
        s.close()


def ref_ids(ref, ids: list[int], n: int, settings: SamplerSettings = GREEDY) -> list[int]:
    return [t.id for t in ref.generate(ids, n, settings, stop_ids=[]) if t.id >= 0]


def run(stream) -> tuple[list[int], str, Finish]:
    events: list[TokenEvent] = list(stream)
    return [e.id for e in events if e.id >= 0], "".join(e.text for e in events), stream.finish


# -- outputs independent of batching -------------------------------------------------------------


def test_concurrent_greedy_equals_generate(make, ref) -> None:
    # Eight requests of different lengths on three slots: five wait, then join as others leave.
    sched = make()
    reqs = [(prompt(k, 5 + 3 * k), 10 + 4 * k) for k in range(8)]
    streams = [sched.submit(Request(p, n, GREEDY, stop_ids=[])) for p, n in reqs]
    for (p, n), stream in zip(reqs, streams, strict=True):
        ids, _, finish = run(stream)
        assert ids == ref_ids(ref, p, n)
        assert finish.reason == "length" and finish.stats.completion_tokens == n
    steps = sched.observer.steps
    assert max(n for _, n in steps) == N_SLOTS  # the batch was full at times
    assert all(t <= MAX_BATCH for t, _ in steps)


def test_threads_submitting_at_once_get_their_own_outputs(make, ref) -> None:
    sched = make()
    n = 6
    got: dict[int, list[int]] = {}
    start = threading.Barrier(n)

    def client(i: int) -> None:
        start.wait()
        got[i] = run(sched.submit(Request(prompt(i), 12, GREEDY, stop_ids=[])))[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [got[i] for i in range(n)] == [ref_ids(ref, prompt(i), 12) for i in range(n)]


def test_async_consumers_stream_from_the_scheduler_thread(make, ref) -> None:
    import asyncio

    sched = make()

    async def one(k: int) -> list[int]:
        stream = sched.submit(Request(prompt(k), 10, GREEDY, stop_ids=[]))
        return [e.id async for e in stream if e.id >= 0]

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(one(k) for k in range(5))))

    assert asyncio.run(main()) == [ref_ids(ref, prompt(k), 10) for k in range(5)]


def test_seeded_sampling_equals_generate(make, ref) -> None:
    sched = make()
    settings = [
        SamplerSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=100 + k)
        for k in range(4)
    ]
    streams = [sched.submit(Request(prompt(k), 16, s, stop_ids=[])) for k, s in enumerate(settings)]
    got = [run(st)[0] for st in streams]
    assert got == [ref_ids(ref, prompt(k), 16, s) for k, s in enumerate(settings)]
    assert len({tuple(g) for g in got}) == 4


def test_long_prompt_is_read_in_chunks_beside_a_running_stream(make, ref) -> None:
    chunk = 6
    sched = make(prefill_chunk=chunk)
    short, long = prompt(1), prompt(2, 100)
    a = sched.submit(Request(short, 60, GREEDY, stop_ids=[]))
    events_a = iter(a)
    first = next(events_a)  # A is decoding now
    b = sched.submit(Request(long, 4, GREEDY, stop_ids=[]))
    assert run(b)[0] == ref_ids(ref, long, 4)
    ids_a = [first.id, *(e.id for e in events_a)]
    assert ids_a == ref_ids(ref, short, 60)
    # While A decoded, B's prompt came a chunk per step beside A's one token: A was never
    # stalled behind the whole prompt, and no chunk was a lone token.
    shared = [t - 1 for t, n in sched.observer.steps if n == 2 and t > 2]
    assert sum(shared) == len(long) and max(shared) <= chunk and min(shared) >= 2


def test_prompt_longer_than_a_step_runs_in_chunks_of_at_most_max_batch(make, ref) -> None:
    sched = make()
    for n in (3 * MAX_BATCH + 1, 2 * MAX_BATCH, 50):
        p = prompt(n, n)
        sched.observer.steps.clear()
        assert run(sched.submit(Request(p, 3, GREEDY, stop_ids=[])))[0] == ref_ids(ref, p, 3)
        chunks = [t for t, _ in sched.observer.steps[:-2]]
        assert sum(chunks) == n
        assert max(chunks) <= MAX_BATCH and min(chunks) >= 2  # never a lone token


# -- prefix reuse ----------------------------------------------------------------------------


def test_prefix_reuse_takes_the_slot_with_the_longest_prefix(make, ref, slots) -> None:
    sched = make()
    system = prompt(7, 60)
    first, second = system + prompt(8, 6), system + prompt(9, 6)
    other = prompt(10, 20)
    assert run(sched.submit(Request(other, 4, GREEDY)))[2].stats.cached_tokens == 0
    f1 = run(sched.submit(Request(first, 5, GREEDY, stop_ids=[])))[2]
    ids, _, f2 = run(sched.submit(Request(second, 5, GREEDY, stop_ids=[])))
    assert f1.stats.cached_tokens == 0
    assert f2.stats.cached_tokens == len(system)
    assert ids == ref_ids(ref, second, 5)  # the same as without reuse
    # A continuation of the conversation (prompt + reply + more) reuses all of it.
    third = second + ids[:-1] + prompt(11, 5)
    ids3, _, f3 = run(sched.submit(Request(third, 5, GREEDY, stop_ids=[])))
    assert f3.stats.cached_tokens == len(second) + len(ids) - 1
    assert ids3 == ref_ids(ref, third, 5)
    # The same prompt again: everything but its last two tokens is reused, in one slot, and
    # the answer is the same (a lone token would run on the matrix-vector path and round
    # differently).
    ids4, _, f4 = run(sched.submit(Request(third, 5, GREEDY, stop_ids=[])))
    assert f4.stats.cached_tokens == len(third) - 2
    assert ids4 == ids3
    assert sum(slots.tokens(i)[: len(third)] == third for i in range(N_SLOTS)) == 1


def test_ties_go_to_the_least_recently_used_slot(make, slots) -> None:
    sched = make()
    used = []
    for k in range(5):
        p = [1 + k, 200 + k, 100 + k]  # no common prefix with any other
        run(sched.submit(Request(p, 2, GREEDY)))
        (slot,) = [i for i in range(N_SLOTS) if slots.tokens(i)[:3] == p]
        used.append(slot)
    assert len(set(used[:3])) == 3  # three slots, each used once
    assert used[3:] == used[:2]  # then the least recently used ones, in turn


# -- how requests end ----------------------------------------------------------------------------


def test_max_tokens_a_full_context_and_bad_requests(make, ref) -> None:
    sched = make()
    ids, _, finish = run(sched.submit(Request(prompt(1), 5, GREEDY, stop_ids=[])))
    assert (len(ids), finish.reason, finish.stats.completion_tokens) == (5, "length", 5)
    assert run(sched.submit(Request(prompt(1), 0, GREEDY)))[2].reason == "length"
    # A prompt that leaves room for two more tokens gets three: the last one sampled from the
    # full cache's logits, with no room to run it.
    ids, _, finish = run(sched.submit(Request(prompt(3, N_CTX - 2), None, GREEDY, stop_ids=[])))
    assert (len(ids), finish.reason) == (3, "length")
    # A stop id ends the request without being part of its output.
    want = ref_ids(ref, prompt(4), 8)
    ids, _, finish = run(sched.submit(Request(prompt(4), 8, GREEDY, stop_ids=[want[3]])))
    assert (ids, finish.reason) == (want[: want.index(want[3])], "stop")
    assert finish.stats.completion_tokens == len(ids) + 1
    with pytest.raises(ContextError):
        sched.submit(Request([5] * (N_CTX + 1), 4, GREEDY))
    with pytest.raises(RequestError, match="empty"):
        sched.submit(Request([], 4, GREEDY))
    with pytest.raises(RequestError, match="vocabulary"):
        sched.submit(Request([300], 4, GREEDY))
    with pytest.raises(RequestError, match="top_p"):
        sched.submit(Request([5], 4, _bad_top_p()))


def _bad_top_p() -> SamplerSettings:
    s = SamplerSettings()
    object.__setattr__(s, "top_p", 2.0)  # past __post_init__'s check, as a caller could
    return s


def test_logprobs_are_the_log_softmax_of_the_raw_logits(make, ref) -> None:
    sched = make()
    p = prompt(5)
    events = list(sched.submit(Request(p, 3, GREEDY, logprobs=True, top_logprobs=5)))
    ref.reset()
    logits = np.asarray(ref.prefill(p), dtype=np.float64)
    logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    first = events[0]
    assert first.logprob is not None
    assert first.logprob.logprob == pytest.approx(logp[first.id], abs=1e-6)
    top = first.logprob.top
    assert [i for i, _ in top] == list(np.argsort(-logp, kind="stable")[:5])
    assert [v for _, v in top] == pytest.approx(sorted(logp, reverse=True)[:5], abs=1e-6)
    assert top[0][0] == first.id  # greedy picked the most likely token
    assert all(e.logprob is not None and len(e.logprob.top) == 5 for e in events)


class OnlyTokens:
    """A fake token constraint: only the given ids, done after three of them."""

    def __init__(self, allowed: list[int], n_vocab: int = 300) -> None:
        self.ids = allowed
        self.mask = np.zeros(n_vocab, dtype=bool)
        self.mask[allowed] = True
        self.seen: list[int] = []

    def allowed(self) -> np.ndarray:
        return self.mask

    def advance(self, token_id: int) -> None:
        self.seen.append(token_id)

    def done(self) -> bool:
        return len(self.seen) >= 3


def test_a_token_constraint_masks_sampling_and_ends_the_request(make, ref) -> None:
    sched = make()
    p = prompt(6)
    free = ref_ids(ref, p, 3)
    allowed = [t for t in range(10, 40) if t not in free]
    c = OnlyTokens(allowed)
    ids, _, finish = run(sched.submit(Request(p, 20, GREEDY, constraint=c)))
    assert finish.reason == "stop" and len(ids) == 3 and c.seen == ids
    assert set(ids) <= set(allowed)
    # A shorter mask disallows the ids past its end.
    c = OnlyTokens([], 10)
    c.mask[:] = True
    ids, _, _ = run(sched.submit(Request(p, 20, GREEDY, constraint=c)))
    assert max(ids) < 10
    # Nothing allowed: the request fails (RequestError naming the masking) and frees its slot.
    with pytest.raises(RequestError, match="masked"):
        run(sched.submit(Request(p, 5, GREEDY, constraint=OnlyTokens([]))))
    assert sched.slots_in_use == 0


def test_cancel_frees_the_slot_at_the_next_step(make, slots) -> None:
    gated = GatedSlots(slots)
    sched = make(gated)
    stream = sched.submit(Request(prompt(1), N_CTX - 20, GREEDY, stop_ids=[]))
    it = iter(stream)
    next(it)
    gated.gate.clear()  # hold the scheduler at its next step
    wait_until(lambda: gated.entered > gated.steps, what="the scheduler to reach the gate")
    assert sched.slots_in_use == 1
    stream.cancel()
    entered = gated.entered
    gated.gate.set()
    list(it)
    assert stream.finish.reason == "cancelled"
    assert sched.slots_in_use == 0
    assert gated.entered == entered  # freed after the step it was in, not at max_tokens
    assert stream.finish.stats.completion_tokens == entered
    assert run(sched.submit(Request(prompt(1), 3, GREEDY)))[2].reason == "length"


def test_a_full_queue_refuses_and_close_cancels(make, slots) -> None:
    gated = GatedSlots(slots)
    gated.gate.clear()
    sched = make(gated, max_queue=1)
    try:
        running = [sched.submit(Request(prompt(k), 50, GREEDY)) for k in range(N_SLOTS)]
        # The scheduler admits what is queued before each step: a request submitted after it
        # entered its first step (on a loaded machine) waits for the second one.
        wait_until(lambda: gated.entered >= 1, what="the first step")
        if sched.slots_in_use < N_SLOTS:
            gated.let_one_step()
            wait_until(lambda: gated.entered >= 2, what="the second step")
        assert sched.slots_in_use == N_SLOTS
        waiting = sched.submit(Request(prompt(9), 5, GREEDY))
        assert sched.queue_depth == 1
        with pytest.raises(QueueFull) as e:
            sched.submit(Request(prompt(9), 5, GREEDY))
        assert e.value.retry_after > 0
        # A waiting request that is cancelled (its client went away) leaves the queue at once.
        waiting.cancel()
        wait_until(lambda: sched.queue_depth == 0, what="the queue to empty")
        waiting = sched.submit(Request(prompt(9), 5, GREEDY))
    finally:
        gated.gate.set()
    # Shutdown: nothing new; the running and the waiting requests are cancelled; the thread
    # ends.
    sched.close()
    assert not sched._thread.is_alive()
    for s in [*running, waiting]:
        list(s)
        assert s.finish.reason == "cancelled"
    with pytest.raises(SchedulerClosed):
        sched.submit(Request(prompt(9), 5, GREEDY))


def test_close_can_let_running_requests_finish(make, ref) -> None:
    sched = make()
    streams = [sched.submit(Request(prompt(k), 20, GREEDY, stop_ids=[])) for k in range(4)]
    sched.close(cancel=False)
    assert [run(s)[0] for s in streams] == [ref_ids(ref, prompt(k), 20) for k in range(4)]


# -- text, on a real model -----------------------------------------------------------------------


def test_text_stop_strings_and_end_of_generation_on_a_real_model(smollm2_path: Path) -> None:
    ref = load_reference(smollm2_path)
    model, slots = load_slots(smollm2_path, 2)
    with Scheduler(slots, model.tokenizer) as sched:
        count = chat_ids(ref, "Count from one to five.")
        hello = chat_ids(ref, "Hi!")
        want_count = greedy(ref, count, 16)
        want_hello = greedy(ref, hello, 16)  # ends with its end-of-turn token
        a = sched.submit(Request(count, 16, GREEDY, stop=["3"]))
        b = sched.submit(Request(hello, 16, GREEDY))
        text_a, finish_a = run(a)[1:]
        ids_b, text_b, finish_b = run(b)
    cut = want_count[1].index("3")
    assert (text_a, finish_a.reason) == (want_count[1][:cut], "stop")
    assert (ids_b, text_b) == want_hello
    assert finish_b.reason == "stop" and finish_b.stats.completion_tokens == len(ids_b) + 1


# -- every architecture, both backends -------------------------------------------------------------

_ARCHS = sorted({arch for arch, _ in VARIANTS})


@pytest.mark.parametrize("backend", ["cpu", "metal-sim"])
@pytest.mark.parametrize("arch", _ARCHS)
def test_batching_is_exact_for_every_architecture(arch: str, backend: str) -> None:
    """N concurrent greedy requests on the engine's batched slots give each exactly the tokens
    it gets alone (Model.generate on a model of its own), on both backends."""
    import metallic

    variant = next(v for a, v in VARIANTS if a == arch)
    path, _ = tiny_gguf(arch, "F16", variant)
    model, slots = make_slots(path, 3, 64, backend, threads=1, max_batch=16)
    alone = metallic.load(path, backend=backend, n_ctx=64, threads=1, max_batch=16)
    vocab = model.n_vocab
    rng = np.random.default_rng(len(arch))
    reqs = [([int(t) for t in rng.integers(0, vocab, 3 + 5 * k)], 6 + k) for k in range(5)]
    with Scheduler(slots) as sched:
        streams = [sched.submit(Request(p, n, GREEDY, stop_ids=[])) for p, n in reqs]
        got = [run(s)[0] for s in streams]
    for (p, n), ids in zip(reqs, got, strict=True):
        alone.reset()
        assert ids == ref_ids(alone, p, n)
