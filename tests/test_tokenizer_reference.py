"""Token ids, special tokens and pieces against llama.cpp (llama-cpp-python, vocab only) and
against Hugging Face ``tokenizers`` built from the same GGUF data.

Covers the five shared vocabularies, the two real models (Gemma 3: SentencePiece with 262k
tokens; SmolLM2: BPE, pre "smollm"), every pre-tokenizer llama.cpp knows (on a synthetic
vocabulary that makes every word split visible), a synthetic SentencePiece vocabulary with
random scores, and special-token cutting rules.
"""

from __future__ import annotations

import ctypes
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from data.tokenizer_corpus import CHAT, CORPUS, FAMILIES, vocab_path
from metallic.tokenizer import Tokenizer
from metallic.tokenizer.bpe import BYTE_TO_CHAR, ENCODE_TABLE
from metallic.tokenizer.pretokenizers import PRE_SPECS

llama_cpp = pytest.importorskip("llama_cpp")


# --- the reference ----------------------------------------------------------------------------


class LlamaCpp:
    """llama.cpp's tokenizer for one GGUF file (vocabulary only)."""

    def __init__(self, path: Path) -> None:
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def encode(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=add_special, special=parse_special)

    def piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(1024)
        n = llama_cpp.llama_token_to_piece(self.vocab, token_id, buf, 1024, 0, special)
        return buf.raw[:n]

    def detokenize(self, ids: list[int], special: bool) -> bytes:
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 64 * len(ids)
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, special)
        assert n >= 0
        return buf.raw[:n]

    def eog_ids(self) -> set[int]:
        return {i for i in range(self.n) if llama_cpp.llama_vocab_is_eog(self.vocab, i)}

    def bos(self) -> int | None:
        b = llama_cpp.llama_vocab_bos(self.vocab)
        return None if b < 0 else b

    def eos(self) -> int | None:
        e = llama_cpp.llama_vocab_eos(self.vocab)
        return None if e < 0 else e


def _real_model(name: str) -> Path:
    import real_models

    return real_models.gemma3_gguf() if name == "gemma3" else real_models.smollm2_gguf()


VOCABS = (*FAMILIES, "gemma3", "smollm2")
# llama.cpp's detokenize removes spaces before punctuation ("clean_spaces") for these
CLEAN_SPACES = {"llama-bpe", "gpt-2", "starcoder"}
_PAIRS: dict[str, tuple[Tokenizer, LlamaCpp]] = {}


def pair(name: str) -> tuple[Tokenizer, LlamaCpp]:
    if name not in _PAIRS:
        path = _real_model(name) if name in ("gemma3", "smollm2") else vocab_path(name)
        if not path.exists():
            pytest.skip(f"{path} not found")
        _PAIRS[name] = (Tokenizer.from_gguf(path), LlamaCpp(path))
    return _PAIRS[name]


MODES = [(False, False), (True, False), (False, True), (True, True)]


# --- real vocabularies ------------------------------------------------------------------------


@pytest.mark.parametrize("name", VOCABS)
@pytest.mark.parametrize("add_special,parse_special", MODES)
def test_corpus_matches_llama_cpp(name: str, add_special: bool, parse_special: bool) -> None:
    ours, ref = pair(name)
    wrong = []
    for text in CORPUS + list(CHAT.values()):
        got = ours.encode(text, add_special=add_special, parse_special=parse_special)
        want = ref.encode(text, add_special, parse_special)
        if got != want:
            wrong.append((text, got, want))
    assert wrong == []


@pytest.mark.parametrize("name", VOCABS)
def test_special_tokens_match_llama_cpp(name: str) -> None:
    ours, ref = pair(name)
    assert ours.vocab_size == ref.n
    assert ours.eog_ids == ref.eog_ids()
    assert ours.bos_id == ref.bos()
    assert ours.eos_id == ref.eos()
    assert ours.add_bos == llama_cpp.llama_vocab_get_add_bos(ref.vocab)
    assert ours.add_eos == llama_cpp.llama_vocab_get_add_eos(ref.vocab)


def test_end_of_generation_ids_of_the_real_models() -> None:
    gemma, _ = pair("gemma3")
    assert {1, 106} <= gemma.eog_ids  # <eos>, <end_of_turn>
    assert gemma.token_to_id("<end_of_turn>") == 106
    smol, _ = pair("smollm2")
    assert {0, 2} <= smol.eog_ids  # <|endoftext|>, <|im_end|>


@pytest.mark.parametrize("name", VOCABS)
def test_pieces_match_llama_cpp(name: str) -> None:
    ours, ref = pair(name)
    n = ours.vocab_size
    ids = sorted(
        {
            *range(0, n, max(1, n // 3000)),
            *range(min(n, 300)),
            *ours.eog_ids,
            *range(max(0, n - 300), n),
        }
    )
    wrong = [
        (i, special)
        for i in ids
        for special in (False, True)
        if ours.token_to_piece(i, special) != ref.piece(i, special)
    ]
    assert wrong == []


@pytest.mark.parametrize("name", [v for v in VOCABS if v not in CLEAN_SPACES])
def test_decode_matches_llama_cpp(name: str) -> None:
    ours, ref = pair(name)
    wrong = []
    for text in CORPUS + list(CHAT.values()):
        ids = ours.encode(text, add_special=False, parse_special=True)
        if ids and ids[0] == ours.bos_id and ours.add_space_prefix:
            continue  # the one deliberate difference, see test_space_after_bos
        for special in (False, True):
            want = ref.detokenize(ids, special).decode("utf-8", "replace")
            if ours.decode(ids, special) != want:
                wrong.append((text, special))
    assert wrong == []


def test_space_after_bos() -> None:
    """SentencePiece's space before the first word is dropped also after a leading BOS (as
    Hugging Face and llama-cpp-python do, so encode -> decode gives the text back), where
    llama.cpp's own detokenizer keeps it."""
    ours, ref = pair("llama-spm")
    ids = ours.encode("Hello world")
    assert ids[0] == ours.bos_id
    assert ours.decode(ids) == "Hello world"
    assert ref.detokenize(ids, False) == b" Hello world"
    assert ours.decode(ids[1:]) == ref.detokenize(ids[1:], False).decode() == "Hello world"


# --- Hugging Face tokenizers from the same vocabulary -------------------------------------------

_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _hf_tokenizer(name: str) -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    from metallic.gguf_file import read_gguf

    path = _real_model(name) if name == "smollm2" else vocab_path(name)
    md = read_gguf(path).metadata
    vocab = {t: i for i, t in enumerate(md["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    pre = tokenizers.pre_tokenizers
    hf = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab, merges, ignore_merges=name == "llama-bpe")
    )
    byte_level = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    if name == "gpt-2":
        hf.pre_tokenizer = pre.ByteLevel(add_prefix_space=False, use_regex=True)
    elif name in ("starcoder", "smollm2"):
        hf.pre_tokenizer = pre.Sequence(
            [
                pre.Digits(individual_digits=True),
                pre.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        regex = _QWEN2_REGEX if name == "qwen2" else _LLAMA3_REGEX
        hf.pre_tokenizer = pre.Sequence(
            [pre.Split(tokenizers.Regex(regex), behavior="isolated"), byte_level]
        )
    return hf


@pytest.mark.parametrize("name", ["gpt-2", "qwen2", "llama-bpe", "starcoder", "smollm2"])
def test_corpus_matches_hf_tokenizers(name: str) -> None:
    ours, _ = pair(name)
    hf = _hf_tokenizer(name)
    wrong = [
        text
        for text in CORPUS
        if hf.encode(text, add_special_tokens=False).ids != ours.encode(text, False)
    ]
    assert wrong == []


# --- synthetic vocabularies ---------------------------------------------------------------------


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _gguf_kv(key: str, value: Any) -> bytes:
    out = _gguf_string(key)
    if isinstance(value, bool):
        return out + struct.pack("<IB", 7, value)
    if isinstance(value, int):
        return out + struct.pack("<II", 4, value)
    if isinstance(value, float):
        return out + struct.pack("<If", 6, value)
    if isinstance(value, str):
        return out + struct.pack("<I", 8) + _gguf_string(value)
    kind, items = value
    if kind == "i32":
        return out + struct.pack(f"<IIQ{len(items)}i", 9, 5, len(items), *items)
    if kind == "f32":
        return out + struct.pack(f"<IIQ{len(items)}f", 9, 6, len(items), *items)
    return out + struct.pack("<IIQ", 9, 8, len(items)) + b"".join(map(_gguf_string, items))


def write_vocab(path: Path, model: str, tokens: list[str], types: list[int], **extra: Any) -> Path:
    """A vocabulary-only GGUF file llama.cpp loads (a GPT-2 shaped header, no tensors)."""
    md: dict[str, Any] = {
        "general.architecture": "gpt2",
        "general.name": extra.pop("name", "synthetic"),
        "gpt2.block_count": 1,
        "gpt2.context_length": 64,
        "gpt2.embedding_length": 8,
        "gpt2.feed_forward_length": 8,
        "gpt2.attention.head_count": 1,
        "gpt2.attention.layer_norm_epsilon": 1e-5,
        "tokenizer.ggml.model": model,
        "tokenizer.ggml.tokens": ("str", tokens),
        "tokenizer.ggml.token_type": ("i32", types),
    }
    for key, value in extra.items():
        md["tokenizer.ggml." + key] = value
    body = b"".join(_gguf_kv(k, v) for k, v in md.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(md)) + body)
    return path


# Texts whose word splits differ between pre-tokenizers
SPLIT_TEXTS = [
    "Hello World's 'RE I'm DON'T y'all hi there 'really",
    "abc 123 1234567 x1y2 \u00bd \u0663\u0664 3.14 12,345",
    "  a\n\n b \t\tc   \r\n\r\n d  \u3000x\u00a0y \n",
    "!!?? ..., $+<=>^~|` (x) \u00aby\u00bb \u2014\u2013\u2026 \u00bf\u00a1 a/b\nStop.\n\nGo!\r\n",
    "\u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f \u30ab\u30bf\u30ab\u30ca "
    "\ud55c\uad6d\uc5b4",
    "\u00e9a\u0301 na\u00efve \u03a9\u03bc\u03ad\u03b3\u03b1 \u01c5 \u0391\u0392\u0393 "
    "\u00c0Bc aBC ABCdef",
    "\U0001f680\U0001f636\u200d\U0001f32b\ufe0f \u2705 \U0001f44d\U0001f3fd x",
    "<sentinel:12> IMGIMGABZ    x\t\ny",
    "ab\u0964cd\u06d4ef\u060cgh\u2026ij\u3002kl\uff0cmn\u3001 9",
    "x  1234 y   56 HelloWorld camelCase XMLHttpRequest",
    "abc\u4f60\u597d \u30ab\u30bf\u6f22\u5b57 \uff01\u3000\uff01 \u4e00\u2000\u4e8c",
    "a \x1c\x1db\x85 c\x1f \u2028",
]


def _substring_vocab(
    texts: list[str], base: list[str], max_len: int = 16
) -> tuple[list[str], list[str]]:
    """Every substring (up to max_len) of the texts is a token, and every split of one into
    two tokens is a merge: BPE then joins each pre-tokenizer word back into one token, so the
    ids show exactly where the words were cut."""
    tokens = list(base)
    seen = set(tokens)
    subs: list[str] = []
    for t in texts:
        for i in range(len(t)):
            for j in range(i + 2, min(len(t), i + max_len) + 1):
                if t[i:j] not in seen:
                    seen.add(t[i:j])
                    subs.append(t[i:j])
    subs.sort(key=lambda s: (len(s), s))
    merges = [s[:k] + " " + s[k:] for s in subs for k in range(1, len(s))]
    singles = sorted({c for t in texts for c in t} - seen)
    return tokens + singles + subs, merges


@pytest.fixture(scope="module")
def byte_level_vocab() -> tuple[list[str], list[str]]:
    mapped = [t.encode().decode("latin-1").translate(ENCODE_TABLE) for t in SPLIT_TEXTS]
    return _substring_vocab(mapped, list(BYTE_TO_CHAR))


def _pre_names() -> Iterator[str]:
    seen = set()
    for spec in PRE_SPECS.values():
        if id(spec) not in seen and spec.byte_encode:
            seen.add(id(spec))
            yield spec.names[0]


@pytest.mark.parametrize("pre", list(_pre_names()))
def test_pretokenizer_matches_llama_cpp(
    pre: str, byte_level_vocab: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    tokens, merges = byte_level_vocab
    tokens = tokens + ["<s>", "</s>"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    path = write_vocab(
        tmp_path / "v.gguf",
        "gpt2",
        tokens,
        types,
        pre=pre,
        merges=("str", merges),
        bos_token_id=len(tokens) - 2,
        eos_token_id=len(tokens) - 1,
    )
    ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
    wrong = [
        (text, [tokens[i] for i in ours.encode(text, False)])
        for text in [*SPLIT_TEXTS, "".join(SPLIT_TEXTS)]
        if ours.encode(text, add_special=False) != ref.encode(text, False, False)
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "model,pre",
    [("gemma4", "gemma4"), ("gpt2", "sarvam-moe"), ("gpt2", "granite-embed-multi-311m")],
)
def test_raw_utf8_bpe_matches_llama_cpp(model: str, pre: str, tmp_path: Path) -> None:
    """BPE on raw UTF-8 with U+2581 for spaces and <0xNN> byte tokens (Gemma 4 style)."""
    texts = [t.replace(" ", "\u2581") for t in SPLIT_TEXTS]
    tokens, merges = _substring_vocab(texts, [f"<0x{b:02X}>" for b in range(256)])
    # newlines only in newline runs, and one run that no merge builds (Gemma 4's rule)
    tokens = [t for t in tokens if "\n" not in t or not t.strip("\n")] + ["\n\n\n"]
    tokens += ["<s>", "</s>"]
    types = [6] * 256 + [1] * (len(tokens) - 258) + [3, 3]
    path = write_vocab(
        tmp_path / "v.gguf",
        model,
        tokens,
        types,
        pre=pre,
        merges=("str", merges),
        bos_token_id=len(tokens) - 2,
        eos_token_id=len(tokens) - 1,
    )
    ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
    extra = ["x\U0001f999y \u2603", "\n\n\n", "a\n\nb"]  # byte fallback, newline runs
    wrong = [
        text
        for text in [*SPLIT_TEXTS, *extra]
        for add in (False, True)
        if ours.encode(text, add_special=add) != ref.encode(text, add, False)
    ]
    assert wrong == []


def test_sentencepiece_scores_match_llama_cpp(tmp_path: Path) -> None:
    """Random scores, tokens with U+2581 inside (they limit where text may be cut for
    speed), byte fallback and the space prefix."""
    rng = random.Random(7)
    texts = [
        t.replace(" ", "\u2581")
        for t in [
            "the cat sat on the mat, then the hat; that is that.",
            "  a  b   c x  y\u2581z  hello  world  ",
            "mixed \u00e9\u00e8 caf\u00e9 \u4f60\u597d \U0001f600 end",
        ]
    ]
    pieces = {t[i : i + k] for t in texts for k in range(2, 7) for i in range(len(t) - k + 1)}
    pieces = [p for p in sorted(pieces) if rng.random() < 0.6]
    # llama.cpp aborts on a duplicated token
    pieces += [p for p in ("x\u2581", "a\u2581\u2581b") if p not in pieces]
    chars = sorted({c for t in texts for c in t} - {"\U0001f600", "\u4f60"})
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    piece_scores = [round(rng.uniform(-20, 0), 1) for _ in pieces]  # ties too
    scores = [0.0] * (3 + 256) + [-100.0] * len(chars) + piece_scores
    path = write_vocab(
        tmp_path / "spm.gguf",
        "llama",
        tokens,
        types,
        scores=("f32", scores),
        bos_token_id=1,
        eos_token_id=2,
        unknown_token_id=0,
    )
    ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
    samples = [t.replace("\u2581", " ") for t in texts] + ["", " ", "x y", "a  b", "\u4f60"]
    wrong = [
        text
        for text in samples
        for add in (False, True)
        if ours.encode(text, add_special=add) != ref.encode(text, add, False)
    ]
    assert wrong == []
    for text in samples:
        assert ours.decode(ours.encode(text)) == text


def test_default_special_ids_match_llama_cpp(tmp_path: Path) -> None:
    """No ids in the metadata: llama.cpp's defaults (BPE: 11 for both BOS and EOS!)."""
    tokens = list(BYTE_TO_CHAR)
    bpe = write_vocab(
        tmp_path / "bpe.gguf", "gpt2", tokens, [1] * 256, pre="gpt-2", merges=("str", [])
    )
    # (llama.cpp throws if a character has neither a token nor a byte token: keep "▁")
    spm = write_vocab(
        tmp_path / "spm.gguf",
        "llama",
        ["<unk>", "<s>", "</s>", "\u2581", *tokens[4:]],
        [2, 3, 3] + [1] * 253,
        scores=("f32", [0.0] * 256),
    )
    for path in (bpe, spm):
        ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
        assert (ours.bos_id, ours.eos_id) == (ref.bos(), ref.eos())
        assert ours.eog_ids == ref.eog_ids()
        assert ours.encode("ab") == ref.encode("ab", True, False)
    assert Tokenizer.from_gguf(bpe).bos_id == 11


def test_first_of_duplicated_merges_wins(tmp_path: Path) -> None:
    tokens = [*BYTE_TO_CHAR, "ab", "bc"]
    path = write_vocab(
        tmp_path / "dup.gguf",
        "gpt2",
        tokens,
        [1] * 258,
        pre="gpt-2",
        merges=("str", ["b c", "a b", "b c"]),
        bos_token_id=0,
        eos_token_id=0,
    )
    ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
    assert ours.encode("abc", False) == ref.encode("abc", False, False) == [97, 257]


@pytest.mark.parametrize("name", ["synthetic", "phi-3-mini"])  # phi-3: special tokens rstrip
def test_special_token_cutting_matches_llama_cpp(name: str, tmp_path: Path) -> None:
    """Longest special token first, each claiming every occurrence in unclaimed text (not
    leftmost-longest); user-defined tokens always, control tokens with parse_special."""
    base = list(BYTE_TO_CHAR)
    # the last three: llama.cpp's phi-3 fix-up needs them
    special = {
        "bcd": 4,
        "ab": 4,
        "<|x|>": 3,
        "<|x": 3,
        "|>y": 4,
        "<unk>": 2,
        "abxy": 4,
        "xyzzy": 4,
        "<s>": 3,
        "</s>": 3,
        "<|endoftext|>": 3,
    }
    tokens = base + list(special)
    types = [1] * 256 + list(special.values())
    path = write_vocab(
        tmp_path / "sp.gguf",
        "gpt2",
        tokens,
        types,
        pre="gpt-2",
        merges=("str", []),
        bos_token_id=tokens.index("<s>"),
        eos_token_id=tokens.index("</s>"),
        name=name,
    )
    ours, ref = Tokenizer.from_gguf(path), LlamaCpp(path)
    texts = [
        "abcd",
        "xabcdx ab",
        "<|x|><|x|>y",
        "<|x<|x|>",
        "a <|x|> \n y",
        "<unk>bcd\t",
        "|>y<|x|>y abcbcd",
        "<s> x </s>\n\n<|endoftext|>  ab  ",
        "abxyzzy",  # "ab" only ever starts where the longer "abxy" loses to "xyzzy"
    ]
    wrong = [
        (text, mode)
        for text in texts
        for mode in MODES
        if ours.encode(text, *mode) != ref.encode(text, *mode)
    ]
    assert wrong == []
    assert ours.encode("abcd", False) == [ord("a"), tokens.index("bcd")]
    assert ours.encode("abxyzzy", False) == [tokens.index("ab"), tokens.index("xyzzy")]
