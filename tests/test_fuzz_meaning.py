"""Well-formed files whose metadata means nonsense: a clean load with finite logits, or a
GGUFError / ModelError naming the file and the key; never a crash, a hang, a raw Python
exception or NaN. The fuzzer itself is benchmarks/fuzz_meaning.py (which runs 100,000+ cases);
this runs a seeded sample of it, and the regressions it found, one by one."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic import GGUFError, ModelError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fuzz_meaning as fm  # noqa: E402
from fuzz_meaning import Case  # noqa: E402

SEED = 1234
VALUES_PER_KEY = 10  # of about 30: every key of every architecture, in a different mix per seed


def ci_cases() -> list[Case]:
    rng = random.Random(SEED)
    cases: list[Case] = []
    for bn in fm.BASE_NAMES:
        b = fm.base(bn)
        for key in fm.keys_of(b):
            names = fm.value_names(b, key)
            cases += [Case(bn, ((key, v),), name=(key,)) for v in rng.sample(names, VALUES_PER_KEY)]
    cases += [fm.combo_case(SEED, i) for i in range(600)]
    cases += [fm.flip_case(SEED, i) for i in range(400)]
    return cases


def test_fuzz_meaning_sample() -> None:
    cases = ci_cases()
    assert len(cases) > 3000
    report = fm.run_cases(cases, workers=2, timeout=60)
    assert report.failures == 0, report.summary()
    assert report.total == len(cases)
    # Both outcomes really happen: the sample is not all rejected at the first key.
    assert report.counts["ok"] > 300 and report.counts["rejected"] > 1500, report.summary()


@pytest.mark.parametrize("name", fm.BASE_NAMES)
def test_base_models_run(name: str, tmp_path: Path) -> None:
    """The unchanged files load, give finite logits and tokenize (so every failure in the fuzz
    comes from the change)."""
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(fm.case_file(Case(name)))
    assert fm.exercise(path, Case(name))["kind"] == "ok"
    m = metallic.load(path, backend="cpu", n_ctx=64, threads=1)
    assert m.tokenizer.vocab_size == m.n_vocab
    assert np.isfinite(m.prefill(m.tokenize("the quick brown fox"))).all()


def _quoted_strings(path: Path, pattern: str) -> set[str]:
    return set(re.findall(pattern, path.read_text()))


def test_every_key_the_loader_reads_is_fuzzed() -> None:
    """A key read in config.py or the tokenizer's vocabulary loading must be in the fuzzer's
    lists, or the fuzzer silently stops covering it."""
    pkg = REPO / "python" / "metallic"
    arch_keys = _quoted_strings(
        pkg / "config.py", r'm\.(?:int|float|str|key)\(\s*"([a-z_.]+)"'
    ) | _quoted_strings(pkg / "config.py", r'\{m\.arch\}\.([a-z_.]+)"')
    assert arch_keys, "the patterns no longer match config.py"
    assert arch_keys <= set(fm.ARCH_KEYS), arch_keys - set(fm.ARCH_KEYS)
    other = _quoted_strings(pkg / "config.py", r'"((?:general|tokenizer)\.[a-z_.]+)"')
    other |= _quoted_strings(pkg / "tokenizer" / "vocab.py", r'"(tokenizer\.ggml\.[a-z_]+)"')
    assert "tokenizer.ggml.bos_token_id" in other
    assert other <= set(fm.GENERAL_KEYS) | set(fm.TOKENIZER_KEYS), (
        other - set(fm.TOKENIZER_KEYS) - set(fm.GENERAL_KEYS)
    )


def test_pool_reports_crashes_and_hangs() -> None:
    """A worker that dies or stops answering is a failure of its case, reported with the key
    and value, and a fresh worker carries on with the rest."""
    crash = Case(fm.SELFTEST_CRASH, (("qwen2.block_count", "n:-1"),))
    hang = Case(fm.SELFTEST_HANG, (("qwen2.rope.freq_base", "n:nan"),))
    fine = [Case(bn) for bn in fm.BASE_NAMES]
    report = fm.run_cases([fine[0], crash, fine[1], hang, *fine[2:]], workers=2, timeout=5)
    assert report.counts["crash"] == 1 and report.counts["hang"] == 1, report.summary()
    assert report.counts["ok"] == len(fine), report.summary()
    assert report.restarts == 2
    text = report.summary()
    assert "qwen2.block_count=n:-1" in text and "worker exit -6" in text, text
    assert "qwen2.rope.freq_base=n:nan" in text, text


# Each found by the fuzzer: before its fix the file loaded and failed later (NaN logits, an
# error at the first tokenize), or loading raised something other than our errors, hung, or
# produced a megabyte-long message. (base, changes, error class, text the message must hold)
REGRESSIONS: list[tuple[str, tuple[tuple[str, str], ...], type[Exception], str]] = [
    # ZeroDivisionError
    ("qwen2", (("qwen2.rope.scale_linear", "n:0"),), ModelError, "'qwen2.rope.scale_linear'"),
    # 2**31 passed the range check, then nanobind refused it ("incompatible function arguments")
    ("llama", (("llama.context_length", "n:2^31"),), ModelError, "'llama.context_length'"),
    ("gemma3", (("gemma3.attention.sliding_window", "n:2^31"),), ModelError, "sliding_window'"),
    # absurd floats that loaded and gave NaN logits
    (
        "qwen2",
        (("qwen2.rope.scaling.type", "x:linear"), ("qwen2.rope.scaling.factor", "n:1e-45")),
        ModelError,
        "'qwen2.rope.scaling.factor'",
    ),
    ("qwen3", (("qwen3.attention.scale", "n:3e38"),), ModelError, "'qwen3.attention.scale'"),
    ("qwen2", (("qwen2.attention.scale", "d:1e300"),), ModelError, "'qwen2.attention.scale'"),
    ("llama", (("llama.rope.scale_linear", "x:1e-38"),), ModelError, "'llama.rope.scale_linear'"),
    ("qwen2", (("qwen2.rope.freq_base", "n:0"),), ModelError, "'qwen2.rope.freq_base'"),
    ("gemma3", (("gemma3.rope.freq_base_swa", "n:-1"),), ModelError, "freq_base_swa'"),
    (
        "qwen2",
        (("qwen2.attention.layer_norm_rms_epsilon", "n:-1"),),
        ModelError,
        "'qwen2.attention.layer_norm_rms_epsilon'",
    ),
    # a tokenizer of another size than the embedding matrix failed generation mid-stream
    ("qwen2", (("tokenizer.ggml.tokens", "a:long"),), ModelError, "has 301 tokens"),
    ("llama-spm", (("tokenizer.ggml.tokens", "a:short"),), ModelError, "token_embd.weight"),
    # a billion layers: looped (a hang) or ran out of memory before any check
    ("qwen2", (("qwen2.block_count", "x:1000000"),), ModelError, "'qwen2.block_count'"),
    ("gemma3", (("gemma3.block_count", "n:2^31-1"),), ModelError, "'gemma3.block_count'"),
    # vocabulary errors surfaced at the first tokenize, without the file's name
    ("qwen2", (("tokenizer.ggml.model", "n:0"),), ModelError, "'tokenizer.ggml.model'"),
    ("llama", (("tokenizer.ggml.bos_token_id", "x:300"),), ModelError, "bos_token_id'"),
    ("llama-spm", (("tokenizer.ggml.scores", "x:bool"),), ModelError, "'tokenizer.ggml.scores'"),
    # arrays where strings belong: ValueError ("truth value of an array") in the tokenizer
    ("qwen2", (("general.name", "a:wrong"),), ModelError, "'general.name'"),
    ("qwen2", (("tokenizer.ggml.pre", "a:wrong"),), ModelError, "'tokenizer.ggml.pre'"),
    (
        "gemma3",
        (("gemma3.attention.sliding_window_pattern", "a:nested"),),
        ModelError,
        "'gemma3.attention.sliding_window_pattern'",
    ),
    # a megabyte string quoted whole in the message
    ("qwen2", (("qwen2.block_count", "s:huge"),), ModelError, "chars)"),
    ("llama", (("general.alignment", "s:huge"),), GGUFError, "'general.alignment'"),
    # True taken as an alignment of 1: weights read from the padding, NaN logits
    ("qwen3", (("general.alignment", "b:true"),), GGUFError, "'general.alignment'"),
    # messages that did not name the key at fault
    ("qwen2", (("general.architecture", "x:llama"),), ModelError, "'general.architecture'"),
    ("qwen2", (("qwen2.embedding_length", "x:16"),), ModelError, "'qwen2.embedding_length'"),
    ("qwen2", (("qwen2.attention.head_count", "x:2"),), ModelError, "head_count'"),
    ("qwen3", (("qwen3.attention.key_length", "del"),), ModelError, "key_length'"),
    ("qwen2", (("qwen2.block_count", "x:3"),), ModelError, "'qwen2.block_count'"),
]


def test_regressions() -> None:
    """Through the worker pool, so that a regression to a hang or a crash fails this test
    instead of taking pytest down."""
    cases = [Case(bn, muts, name=tuple(k for k, _ in muts[-1:])) for bn, muts, _, _ in REGRESSIONS]
    cases.append(Case("llama", flips=159092682357361))  # corrupt length: a 40 kB key in a message
    # A byte token "<0x-7>": ValueError from bytes([-7]) at the first tokenize. llama.cpp reads
    # it as 0xF9, and so do we.
    cases.append(Case("llama-spm", flips=103762597944509))
    report = fm.run_cases(cases, workers=2, timeout=60, keep_results=True)
    assert report.results is not None
    got = dict((c, r) for c, r in report.results)
    problems = []
    for case, (_, _, cls, text) in zip(cases, REGRESSIONS, strict=False):
        res = got[case]
        if res["kind"] != "rejected" or res["cls"] != cls.__name__ or text not in res["message"]:
            problems.append(f"{case.label()}: {res}")
    flip = got[cases[-2]]
    if flip["kind"] != "rejected" or len(flip["message"]) > 400:
        problems.append(f"{cases[-2].label()}: {flip}")
    if got[cases[-1]]["kind"] != "ok":
        problems.append(f"{cases[-1].label()}: {got[cases[-1]]}")
    assert not problems, "\n".join(problems)
