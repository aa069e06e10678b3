"""Pre-tokenizers of byte-level BPE vocabularies: how text is cut into words before merging.

``tokenizer.ggml.pre`` names the split. A split is a list of steps applied in turn, each one
cutting every piece left by the previous step further; text a step's pattern does not match is
kept as a piece of its own (llama.cpp's rule), so a step never loses characters.

The patterns reproduce what llama.cpp actually computes, which is not always what the model's
``tokenizer.json`` says:

- llama.cpp runs patterns that use Unicode classes on a "collapsed" text where every non-ASCII
  character is replaced by one byte per category. \\p{Lu}, \\p{Ll}, \\p{Lt}, \\p{Lm} and \\p{Lo}
  therefore all mean \\p{L} there, so they are written as \\p{L} below.
- Its \\s is exactly Unicode White_Space (25 code points), never U+001C..U+001F; every \\s and
  \\S below is rewritten to that explicit set (``_compile``) so a change in the regex module's
  definition cannot move a split.
- Patterns with non-ASCII literal ranges run on text where non-ASCII whitespace was replaced by
  U+000B, so a literal range never matches a whitespace character; those ranges exclude it.
- ``$`` means end of piece (``\\Z``), never "before a final newline".
- The common GPT-2, Llama 3, Qwen 2 and Qwen 3.5 patterns and a few others are hand-written
  loops in llama.cpp; the patterns used for them match those loops, not the original regex.

Categories (\\p{L}, \\p{N}, ...) come from the regex module's Unicode tables, which are newer
than llama.cpp's (Unicode 15.1-ish): only code points assigned since then can split differently.

Steps compile lazily and once per process (``Step.pattern``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import regex

# Unicode White_Space, the set llama.cpp treats as \s.
# fmt: off
_WS_POINTS = (
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
     0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)
# fmt: on
WHITESPACE = frozenset(chr(c) for c in _WS_POINTS)
_WS_CLASS = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# Apostrophe contractions, spelled out as llama.cpp does instead of (?i:...): case folding
# would also accept the long s (U+017F) and the Kelvin sign.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# Han ideographs as llama.cpp's Kimi-K2 splitter defines them (by range, not by property).
_HAN = (
    r"\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    r"\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002ceb0-\U0002ebef\uf900-\ufaff"
    r"\U0002f800-\U0002fa1f"
)


def _compile(pattern: str) -> regex.Pattern[str]:
    """Compiles ``pattern`` with \\s and \\S replaced by the explicit White_Space set."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "s":
                out.append(_WS_CLASS if in_class else f"[{_WS_CLASS}]")
            elif nxt == "S":
                if in_class:
                    raise ValueError(f"\\S inside a character class: {pattern!r}")
                out.append(f"[^{_WS_CLASS}]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            # a ']' or '^]' right after '[' is a literal, not the end of the class
            if pattern.startswith("^]", i + 1):
                out.append("^]")
                i += 3
                continue
            if pattern.startswith("]", i + 1):
                out.append("]")
                i += 2
                continue
        elif c == "]" and in_class:
            in_class = False
            out.append(c)
        else:
            out.append(c)
        i += 1
    return regex.compile("".join(out))


def _ranges(pairs: Sequence[tuple[int, int]]) -> str:
    """Character-class text for code point ranges, minus White_Space (see module doc)."""
    ws = sorted(ord(c) for c in WHITESPACE)
    parts: list[str] = []
    for lo, hi in pairs:
        start = lo
        for w in ws:
            if start <= w <= hi:
                if start < w:
                    parts.append(_range_text(start, w - 1))
                start = w + 1
        if start <= hi:
            parts.append(_range_text(start, hi))
    return "".join(parts)


def _range_text(lo: int, hi: int) -> str:
    def esc(c: int) -> str:
        return f"\\U{c:08x}"

    return esc(lo) if lo == hi else f"{esc(lo)}-{esc(hi)}"


@dataclass(frozen=True)
class Step:
    """One cut. ``kind``: "match" when the pattern matches every character (its matches are
    the pieces), "split" when unmatched text between matches is kept too, "func" for a cut
    that no regex expresses."""

    kind: str
    source: str = ""
    func: Callable[[str], list[str]] | None = None

    @cached_property
    def pattern(self) -> regex.Pattern[str]:
        if self.kind == "split":
            # one capturing group around the whole pattern makes split() return the matches
            return _compile(f"({self.source})")
        return _compile(self.source)

    def cut(self, piece: str) -> list[str]:
        if self.kind == "match":
            return self.pattern.findall(piece)
        if self.kind == "split":
            return [p for p in self.pattern.split(piece) if p]
        assert self.func is not None
        return self.func(piece)


def _digit_groups(piece: str) -> list[str]:
    """llama.cpp's digit grouper (AFMoE, Tiny Aya): a run of n digits becomes n % 3 leading
    digits and then groups of three. Text before a run is not cut off; it stays glued to the
    run's first group, as in llama.cpp (the next step separates it again)."""
    out: list[str] = []
    prev = 0
    for m in _DIGIT_RUN.finditer(piece):
        start, end = m.span()
        cur = start + (end - start) % 3
        if cur > start:
            out.append(piece[prev:cur])
            prev = cur
        while cur < end:
            cur += 3
            out.append(piece[prev:cur])
            prev = cur
    if prev < len(piece):
        out.append(piece[prev:])
    return out


_DIGIT_RUN = regex.compile(r"\p{N}+")


def _match(source: str) -> Step:
    return Step("match", source)


def _split(source: str) -> Step:
    return Step("split", source)


# --- the patterns ---------------------------------------------------------------------------

# The patterns and code point tables are laid out by hand (by alternative, by range):
# the formatter leaves them as they are.
# fmt: off
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_JAIS2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
          r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}")
_ASCII_PUNCT = r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"
_DEEPSEEK3 = (_ASCII_PUNCT + r"[A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPARK25 = (_ASCII_PUNCT + r"[A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
            r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+")
_CJK_KANA = r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
# cased letters of DeepSeek LLM's tokenizer.json, as code point ranges
_DEEPSEEK_LETTERS = _ranges([
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA),
    (0x1BC, 0x1BF), (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x377),
    (0x37B, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C),
    (0x38E, 0x3A1), (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556),
    (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113),
    (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128),
    (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149),
    (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F), (0xA771, 0xA787),
    (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17), (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
])
_DEEPSEEK_PUNCT = _ranges([(0x21, 0x2F), (0x3A, 0x7E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E),
                           (0x2018, 0x201F), (0x3000, 0x3002)])
_CJK_HANGUL = _ranges([(0x4E00, 0x9FA5), (0x800, 0x4E00), (0xAC00, 0xD7FF)])
_YOUTU_CJK = (
    "[" + _ranges([(0xAC00, 0xD7A3), (0x3131, 0x318E)]) + "]+"
    "|[" + _ranges([(0xFF01, 0xFF01), (0x2026, 0x2026), (0x201C, 0x201D), (0x2018, 0x2019),
                    (0x2014, 0x2014), (0xFF1A, 0xFF1B), (0xFF0C, 0xFF0C), (0x3001, 0x303F),
                    (0xFE30, 0xFE4F)]) + "]+"
    "|[" + _ranges([(0x3105, 0x312F)]) + "]+"
    "|" + _CJK_KANA
)
_YOUTU = (r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+" + _CONTRACTIONS + "?"
          r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*" + _CONTRACTIONS + "?"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TINY_AYA = (r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]*[\p{L}\p{M}]+" + _CONTRACTIONS + "?"
             r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+[\p{L}\p{M}]*" + _CONTRACTIONS + "?"
             r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-4o style: a run of "not ASCII lowercase" letters, then "not ASCII uppercase" letters.
# Non-ASCII letters count as both, which is what llama.cpp's rewrite of \p{Lu}/\p{Ll} gives.
_UP = r"(?:(?=\p{L})[^a-z])"
_LO = r"(?:(?=\p{L})[^A-Z])"
_UPM = r"(?:(?=[\p{L}\p{M}])[^a-z])"
_LOM = r"(?:(?=[\p{L}\p{M}])[^A-Z])"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LO}+{_CONTRACTIONS}?"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LO}*{_CONTRACTIONS}?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GRANITE_MULTI = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPM}*{_LOM}+{_CONTRACTIONS}?"
                  rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPM}+{_LOM}*{_CONTRACTIONS}?"
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UP}*{_LO}+|[^\r\n\p{{L}}\p{{N}}]?{_UP}+{_LO}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_KIMI_K2 = (f"[{_HAN}]+"
            rf"|[^\r\n\p{{L}}\p{{N}}]?(?:(?![{_HAN}])\p{{L}})+{_CONTRACTIONS}?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+|(?s:.)")
_BAILING = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
_SEED_CODER = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_UFAKZEKA = (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+")
_AFMOE_CJK = "[" + _ranges([
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x3040, 0x309F), (0x30A0, 0x30FF),
    (0xFF65, 0xFF9F), (0x2F00, 0x2FDF), (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1780, 0x17FF),
    (0x1000, 0x109F), (0xAA60, 0xAA7F), (0xA9E0, 0xA9FF), (0xAC00, 0xD7AF), (0x1100, 0x11FF),
]) + "]+"
_AFMOE = (_ASCII_PUNCT + r"[A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
          r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_EXAONE_MOE = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")
_MINICPM5 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
_NEWLINES = r"[^\n]+|\n+"
# fmt: on


@dataclass(frozen=True)
class PreSpec:
    """How one ``tokenizer.ggml.pre`` family cuts text, and the vocabulary defaults that come
    with it in llama.cpp."""

    steps: tuple[Step, ...]
    ignore_merges: bool = False  # a word that is itself a token skips merging
    add_bos: bool = False  # default of tokenizer.ggml.add_bos_token
    bos_none: bool = False  # no default BOS id
    byte_encode: bool = True  # GPT-2 byte-to-unicode mapping (False: raw UTF-8, <0xNN> bytes)
    escape_whitespace: bool = False  # spaces become U+2581 before splitting
    force_add_bos: bool = False  # llama.cpp overrides add_bos_token=false (Gemma 4)
    newline_words: bool = False  # a run of newlines that is a token skips merging (Gemma 4)
    names: tuple[str, ...] = field(default=())


def _spec(names: str, *steps: Step, **kw: bool) -> PreSpec:
    return PreSpec(steps=steps, names=tuple(names.split()), **kw)


# fmt: off
_DEFAULT_STEPS = (_split(r"[\p{P}\$\+<=>\^~\|]+"), _match(_GPT2), _split(r"\p{N}+"),
                  _split(r"[0-9][0-9][0-9]"))

_SPECS: tuple[PreSpec, ...] = (
    _spec("default", *_DEFAULT_STEPS),
    _spec("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
          _match(_LLAMA3), ignore_merges=True, add_bos=True),
    _spec("dbrx smaug-bpe", _match(_LLAMA3)),
    _spec("jais-2", _split(_JAIS2)),
    _spec("deepseek-llm", _split(r"[\r\n]"), _split(rf"\s?[{_DEEPSEEK_LETTERS}]+"),
          _split(rf"\s?[{_DEEPSEEK_PUNCT}]+"), _split(r"\s+\Z"), _split(f"[{_CJK_HANGUL}]+"),
          _split(r"\p{N}+")),
    _spec("deepseek-v3 hunyuan-dense joyai-llm hy_v4", _split(r"\p{N}{1,3}"),
          _split(_CJK_KANA), _split(_DEEPSEEK3)),
    _spec("spark2_5", _split(r"\p{N}{1,3}"), _split(_CJK_KANA), _split(_SPARK25),
          _split(r"\p{N}")),
    _spec("youtu", _split(_YOUTU_CJK), _split(_YOUTU), ignore_merges=True),
    _spec("deepseek-coder", _split(r"[\r\n]"), _split(r"\s?\p{L}+"), _split(r"\s?\p{P}+"),
          _split(f"[{_CJK_HANGUL}]+"), _split(r"\p{N}")),
    _spec("falcon", _split(r"[\p{P}\$\+<=>\^~\|`]+"), _match(_GPT2), _split(r"[0-9][0-9][0-9]")),
    _spec("starcoder refact command-r smollm codeshell exaone minerva-7b mellum2",
          _split(r"\p{N}"), _match(_GPT2)),
    _spec("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum "
          "modern-bert jina-v1-en jina-v2-code roberta-bpe mpt olmo jais trillion "
          "granite-docling exaone4", _match(_GPT2)),
    _spec("qwen2 deepseek-r1-qwen kormo f2llmv2 megrez stablelm2 hunyuan solar-open grok-2",
          _match(_QWEN2)),
    _spec("qwen35", _match(_QWEN35)),
    _spec("poro-chat bloom gpt3-finnish", _split(_BLOOM)),
    _spec("chatglm-bpe", _match(_LLAMA3), bos_none=True),
    _spec("glm4 glm5", _match(_LLAMA3), bos_none=True, ignore_merges=True),
    _spec("viking", _split(_BLOOM), _split(r"\p{N}")),
    _spec("tekken", _split(_TEKKEN), ignore_merges=True, add_bos=True),
    _spec("chameleon", _split(r"<sentinel:[0-9]+>"),
          _split(r"(?:IMGIMG)(?:(?:A|B|C|D|E|F|G|H|I){1,4})Z"), _split(r"(?:[\t\n]|    |  )"),
          _split(r"\p{N}"), _split(r"[\p{P}!-/:-@\[-`{-~]"), _match(_GPT2), add_bos=True),
    _spec("gpt-4o llama4 kanana2 talkie minimax-m2", _split(_GPT4O)),
    _spec("granite-embed-multi-97m", _split(_GRANITE_MULTI), ignore_merges=True),
    _spec("tiny_aya cohere2moe", Step("func", func=_digit_groups), _split(_TINY_AYA)),
    _spec("kimi-k2", _match(_KIMI_K2)),
    _spec("superbpe", _split(r"\p{N}+"), _split(r"(?=(?:[0-9]{3})+(?![0-9]))")),
    _spec("bailingmoe bailingmoe2 llada-moe", _split(_BAILING)),
    _spec("seed-coder", _split(_SEED_CODER)),
    _spec("ufakzeka", _split(_UFAKZEKA)),
    _spec("afmoe", Step("func", func=_digit_groups), _split(_AFMOE_CJK), _split(_AFMOE)),
    _spec("laguna", _match(_NEWLINES), _match(_QWEN2)),
    _spec("exaone-moe", _split(_EXAONE_MOE)),
    _spec("gemma4 granite-embed-multi-311m", _match(_NEWLINES), byte_encode=False,
          escape_whitespace=True, force_add_bos=True, newline_words=True),
    _spec("sarvam-moe", _match(_NEWLINES), byte_encode=False, escape_whitespace=True),
    _spec("minicpm5", _split(r"\p{N}{1,3}"), _split(_MINICPM5), ignore_merges=True),
)
# fmt: on
# Not supported: "whitespace" (jina-v2-zh), which needs llama.cpp's separate whitespace model.

PRE_SPECS: dict[str, PreSpec] = {name: spec for spec in _SPECS for name in spec.names}


def split_words(steps: Sequence[Step], text: str) -> list[str]:
    """Cuts ``text`` into the words BPE merges within."""
    pieces = steps[0].cut(text)
    for step in steps[1:]:
        cut = step.cut
        out: list[str] = []
        for piece in pieces:
            out += cut(piece)
        pieces = out
    return pieces
