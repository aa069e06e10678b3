"""Tokenizer throughput on English-like prose: encode (cold and warm word cache) and decode.

Run: PYTHONPATH=python python -m pytest benchmarks/bench_tokenizer.py --benchmark-only
MB/s (of UTF-8 text) is in each result's extra_info (--benchmark-json, or -s for a printout).

The prose is generated, not downloaded: sentences of words drawn with a Zipf law from GPT-2's
vocabulary (its whole-word tokens, in rank order), with commas, numbers and paragraphs. About
20,000 distinct words per MB, like real English, so the cold run pays for as many merges as
real text would; the warm run shows the steady state of a long-lived tokenizer.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from metallic.tokenizer import Tokenizer  # noqa: E402
from paths import shared_dir  # noqa: E402

SHARED = shared_dir() / "tokenizer"
SIZE = 1_000_000  # bytes of prose


def _path(name: str) -> Path:
    if name == "gemma3":
        import real_models

        return real_models.gemma3_gguf()
    path = SHARED / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def prose() -> str:
    words_from = Tokenizer.from_gguf(_path("gpt-2"))
    words = [
        t[1:]
        for i in range(words_from.vocab_size)
        if (t := words_from.id_to_token(i)).startswith("\u0120")
        and t[1:].isalpha()
        and t[1:].islower()
    ]
    rng = random.Random(0)
    weights = [1 / (rank + 10) ** 1.1 for rank in range(len(words))]
    out: list[str] = []
    size = 0
    while size < SIZE:
        sentence = rng.choices(words, weights, k=rng.randint(6, 25))
        sentence[0] = sentence[0].capitalize()
        for k in range(1, len(sentence) - 1):
            if rng.random() < 0.08:
                sentence[k] += ","
        if rng.random() < 0.1:
            sentence.insert(rng.randint(1, len(sentence) - 1), str(rng.randint(1, 2024)))
        text = " ".join(sentence) + rng.choice(".?!") + ("\n\n" if rng.random() < 0.15 else " ")
        out.append(text)
        size += len(text)
    return "".join(out)


_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer(name: str) -> Tokenizer:
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = Tokenizer.from_gguf(_path(name))
    return _TOKENIZERS[name]


def _report(benchmark, nbytes: int) -> None:  # type: ignore[no-untyped-def]
    mean = benchmark.stats.stats.mean
    benchmark.extra_info["MB/s"] = round(nbytes / mean / 1e6, 2)
    print(f"\n{benchmark.name}: {nbytes / mean / 1e6:.2f} MB/s")


VOCABS = ["qwen2", "llama-bpe", "llama-spm", "gemma3"]


@pytest.mark.parametrize("name", VOCABS)
def test_encode_cold(benchmark, prose: str, name: str) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer(name)

    def clear() -> None:
        tok._model._cache.clear()  # every word merges again, as in a fresh process

    benchmark.pedantic(tok.encode, args=(prose,), setup=clear, rounds=3, iterations=1)
    _report(benchmark, len(prose.encode()))


@pytest.mark.parametrize("name", VOCABS)
def test_encode_warm(benchmark, prose: str, name: str) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer(name)
    tok.encode(prose)
    benchmark.pedantic(tok.encode, args=(prose,), rounds=3, iterations=1)
    _report(benchmark, len(prose.encode()))


@pytest.mark.parametrize("name", VOCABS)
def test_decode(benchmark, prose: str, name: str) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer(name)
    ids = tok.encode(prose)
    text = benchmark.pedantic(tok.decode, args=(ids,), rounds=5, iterations=1)
    assert text == prose
    _report(benchmark, len(prose.encode()))


@pytest.mark.parametrize("name", ["qwen2", "gemma3"])
def test_stream_decode(benchmark, prose: str, name: str) -> None:  # type: ignore[no-untyped-def]
    tok = tokenizer(name)
    ids = tok.encode(prose[:100_000])

    def run() -> str:
        dec = tok.stream()
        return "".join([dec.push(i) for i in ids]) + dec.flush()

    assert benchmark.pedantic(run, rounds=3, iterations=1) == prose[:100_000]
    _report(benchmark, len(prose[:100_000].encode()))


def test_construction_qwen2(benchmark) -> None:  # type: ignore[no-untyped-def]
    from metallic.gguf_file import read_gguf

    metadata = read_gguf(_path("qwen2")).metadata
    benchmark.pedantic(Tokenizer.from_metadata, args=(metadata,), rounds=3, iterations=1)
