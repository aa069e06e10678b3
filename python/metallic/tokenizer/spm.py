"""SentencePiece-style BPE by score (``tokenizer.ggml.model`` "llama").

llama.cpp's algorithm: start from single characters, repeatedly merge the adjacent pair whose
concatenation is the highest-scoring token (leftmost on ties), then emit each symbol's id, or
its bytes as ``<0xNN>`` byte-fallback tokens when the symbol is not a token.

That runs over the whole fragment, with no pre-tokenizer. To make it fast without changing the
result, the text is cut before every U+2581 (the space marker) whose previous character never
precedes U+2581 inside any token: no merge can ever join the two sides of such a cut, so each
part evolves exactly as it would in the whole, and parts (words, mostly) can be cached.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from heapq import heapify, heappop, heappush

import numpy as np

from .errors import TokenizerError
from .vocab import Vocab

SPACE = "\u2581"
_CACHE_LIMIT = 1 << 18
_SHORT = 256  # longer parts merge with a heap
_NONE = float("-inf")  # score of a pair that is not a token


class SPM:
    def __init__(self, vocab: Vocab) -> None:
        t2i = vocab.token_to_id
        self._t2i = t2i
        n = len(vocab.tokens)
        self._scores: list[float] = vocab.scores.tolist() if vocab.scores is not None else [0.0] * n
        self._unk = vocab.ids.get("unk")
        self._byte_ids: list[int | None] = []
        for b in range(256):
            i = t2i.get(f"<0x{b:02X}>")
            if i is None:  # llama.cpp's second choice: the byte itself as a token
                i = t2i.get(chr(b) if b < 0x80 else chr(0xDC00 + b))
            self._byte_ids.append(i)
        # text -> score, for the short-part path; its "no token" marker is -inf, so a
        # vocabulary with -inf (or NaN) scores takes the heap path instead
        finite = vocab.scores is None or bool(np.isfinite(vocab.scores).all())
        self._score_of = dict(zip(vocab.tokens, self._scores, strict=True)) if finite else None
        # a duplicated text scores as its last id, like token_to_id
        self._cut = _cutter(vocab.tokens)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, already space-escaped (spaces replaced by U+2581)."""
        cache = self._cache
        out: list[int] = []
        for part in self._cut(text):
            ids = cache.get(part)
            if ids is None:
                ids = self._part(part)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[part] = ids
            out += ids
        return out

    def _part(self, text: str) -> list[int]:
        t2i = self._t2i
        out: list[int] = []
        for sym in self._merge(text):
            i = t2i.get(sym)
            if i is not None:
                out.append(i)
                continue
            for b in sym.encode("utf-8"):
                bi = self._byte_ids[b]
                if bi is None:
                    bi = self._unk
                    if bi is None:
                        raise TokenizerError(
                            f"no token for byte 0x{b:02X} (no <0x{b:02X}> byte token and no "
                            "unknown token) in this SentencePiece vocabulary"
                        )
                out.append(bi)
        return out

    def _merge(self, text: str) -> list[str]:
        n = len(text)
        if n < 2:
            return [text] if n else []
        if n > _SHORT or self._score_of is None:
            return self._merge_long(text)
        # Short parts: keep the score of every adjacent pair in a list and take the leftmost
        # maximum each time; cheaper than a heap at this size, same order of merges.
        get = self._score_of.get
        syms = list(text)
        sc = [get(syms[i] + syms[i + 1], _NONE) for i in range(n - 1)]
        while sc:
            best = max(sc)
            if best == _NONE:
                break
            k = sc.index(best)
            merged = syms[k] + syms[k + 1]
            syms[k] = merged
            del syms[k + 1]
            del sc[k]
            if k:
                sc[k - 1] = get(syms[k - 1] + merged, _NONE)
            if k < len(sc):
                sc[k] = get(merged + syms[k + 1], _NONE)
        return syms

    def _merge_long(self, text: str) -> list[str]:
        """llama.cpp's priority queue, for long parts where rescanning pairs would cost
        O(n^2), and for vocabularies with -inf or NaN scores."""
        n = len(text)
        t2i = self._t2i
        scores = self._scores
        syms = list(text)
        heap = []
        for i in range(n - 1):
            t = t2i.get(syms[i] + syms[i + 1])
            if t is not None:
                heap.append((-scores[t], i, i + 1, 2))
        heapify(heap)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        while heap:
            _, left, right, size = heappop(heap)
            a = syms[left]
            b = syms[right]
            if not a or not b or len(a) + len(b) != size:
                continue  # stale: one side changed since the pair was queued
            merged = a + b
            syms[left] = merged
            syms[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                t = t2i.get(syms[before] + merged)
                if t is not None:
                    heappush(heap, (-scores[t], before, left, len(syms[before]) + len(merged)))
            if after >= 0:
                t = t2i.get(merged + syms[after])
                if t is not None:
                    heappush(heap, (-scores[t], left, after, len(merged) + len(syms[after])))
        return [s for s in syms if s]


def _cutter(tokens: list[str]) -> Callable[[str], list[str]]:
    """A function cutting escaped text into independently mergeable parts (module doc)."""
    glued = {
        t[i - 1]
        for t in tokens
        if SPACE in t[1:]
        for i in range(1, len(t))
        if t[i] == SPACE and t[i - 1] != SPACE
    }
    cls = "".join(re.escape(c) for c in sorted(glued))
    pattern = re.compile(f"(?<=[^{SPACE}{cls}])(?={SPACE})")
    return pattern.split
