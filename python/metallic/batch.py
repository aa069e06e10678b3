"""Several sequences served by one model: the contract a scheduler (the server's) works against.

A *slot* is a sequence with a KV cache of its own. `step` appends new tokens to several slots
and returns, for each, the logits after its last new token. A decoding sequence gives one token,
a sequence still reading its prompt gives a chunk; the engine runs them all as one forward pass,
so the weights are read once per step for every sequence.

Two implementations share the contract: the engine's own slots (`Model.slots()`, one model
loaded with several sequences) and SequentialSlots, independent models run one after another,
which is the reference the batched one is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import ContextError, RequestError

if TYPE_CHECKING:
    from .model import Model


class Slots(Protocol):
    """Sequences with caches of their own in one model."""

    @property
    def n_slots(self) -> int: ...

    @property
    def n_ctx(self) -> int:
        """Positions each slot can hold."""
        ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def max_batch(self) -> int:
        """Most tokens one step takes, over all its slots."""
        ...

    def tokens(self, slot: int) -> list[int]:
        """The token ids the slot's cache holds, in order."""
        ...

    def truncate(self, slot: int, n_keep: int) -> None:
        """Keeps the slot's first n_keep tokens and forgets the rest."""
        ...

    def step(self, work: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        """Appends each (slot, token ids) to its slot, all in one forward pass; returns a new
        float32 [n_vocab] array per entry: the logits after that entry's last token.

        A slot appears at most once per step; every entry has at least one token; the tokens
        of all entries together are at most max_batch; each slot's tokens fit its context
        (ContextError otherwise, before anything runs)."""
        ...


def check_work(slots: Slots, work: Sequence[tuple[int, Sequence[int]]]) -> None:
    """The preconditions of Slots.step, checked before anything runs."""
    if not work:
        raise RequestError("a step needs at least one (slot, tokens) entry")
    seen: set[int] = set()
    total = 0
    for slot, ids in work:
        if not 0 <= slot < slots.n_slots:
            raise RequestError(f"slot {slot} is outside 0..{slots.n_slots - 1}")
        if slot in seen:
            raise RequestError(f"slot {slot} appears twice in one step")
        seen.add(slot)
        if len(ids) == 0:
            raise RequestError(f"slot {slot} has no tokens in this step")
        for t in ids:
            if not 0 <= int(t) < slots.n_vocab:
                raise RequestError(
                    f"token id {int(t)} is outside the vocabulary of {slots.n_vocab}"
                )
        if len(slots.tokens(slot)) + len(ids) > slots.n_ctx:
            raise ContextError(
                f"slot {slot}: {len(ids)} tokens at position {len(slots.tokens(slot))} do not fit "
                f"its context of {slots.n_ctx}"
            )
        total += len(ids)
    if total > slots.max_batch:
        raise RequestError(f"a step of {total} tokens is more than max_batch {slots.max_batch}")


class SequentialSlots:
    """Slots as independent models (one per slot), run one after another: the same results as a
    batched step, at the cost of reading the weights once per sequence."""

    def __init__(self, models: Sequence[Model]) -> None:
        if not models:
            raise RequestError("SequentialSlots needs at least one model")
        self._models = list(models)

    @property
    def n_slots(self) -> int:
        return len(self._models)

    @property
    def n_ctx(self) -> int:
        return min(m.n_ctx for m in self._models)

    @property
    def n_vocab(self) -> int:
        return self._models[0].n_vocab

    @property
    def max_batch(self) -> int:
        return min(m._engine.max_batch for m in self._models)

    def tokens(self, slot: int) -> list[int]:
        return self._models[slot].cached_tokens

    def truncate(self, slot: int, n_keep: int) -> None:
        self._models[slot].truncate(n_keep)

    def step(self, work: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        check_work(self, work)
        return [
            np.array(self._models[slot].prefill(list(ids)), dtype=np.float32) for slot, ids in work
        ]


class EngineSlots:
    """The engine's own sequences (load(n_seq=N)): a step is one forward pass for all of them.

    Calls take the model's lock like its other calls, so a generate() on sequence 0 and the
    steps of a scheduler take turns rather than interleave inside one call."""

    def __init__(self, model: Model) -> None:
        self._model = model

    @property
    def n_slots(self) -> int:
        return self._model.n_seq

    @property
    def n_ctx(self) -> int:
        return self._model.n_ctx

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def max_batch(self) -> int:
        return self._model._engine.max_batch

    def tokens(self, slot: int) -> list[int]:
        self._check_slot(slot)
        with self._model.hold():
            return list(self._model._cached_seqs[slot])

    def truncate(self, slot: int, n_keep: int) -> None:
        self._check_slot(slot)
        with self._model.hold():
            cached = self._model._cached_seqs[slot]
            if not 0 <= n_keep <= len(cached):
                raise RequestError(
                    f"cannot keep {n_keep} of the {len(cached)} tokens of slot {slot}"
                )
            self._model._engine.truncate(n_keep, slot)
            del cached[n_keep:]

    def step(self, work: Sequence[tuple[int, Sequence[int]]]) -> list[np.ndarray]:
        model = self._model
        with model.hold():
            check_work(self, work)
            ids = [
                np.ascontiguousarray(np.asarray(t, dtype=np.int64), dtype=np.int32) for _, t in work
            ]
            seqs = [int(slot) for slot, _ in work]
            for slot, arr in zip(seqs, ids, strict=True):
                model._cached_seqs[slot].extend(int(t) for t in arr)
            try:
                logits = model._engine.step(seqs, ids)
            finally:
                # As Model._sync_cached: the record never claims tokens the engine lacks.
                for slot in seqs:
                    del model._cached_seqs[slot][model._engine.past(slot) :]
            return list(logits)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.n_slots:
            raise RequestError(f"slot {slot} is outside 0..{self.n_slots - 1}")
