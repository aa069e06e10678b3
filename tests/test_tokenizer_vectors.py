"""llama.cpp's test-tokenizer-0 vectors: exact ids for five vocabulary families, both ways."""

from __future__ import annotations

import time

import pytest

from data.tokenizer_corpus import FAMILIES, load_vectors, vocab_path
from metallic.tokenizer import Tokenizer

_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(family: str) -> Tokenizer:
    if family not in _TOKENIZERS:
        path = vocab_path(family)
        if not path.exists():
            pytest.skip(f"shared tokenizer vectors not found at {path}")
        _TOKENIZERS[family] = Tokenizer.from_gguf(path)
    return _TOKENIZERS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_matches_vectors(family: str) -> None:
    tok = tokenizer(family)
    vectors = load_vectors(family)
    assert len(vectors) == 46  # the loader found every case
    wrong = [
        (text, tok.encode(text, add_special=False), ids)
        for text, ids in vectors
        if tok.encode(text, add_special=False) != ids
    ]
    assert wrong == []


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_gives_the_text_back(family: str) -> None:
    tok = tokenizer(family)
    wrong = [
        (text, tok.decode(ids)) for text, ids in load_vectors(family) if tok.decode(ids) != text
    ]
    assert wrong == []


# add_bos per family: llama.cpp's defaults (SentencePiece, Llama 3) or the file's flag
ADD_BOS = {"qwen2": False, "llama-bpe": True, "gpt-2": False, "starcoder": False, "llama-spm": True}


@pytest.mark.parametrize("family", FAMILIES)
def test_add_special_adds_bos_as_the_vocabulary_asks(family: str) -> None:
    tok = tokenizer(family)
    assert tok.add_bos is ADD_BOS[family]
    assert tok.add_eos is False
    for text, ids in load_vectors(family)[:12]:
        expected = ([tok.bos_id] if ADD_BOS[family] else []) + ids
        assert tok.encode(text) == expected
        assert tok.decode(expected) == text  # BOS renders as nothing, the space rule holds


def test_construction_is_fast() -> None:
    from metallic.gguf_file import read_gguf

    path = vocab_path("qwen2")
    if not path.exists():
        pytest.skip("shared vectors missing")
    metadata = read_gguf(path).metadata
    start = time.perf_counter()
    tok = Tokenizer.from_metadata(metadata)
    elapsed = time.perf_counter() - start
    assert tok.vocab_size == 151_936
    assert elapsed < 2.0, f"building a 152k-token tokenizer took {elapsed:.2f} s"


@pytest.mark.parametrize("family", ["qwen2", "llama-spm"])
def test_long_unbroken_inputs_stay_fast(family: str) -> None:
    """Words or SentencePiece parts of 50,000 characters merge with a heap, not by rescanning
    every pair after each merge (which would take minutes)."""
    tok = tokenizer(family)
    for text in ["a" * 50_000, "\u4e2d\u6587" * 25_000, "\n" * 50_000, "<|im_end|>" * 5_000]:
        start = time.perf_counter()
        ids = tok.encode(text, add_special=False, parse_special=True)
        assert time.perf_counter() - start < 5.0
        assert tok.decode(ids, special=True) == text
