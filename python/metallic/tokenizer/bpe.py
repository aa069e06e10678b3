"""Byte-pair encoding (``tokenizer.ggml.model`` "gpt2" and "gemma4").

Text is cut into words by the pre-tokenizer, each word is mapped to the GPT-2 byte alphabet
(one printable character per byte) unless the family works on raw UTF-8, and adjacent symbols
are merged by rank. The merge order is llama.cpp's: the lowest-ranked pair first, the leftmost
one on ties, one pair at a time (merging one occurrence can enable a lower-ranked pair before
the next occurrence of the same pair is merged). Words repeat a lot in real text, so each word's
ids are cached.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush

from .pretokenizers import split_words
from .vocab import Vocab

# Byte -> printable character of GPT-2's byte-level alphabet: printable Latin-1 bytes stand for
# themselves, the others take code points from U+0100 upwards in byte order.
_PRINTABLE = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
BYTE_TO_CHAR: list[str] = [""] * 256
_next = 0x100
for _b in range(256):
    if _b in _PRINTABLE:
        BYTE_TO_CHAR[_b] = chr(_b)
    else:
        BYTE_TO_CHAR[_b] = chr(_next)
        _next += 1
del _b, _next

# str.translate tables: Latin-1-decoded bytes -> alphabet, and back
ENCODE_TABLE = {b: BYTE_TO_CHAR[b] for b in range(256)}
DECODE_TABLE = {ord(BYTE_TO_CHAR[b]): b for b in range(256)}

_CACHE_LIMIT = 1 << 18  # words; the cache is emptied when full
_SHORT = 256  # longer words merge with a heap
_NO_RANK = 1 << 62


class BPE:
    def __init__(self, vocab: Vocab) -> None:
        spec = vocab.spec
        assert spec is not None
        self._steps = spec.steps
        # the common single-pattern families skip split_words' generic loop
        self._findall = (
            spec.steps[0].pattern.findall
            if (len(spec.steps) == 1 and spec.steps[0].kind == "match")
            else None
        )
        self._ranks = vocab.ranks
        self._t2i = vocab.token_to_id
        self._byte_encode = spec.byte_encode
        self.escape_whitespace = spec.escape_whitespace
        self._ignore_merges = spec.ignore_merges
        self._newline_words = spec.newline_words
        t2i = vocab.token_to_id
        if spec.byte_encode:
            # llama.cpp looks the raw byte up as a one-byte string; only ASCII can match
            self._byte_ids = [t2i.get(chr(b) if b < 0x80 else chr(0xDC00 + b)) for b in range(256)]
        else:
            self._byte_ids = [t2i.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (one fragment between special tokens)."""
        if self.escape_whitespace:
            text = text.replace(" ", "\u2581")
        words = self._findall(text) if self._findall else split_words(self._steps, text)
        cache = self._cache
        out: list[int] = []
        for w in words:
            ids = cache.get(w)
            if ids is None:
                ids = self._word(w)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[w] = ids
            out += ids
        return out

    def _word(self, word: str) -> list[int]:
        t2i = self._t2i
        sym = (
            word.encode("utf-8").decode("latin-1").translate(ENCODE_TABLE)
            if self._byte_encode
            else word
        )
        if self._ignore_merges or (self._newline_words and not sym.strip("\n")):
            whole = t2i.get(sym)
            if whole is not None:
                return [whole]
        out: list[int] = []
        for s in self._merge(sym):
            i = t2i.get(s)
            if i is not None:
                out.append(i)
                continue
            # not a token: its bytes one by one, silently skipping bytes without a token
            byte_ids = self._byte_ids
            for b in s.encode("utf-8"):
                bi = byte_ids[b]
                if bi is not None:
                    out.append(bi)
        return out

    def _merge(self, word: str) -> list[str]:
        n = len(word)
        if n < 2:
            return [word] if n else []
        if n > _SHORT:
            return self._merge_long(word)
        # Short words: keep the rank of every adjacent pair in a list and take the leftmost
        # minimum each time; cheaper than a heap at this size, same order of merges.
        get = self._ranks.get
        syms = list(word)
        pr = [get(syms[i] + " " + syms[i + 1], _NO_RANK) for i in range(n - 1)]
        while pr:
            best = min(pr)
            if best == _NO_RANK:
                break
            k = pr.index(best)
            merged = syms[k] + syms[k + 1]
            syms[k] = merged
            del syms[k + 1]
            del pr[k]
            if k:
                pr[k - 1] = get(syms[k - 1] + " " + merged, _NO_RANK)
            if k < len(pr):
                pr[k] = get(merged + " " + syms[k + 1], _NO_RANK)
        return syms

    def _merge_long(self, word: str) -> list[str]:
        """llama.cpp's priority queue, for long words where rescanning pairs would cost
        O(n^2)."""
        n = len(word)
        ranks = self._ranks
        syms = list(word)
        heap = []
        for i in range(n - 1):
            r = ranks.get(syms[i] + " " + syms[i + 1])
            if r is not None:
                heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
        heapify(heap)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        while heap:
            _, left, right, text = heappop(heap)
            a = syms[left]
            b = syms[right]
            if not a or not b or a + b != text:
                continue  # stale: one side was merged since the pair was queued
            syms[left] = text
            syms[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
                r = ranks.get(text + " " + syms[after])
                if r is not None:
                    heappush(heap, (r, left, after, text + syms[after]))
            before = prv[left]
            if before >= 0:
                r = ranks.get(syms[before] + " " + text)
                if r is not None:
                    heappush(heap, (r, before, left, syms[before] + text))
        return [s for s in syms if s]
