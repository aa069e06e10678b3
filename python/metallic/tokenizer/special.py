"""Cutting special tokens out of text before the model's own tokenization.

llama.cpp's rule, reproduced exactly: special tokens are taken longest first; each one claims
every occurrence, left to right, that lies wholly in text no other token has claimed. That is
not always the leftmost-longest match (with "bcd" and "ab", "abcd" gives "a" + "bcd").

User-defined tokens are always cut out; control and unknown tokens only with parse_special.

To stay fast with thousands of special tokens (Gemma has 6,400), one scan with a trie-shaped
regex finds which special tokens occur at all; only those run the exact rule.
"""

from __future__ import annotations

import re

from .vocab import CONTROL, LSTRIP, RSTRIP, UNKNOWN, Vocab

# C isspace(), which llama.cpp uses for the strip attributes
_C_SPACE = " \t\n\v\f\r"


class _Scanner:
    """Finds the special tokens present in a text, among ``ids`` (longest first)."""

    def __init__(self, tokens: list[str], ids: list[int]) -> None:
        by_text: dict[str, list[int]] = {}
        for i in ids:
            by_text.setdefault(tokens[i], []).append(i)
        self._by_text = by_text
        self.rank = {tid: k for k, tid in enumerate(ids)}  # llama.cpp's order: longest first
        self._pattern = re.compile("(?=(" + _trie_regex(list(by_text)) + "))", re.DOTALL)
        # a text found at a position also reveals the shorter special tokens it starts with
        self._prefixes: dict[str, list[str]] = {}

    def present(self, text: str) -> set[int]:
        found: set[int] = set()
        seen: set[str] = set()
        for m in self._pattern.finditer(text):
            t = m.group(1)
            if t in seen:
                continue
            seen.add(t)
            for p in self._prefixes_of(t):
                found.update(self._by_text[p])
        return found

    def _prefixes_of(self, t: str) -> list[str]:
        got = self._prefixes.get(t)
        if got is None:
            got = [t[:k] for k in range(1, len(t) + 1) if t[:k] in self._by_text]
            self._prefixes[t] = got
        return got


def _trie_regex(texts: list[str]) -> str:
    """A regex matching the longest of ``texts`` at a position, shaped as a trie so the
    engine does not try thousands of alternatives one by one."""
    trie: dict = {}
    for t in texts:
        node = trie
        for c in t:
            node = node.setdefault(c, {})
        node[""] = {}

    def emit(node: dict) -> str:
        end = "" in node
        alts = []
        for c, child in sorted(node.items()):
            if not c:
                continue
            chain = [c]
            while len(child) == 1 and "" not in child:  # no branch: a plain literal run
                ((c, child),) = child.items()
                chain.append(c)
            alts.append(re.escape("".join(chain)) + emit(child))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if end else body

    return emit(trie)


class SpecialMatcher:
    def __init__(self, vocab: Vocab) -> None:
        self._tokens = vocab.tokens
        self._attrs = vocab.attrs
        attrs = vocab.attrs
        self._ids = {
            True: vocab.special_ids,
            False: [i for i in vocab.special_ids if not attrs[i] & (CONTROL | UNKNOWN)],
        }
        self._scanners: dict[bool, _Scanner] = {}
        self._strips = bool((attrs & (LSTRIP | RSTRIP)).any())

    def split(self, text: str, parse_special: bool) -> list[str | int]:
        """``text`` as a list of raw text pieces and special token ids."""
        ids = self._ids[parse_special]
        if not ids or not text:
            return [text] if text else []
        scanner = self._scanners.get(parse_special)
        if scanner is None:
            scanner = self._scanners[parse_special] = _Scanner(self._tokens, ids)
        present = scanner.present(text)
        if not present:
            return [text]

        tokens = self._tokens
        claimed = bytearray(len(text))
        claims: list[tuple[int, int]] = []
        for tid in sorted(present, key=scanner.rank.__getitem__):  # longest first
            t = tokens[tid]
            size = len(t)
            pos = text.find(t)
            while pos >= 0:
                hit = claimed.find(1, pos, pos + size)
                if hit < 0:
                    claimed[pos : pos + size] = b"\x01" * size
                    claims.append((pos, tid))
                    pos = text.find(t, pos + size)
                else:
                    # every start before the end of that claimed run overlaps it
                    end = claimed.find(0, hit)
                    pos = text.find(t, end) if end >= 0 else -1
        claims.sort()

        out: list[str | int] = []
        pos = 0
        for start, tid in claims:
            if start > pos:
                out.append(text[pos:start])
            out.append(tid)
            pos = start + len(tokens[tid])
        if pos < len(text):
            out.append(text[pos:])
        return self._strip(out) if self._strips else out

    def _strip(self, parts: list[str | int]) -> list[str | int]:
        """Whitespace next to tokens with the lstrip/rstrip attribute is dropped."""
        attrs = self._attrs
        for k, part in enumerate(parts):
            if isinstance(part, str):
                continue
            if attrs[part] & LSTRIP and k > 0 and isinstance(parts[k - 1], str):
                parts[k - 1] = parts[k - 1].rstrip(_C_SPACE)  # type: ignore[union-attr]
            if attrs[part] & RSTRIP and k + 1 < len(parts) and isinstance(parts[k + 1], str):
                parts[k + 1] = parts[k + 1].lstrip(_C_SPACE)  # type: ignore[union-attr]
        return [p for p in parts if p != ""]
