"""Texts the tokenizer tests run through every vocabulary and compare with llama.cpp.

Each one aims at a place where tokenizers differ: pre-tokenizer classes (letters, numbers,
punctuation, Unicode whitespace), merges across multi-byte characters, byte fallback, the
SentencePiece space marker, and text that looks like special tokens.
"""

from __future__ import annotations

from pathlib import Path

from paths import shared_dir

CORPUS: list[str] = [
    # prose
    "The quick brown fox jumps over the lazy dog.",
    "It's 5 o'clock somewhere, isn't it? I'd say we'll be fine; they've gone, you're late, "
    "I'm here.",
    "DON'T SHOUT! We'RE fine, Y'ALL'LL see. 'Tis the season, 'twas said.",
    "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or "
    "no money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world.",
    # code
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    '#include <stdio.h>\nint main(void) {\n\tprintf("%d\\n", 42);\n\treturn 0;\n}\n',
    '{"name": "metallic", "version": [0, 1, 0], "ok": true, "pi": 3.14159, "none": null}',
    "<div class=\"x\"><a href='https://example.com/path?q=1&r=2#frag'>link</a></div>",
    "for (let i = 0; i < arr.length; i++) { sum += arr[i] ** 2; } // comment /* block */",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "$x = $a->b['c'] ?? null; echo \"${x}\"; @decorator; a |= b ^ ~c; x := y <= z",
    "\\begin{equation} E = mc^2 \\quad \\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}"
    " \\end{equation}",
    # numbers
    "1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890",
    "3.14159 -42 +7 1,000,000 1.000.000,50 0x1F 0b1010 1e-9 6.02e23 50% $19.99 \u20ac5",
    "2024-01-15T10:30:00Z, 12:34:56.789, v1.2.3-rc.4, 192.168.0.1:8080",
    "\u00bd \u00b2 \u2163 \u216b \u0663\u0664\u0665 \uff11\uff12\uff13 \U0001d7d9\U0001d7da "
    "\u2460\u2461",
    # CJK, other scripts
    "\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e\u4eca\u5929\u5929\u6c14\u5f88\u597d"
    "\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca"
    "\u3068\u3072\u3089\u304c\u306a\u3001\u6f22\u5b57\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4. \uc548\ub155\ud558\uc138\uc694!",
    "\u043f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u041d\u0435\u0449\u043e \u043d"
    "\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438.",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0643"
    "\u064a\u0641 \u062d\u0627\u0644\u0643\u061f \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0e2a\u0e27"
    "\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a \u1780\u17b6\u1793\u17cb\u178f\u17c2",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5 \u0540\u0561"
    "\u0575\u0565\u0580\u0565\u0576 \u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8",
    # emoji
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) "
    "\u2705 \U0001f999\U0001f999",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f44d\U0001f3fd "
    "\U0001f1eb\U0001f1f7 1\ufe0f\u20e3 \u2764\ufe0f\U0001f525\U0001f4af",
    # combining marks and accents
    "e\u0301 n\u0303 a\u0308 o\u0302\u0323 Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f"
    "\u0334\u0319",
    "\u00c7a va? D\u00e9j\u00e0 vu, na\u00efve caf\u00e9, \u00c5ngstr\u00f6m, Stra\u00dfe, "
    "C\u1eeda Vi\u1ec7t, \u0141\u00f3d\u017a, \u00ee\u0219i \u021bar\u0103",
    "\u01c5 \u01c8 \ufb01 \ufb02 \U0001d400\U0001d401 \u212b \u2126 \u00b5 \u0130stanbul "
    "\u0131 \u017f",
    # whitespace
    " ",
    "   leading and trailing   ",
    "tabs\tand\t\ttabs\t\t\t",
    "\n\n\nnewlines\n\n\n\n",
    "windows\r\nline\r\n\r\nendings\r",
    " \n \n\n \t \t\t \t\n  \n   \n    \n     \n",
    "                                        forty spaces",
    "\u00a0nbsp\u00a0\u00a0 ideographic\u3000space thin\u2009space \u2028line sep\u2029para",
    "\u200bzero\u200bwidth\u200d joiner\ufeffbom \u00admaybe",
    # control characters and odd code points
    "nul\x00 esc\x1b[0m del\x7f bell\x07 fs\x1c gs\x1d us\x1f vt\x0b ff\x0c",
    "private \ue000\uf8ff unassigned \u0378 \U000e0001 noncharacter \ufdd0\uffff",
    # punctuation and symbols
    "!!!!!! ?????? ...... ------======= '''''' ``````` \"\"\"\"",
    "$+<=>^~|` \u00ab\u00bb \u201e\u201c \u2018\u2019 \u2014\u2013\u2026 \u00a7\u00b6\u2020"
    "\u2021 \u00a9\u00ae\u2122 \u2190\u2192\u2191\u2193 \u221e\u2211\u220f\u221a",
    "(a) [b] {c} <d> a/b\\c a_b a-b a.b a,b a;b a:b a@b a#b a&b a*b",
    # special-token look-alikes
    "<|im_end",
    "<|im_end|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<s>[INST] Hi [/INST] Hello</s>",
    "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|endoftext|><|endoftext|> < |endoftext| > <|endoftext",
    "<unk> <0x41> <0xE2><0x96> <pad> <mask> [multimodal] <table><tr><td>x</td></tr></table>",
    "<fim_prefix>def f():<fim_suffix>\n<fim_middle><file_sep><reponame>",
    # long runs
    "a" * 300,
    "thequickbrownfoxjumpsoverthelazydog" * 10,  # one 350-letter word
    "=" * 100 + "\n" + "-" * 64,
    "\n" * 40,
    "\t" * 33 + "x",
    " " * 64 + "x",
    "abc" * 50,
]

# Chat-formatted prompts, per family, for parse_special=True.
CHAT: dict[str, str] = {
    "qwen2": (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
        "Wie geht's? \u4f60\u597d<|im_end|>\n<|im_start|>assistant\n"
    ),
    "smollm": "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "llama-bpe": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Caf\u00e9?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "gemma": (
        "<bos><start_of_turn>user\nWhy is the sky blue?<end_of_turn>\n"
        "<start_of_turn>model\n<table>\n  <tr>\n"
    ),
    "llama-spm": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello!</s><s>",
}


# --- where the shared test vectors are ----------------------------------------------------------

FAMILIES = ("qwen2", "llama-bpe", "gpt-2", "starcoder", "llama-spm")
_SEPARATOR = "\n__ggml_vocab_test__\n"


def shared_tokenizer_dir() -> Path:
    return shared_dir() / "tokenizer"


def vocab_path(family: str) -> Path:
    return shared_tokenizer_dir() / f"ggml-vocab-{family}.gguf"


def load_vectors(family: str) -> list[tuple[str, list[int]]]:
    """(text, expected ids) pairs of llama.cpp's test-tokenizer-0 for one family."""
    base = vocab_path(family)
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split(_SEPARATOR)
    lines = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(texts) == len(lines) + 1 and texts[-1] in ("", "\n"):
        texts.pop()  # the file ends with a separator
    if len(texts) != len(lines):
        raise ValueError(f"{base}: {len(texts)} texts but {len(lines)} expected id lists")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]
