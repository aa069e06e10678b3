"""Decoding: one token at a time (StreamDecoder) gives exactly what decoding the whole
sequence gives, never a broken character on the way, and decoding gives the text back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.tokenizer_corpus import CHAT, CORPUS, FAMILIES, vocab_path
from metallic.tokenizer import StreamDecoder, Tokenizer
from metallic.tokenizer.bpe import BYTE_TO_CHAR

VOCABS = (*FAMILIES, "gemma3", "smollm2")
_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(name: str) -> Tokenizer:
    if name not in _TOKENIZERS:
        if name in ("gemma3", "smollm2"):
            import real_models

            path: Path = (
                real_models.gemma3_gguf() if name == "gemma3" else real_models.smollm2_gguf()
            )
        else:
            path = vocab_path(name)
            if not path.exists():
                pytest.skip(f"{path} not found")
        _TOKENIZERS[name] = Tokenizer.from_gguf(path)
    return _TOKENIZERS[name]


def stream_pieces(tok: Tokenizer, ids: list[int], special: bool = False) -> list[str]:
    """What each push returned, then what flush returned."""
    dec = tok.stream(special)
    return [dec.push(i) for i in ids] + [dec.flush()]


def missing_bytes(tok: Tokenizer) -> set[int]:
    """Bytes a byte-level BPE vocabulary has no token for: llama.cpp drops them when
    encoding, so such text cannot come back. Bytes that never occur in UTF-8 are often
    missing; SmolLM2 also lacks six control characters."""
    if tok.model != "gpt2":
        return set()
    return {b for b in range(256) if tok.token_to_id(BYTE_TO_CHAR[b]) is None}


@pytest.mark.parametrize("name", VOCABS)
def test_stream_equals_decode_for_the_corpus(name: str) -> None:
    tok = tokenizer(name)
    missing = missing_bytes(tok)
    wrong = []
    for text in CORPUS:
        lossless = not missing.intersection(text.encode())
        for add_special in (False, True):
            ids = tok.encode(text, add_special=add_special)
            parts = stream_pieces(tok, ids)
            if "".join(parts) != tok.decode(ids) or (lossless and tok.decode(ids) != text):
                wrong.append((text, add_special, "".join(parts), tok.decode(ids)))
            elif any("\ufffd" in p for p in parts) and "\ufffd" not in text:
                wrong.append((text, "broken character emitted"))
    assert wrong == []


@pytest.mark.parametrize("name", VOCABS)
def test_stream_with_special_tokens_rendered(name: str) -> None:
    tok = tokenizer(name)
    for text in CHAT.values():
        ids = tok.encode(text, add_special=False, parse_special=True)
        for special in (False, True):
            assert "".join(stream_pieces(tok, ids, special)) == tok.decode(ids, special)
    # a chat prompt in its own family renders back exactly with special=True
    chat = {
        "qwen2": "qwen2",
        "llama-bpe": "llama-bpe",
        "gemma3": "gemma",
        "smollm2": "smollm",
    }.get(name)
    if chat:
        ids = tok.encode(CHAT[chat], add_special=False, parse_special=True)
        assert tok.decode(ids, special=True) == CHAT[chat]
        assert len(ids) < len(tok.encode(CHAT[chat], add_special=False))  # tokens were parsed


def test_multibyte_character_split_across_byte_fallback_tokens() -> None:
    tok = tokenizer("llama-spm")
    ids = tok.encode("a\U0001f999b", add_special=False)  # llama: no token, four <0xNN> bytes
    names = [tok.id_to_token(i) for i in ids]
    assert names[-5:-1] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]
    parts = stream_pieces(tok, ids)
    assert parts[-6:] == ["", "", "", "\U0001f999", "b", ""]
    assert "".join(parts) == "a\U0001f999b"


def test_multibyte_character_split_across_byte_level_tokens() -> None:
    tok = tokenizer("gpt-2")
    text = "\u5929\u6c14\U0001f999"
    ids = tok.encode(text, add_special=False)
    incomplete = [i for i in ids if not _is_utf8(tok.token_to_piece(i))]
    assert incomplete, "expected tokens holding part of a character"
    parts = stream_pieces(tok, ids)
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)
    emitted = ""
    for p in parts:
        emitted += p
        assert text.startswith(emitted)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("name", ["llama-spm", "gemma3"])
def test_invalid_utf8_decodes_the_same_in_both_paths(name: str) -> None:
    tok = tokenizer(name)
    b = {n: tok.token_to_id(f"<0x{n:02X}>") for n in (0xE2, 0x96, 0xFF, 0x41, 0xC3)}
    word = tok.encode("ok", add_special=False)
    cases = [
        [b[0xE2], b[0x96]],  # truncated at the end
        [b[0xFF], *word],  # invalid start byte
        [*word, b[0xE2], b[0x41], b[0x96]],  # interrupted sequence
        [b[0xC3], b[0xC3], b[0xC3]],
    ]
    for ids in cases:
        full = tok.decode(ids)
        assert "\ufffd" in full
        assert "".join(stream_pieces(tok, ids)) == full
        pieces = b"".join(tok.token_to_piece(i) for i in ids).decode("utf-8", "replace")
        assert full == pieces.removeprefix(" " if tok.add_space_prefix else "")
    dec = tok.stream()
    assert dec.push(b[0xE2]) == "" and dec.push(b[0x96]) == ""  # held, not broken
    assert dec.flush() == "\ufffd"


def test_space_prefix_rules() -> None:
    tok = tokenizer("llama-spm")
    assert tok.add_space_prefix
    hello = tok.encode("Hello", add_special=False)
    assert tok.id_to_token(hello[0]) == "\u2581Hello"
    assert tok.token_to_piece(hello[0]) == b" Hello"
    assert tok.decode(hello) == "Hello"  # the first token loses its space
    assert tok.decode(hello + hello) == "Hello Hello"  # later ones keep it
    assert tok.decode([tok.bos_id, *hello]) == "Hello"  # also right after BOS
    assert "".join(stream_pieces(tok, [tok.bos_id, *hello])) == "Hello"
    assert tok.decode([tok.bos_id, *hello], special=True) == "<s>Hello"
    gemma = tokenizer("gemma3")  # no space prefix: nothing is stripped
    assert not gemma.add_space_prefix
    ids = gemma.encode(" Hello", add_special=False)
    assert gemma.decode(ids) == " Hello" == "".join(stream_pieces(gemma, ids))


def test_smollm2_lacks_one_byte_token() -> None:
    tok = tokenizer("smollm2")
    assert {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D} <= missing_bytes(tok)
    assert tok.decode(tok.encode("a\x1db", add_special=False)) == "ab"
    assert missing_bytes(tokenizer("qwen2")) == set()


def test_decode_accepts_numpy_arrays_and_tuples() -> None:
    tok = tokenizer("qwen2")
    ids = tok.encode("Hello world", add_special=False)
    assert tok.decode(np.array(ids, dtype=np.int32)) == "Hello world"
    assert tok.decode(tuple(ids)) == "Hello world"
    assert tok.decode([]) == ""
    dec = StreamDecoder(tok)
    assert "".join(dec.push(int(i)) for i in np.array(ids)) + dec.flush() == "Hello world"


def test_control_tokens_render_only_with_special() -> None:
    tok = tokenizer("qwen2")
    end = tok.token_to_id("<|im_end|>")
    assert end in tok.eog_ids
    assert tok.token_to_piece(end) == b""
    assert tok.token_to_piece(end, special=True) == b"<|im_end|>"
    ids = tok.encode("Hi<|im_end|>", add_special=False, parse_special=True)
    assert ids[-1] == end
    assert tok.decode(ids) == "Hi"
    assert tok.decode(ids, special=True) == "Hi<|im_end|>"
    # user-defined tokens always render
    pad = tok.token_to_id("[PAD151646]")
    assert tok.decode([pad]) == "[PAD151646]"
