"""Meaning fuzzer: well-formed GGUF files whose metadata says absurd things.

The header fuzzer (tests/fuzz_gguf_worker.py) flips bytes; most of what it makes is rejected by
the parser. This one keeps every file well-formed and changes what the metadata *means*: each key
the loader reads (config.py, the tokenizer) is set to 0, -1, 2**31, NaN, 1e-45, 3e38, a 1 MB
string, the wrong type, an array of the wrong length ... or deleted, on a tiny valid model of
every supported architecture. Then come random combinations of two or three such changes and
random byte flips in the metadata region.

Each file is loaded with the CPU backend; if that succeeds a few tokens are prefilled, one is
decoded, (when the file has a tokenizer) a string is tokenized and detokenized, and a few tokens
are generated from the string (or token ids) with sampling. The only
acceptable outcomes are success with finite logits, or a GGUFError / ModelError / RequestError
naming the file and the key at fault. Cases run in worker subprocesses, many per worker: a worker
that dies (segfault, abort) or stops answering (hang) is a failure of its case, and a new worker
takes over.

    python benchmarks/fuzz_meaning.py --cases 100000 --workers 2

tests/test_fuzz_meaning.py runs a seeded sample of the same cases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType as VType

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO / "tests") not in sys.path:
    sys.path.insert(0, str(_REPO / "tests"))

from oracle.tiny_models import (  # noqa: E402
    Metadata,
    MetaValue,
    ModelShape,
    model_metadata,
    random_tensor_plans,
    tiny_vocab,
    vocab_metadata,
)

# --------------------------------------------------------------------------------------------
# Writing GGUF files by hand: any value of any type under any key, and fast enough to write a
# fresh file for every case (the gguf package's writer refuses some of what we want to write).
# --------------------------------------------------------------------------------------------

_FMT: dict[int, str] = {
    VType.UINT8: "<B",
    VType.INT8: "<b",
    VType.UINT16: "<H",
    VType.INT16: "<h",
    VType.UINT32: "<I",
    VType.INT32: "<i",
    VType.FLOAT32: "<f",
    VType.BOOL: "<?",
    VType.UINT64: "<Q",
    VType.INT64: "<q",
    VType.FLOAT64: "<d",
}
_DTYPE: dict[int, str] = {t: f[1:] for t, f in _FMT.items()}
_ALIGN = 32
_HEADER = 24  # magic, version, tensor count, key/value count
F32_TYPE = 0  # GGML_TYPE_F32


def _pack_str(s: str | bytes) -> bytes:
    # bytes stand for text that is not valid UTF-8 (vocabularies may hold such tokens)
    raw = s if isinstance(s, bytes) else s.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw


def _pack_payload(value: Any, vtype: int, sub: int | None) -> bytes:
    if vtype == VType.STRING:
        return _pack_str(value)
    if vtype != VType.ARRAY:
        return struct.pack(_FMT[vtype], value)
    assert sub is not None
    items = list(value)
    head = struct.pack("<IQ", sub, len(items))
    if sub == VType.STRING:
        return head + b"".join(_pack_str(s) for s in items)
    if sub == VType.ARRAY:  # items are (values, element type) pairs
        return head + b"".join(_pack_payload(v, VType.ARRAY, t) for v, t in items)
    return head + np.asarray(items, dtype=_DTYPE[sub]).tobytes()


def pack_kv(key: str, entry: MetaValue) -> bytes:
    value, vtype, sub = entry
    return _pack_str(key) + struct.pack("<I", vtype) + _pack_payload(value, vtype, sub)


@dataclass(frozen=True)
class Base:
    """A tiny valid model: its metadata (key -> (value, type, element type)), and its tensor
    table and data already serialized (they never change; only the metadata does)."""

    name: str
    arch: str
    meta: Metadata
    n_tensors: int
    tensor_table: bytes  # offsets relative to the data section
    data: bytes
    n_vocab: int
    n_layer: int
    n_head: int
    head_dim: int
    n_embd: int

    def file_bytes(self, meta: Metadata) -> tuple[bytes, int, int]:
        """The file with this metadata, and where its key/value section starts and ends."""
        kv = b"".join(pack_kv(k, e) for k, e in meta.items())
        head = b"GGUF" + struct.pack("<IQQ", 3, self.n_tensors, len(meta)) + kv + self.tensor_table
        pad = -len(head) % _ALIGN
        return head + b"\0" * pad + self.data, _HEADER, _HEADER + len(kv)


def _shape(name: str) -> ModelShape:
    common: dict[str, Any] = dict(
        vocab=300, hidden=32, n_layers=2, context_length=256, rms_eps=1e-6, rope_theta=10000.0
    )
    if name in ("llama", "llama-spm"):
        return ModelShape(arch="llama", n_heads=4, n_kv_heads=1, ffn=40, tied=True, **common)
    if name == "qwen2":
        return ModelShape(arch="qwen2", n_heads=4, n_kv_heads=2, ffn=48, tied=False, **common)
    if name == "qwen3":
        return ModelShape(
            arch="qwen3", n_heads=4, n_kv_heads=2, ffn=48, tied=False, head_dim=16, **common
        )
    if name == "gemma3":
        return ModelShape(
            arch="gemma3",
            n_heads=2,
            n_kv_heads=1,
            ffn=48,
            tied=True,
            head_dim=16,
            sliding_window=4,
            rope_theta_local=10000.0,
            final_logit_softcapping=30.0,
            **common,
        )
    raise KeyError(name)


BASE_NAMES = ("qwen2", "llama", "qwen3", "gemma3", "llama-spm")

SPACE = "\u2581"


def _spm_vocab_metadata(n: int) -> Metadata:
    """A SentencePiece ("llama") vocabulary of n tokens: <unk>, <s>, </s>, the 256 byte
    fallbacks, then word pieces with descending scores."""
    words = "the quick brown fox jumps over lazy dog hello world this is a test of it".split()
    pieces = [SPACE + w for w in words] + [w for w in words] + list("abcdefghijklmnopqrstuvwxyz")
    pieces += [SPACE + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    for p in pieces:
        if len(tokens) == n:
            break
        if p not in tokens:
            tokens.append(p)
            types.append(1)
    while len(tokens) < n:
        tokens.append(f"{SPACE}pad{len(tokens)}")
        types.append(1)
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return {
        "tokenizer.ggml.model": ("llama", VType.STRING, None),
        "tokenizer.ggml.tokens": (tokens, VType.ARRAY, VType.STRING),
        "tokenizer.ggml.scores": (scores, VType.ARRAY, VType.FLOAT32),
        "tokenizer.ggml.token_type": (types, VType.ARRAY, VType.INT32),
        "tokenizer.ggml.bos_token_id": (1, VType.UINT32, None),
        "tokenizer.ggml.eos_token_id": (2, VType.UINT32, None),
        "tokenizer.ggml.unknown_token_id": (0, VType.UINT32, None),
        "tokenizer.ggml.add_bos_token": (True, VType.BOOL, None),
        "tokenizer.ggml.add_eos_token": (False, VType.BOOL, None),
    }


@cache
def base(name: str) -> Base:
    shape = _shape(name)
    meta = model_metadata(shape, "F32", name=f"fuzz-{name}")
    if name == "llama-spm":
        meta |= _spm_vocab_metadata(shape.vocab)
    else:
        meta |= vocab_metadata(tiny_vocab(shape.arch, shape.vocab))
    table = bytearray()
    data = bytearray()
    plans = random_tensor_plans(shape, "F32", seed=7, std=0.3)
    for plan in plans:
        values = np.ascontiguousarray(plan.load(), dtype=np.float32)
        dims = tuple(reversed(plan.shape))  # GGML order: the contiguous dimension first
        table += _pack_str(plan.name) + struct.pack("<I", len(dims))
        table += struct.pack(f"<{len(dims)}Q", *dims)
        table += struct.pack("<IQ", F32_TYPE, len(data))
        data += values.tobytes()
        data += b"\0" * (-len(data) % _ALIGN)
    return Base(
        name=name,
        arch=shape.arch,
        meta=meta,
        n_tensors=len(plans),
        tensor_table=bytes(table),
        data=bytes(data),
        n_vocab=shape.vocab,
        n_layer=shape.n_layers,
        n_head=shape.n_heads,
        head_dim=shape.rope_dim,
        n_embd=shape.hidden,
    )


# --------------------------------------------------------------------------------------------
# The keys and what to set them to
# --------------------------------------------------------------------------------------------

# Every key the loader reads: metallic/config.py (architecture keys, without the "<arch>."
# prefix) and metallic/tokenizer/vocab.py. tests/test_fuzz_meaning.py checks this list against
# the sources, so a key added there without being added here fails a test.
ARCH_KEYS: dict[str, str] = {  # key -> kind
    "block_count": "int",
    "context_length": "int",
    "embedding_length": "int",
    "feed_forward_length": "int",
    "vocab_size": "int",
    "attention.head_count": "int",
    "attention.head_count_kv": "int",
    "attention.key_length": "int",
    "attention.value_length": "int",
    "attention.layer_norm_rms_epsilon": "float",
    "attention.scale": "float",
    "attention.sliding_window": "int",
    "attention.sliding_window_pattern": "int",
    "rope.dimension_count": "int",
    "rope.freq_base": "float",
    "rope.freq_base_swa": "float",
    "rope.scaling.type": "str",
    "rope.scaling.factor": "float",
    "rope.scale_linear": "float",
    "final_logit_softcapping": "float",
}
GENERAL_KEYS: dict[str, str] = {
    "general.architecture": "str",
    "general.name": "str",
    "general.alignment": "int",
}
TOKENIZER_IDS = (
    "bos",
    "eos",
    "eot",
    "eom",
    "unknown",
    "seperator",  # sic, llama.cpp's spelling
    "padding",
    "mask",
    "fim_pre",
    "fim_suf",
    "fim_mid",
    "fim_pad",
    "fim_rep",
    "fim_sep",
    "prefix",
    "suffix",
    "middle",
)
TOKENIZER_KEYS: dict[str, str] = {
    "tokenizer.ggml.model": "str",
    "tokenizer.ggml.pre": "str",
    "tokenizer.ggml.tokens": "str_array",
    "tokenizer.ggml.token_type": "int_array",
    "tokenizer.ggml.scores": "float_array",
    "tokenizer.ggml.merges": "str_array",
    "tokenizer.ggml.add_bos_token": "bool",
    "tokenizer.ggml.add_eos_token": "bool",
    "tokenizer.ggml.add_space_prefix": "bool",
    **{f"tokenizer.ggml.{name}_token_id": "int" for name in TOKENIZER_IDS},
}
# Keys whose rejection cannot name them: a legal but different general.alignment moves the
# data section, which the reader then reports as misplaced tensors.
UNNAMEABLE = frozenset({"general.alignment"})

HUGE = "x" * (1 << 20)

# name -> value, for the numeric values every key gets
_NUMBERS: dict[str, float] = {
    "0": 0,
    "-1": -1,
    "2^31": 2**31,
    "2^31-1": 2**31 - 1,
    "2^32": 2**32,
    "2^63": 2**63,
    "-2^63": -(2**63),
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "1e-45": 1e-45,
    "3e38": 3e38,
}
GENERIC_VALUES: tuple[str, ...] = (
    "del",
    *(f"n:{k}" for k in _NUMBERS),
    "d:1e300",  # a FLOAT64 that float32 cannot hold
    "d:1e-300",
    "s:huge",
    "s:empty",
    "s:12",
    "i:7",  # an integer where a string (or nothing numeric) belongs
    "b:true",
    "a:scalar",  # a two-element array where a scalar belongs
    "a:wrong",  # an array of the wrong element type
    "a:empty",
    "a:short",
    "a:long",
    "a:nested",
)


def kind_of(key: str, arch: str) -> str:
    if key.startswith(arch + "."):
        return ARCH_KEYS[key[len(arch) + 1 :]]
    return {**GENERAL_KEYS, **TOKENIZER_KEYS}[key]


def keys_of(b: Base) -> list[str]:
    return [f"{b.arch}.{k}" for k in ARCH_KEYS] + list(GENERAL_KEYS) + list(TOKENIZER_KEYS)


def _int_entry(v: int, prefer: int | None = None) -> MetaValue:
    """v under the key's own integer type when it fits, else the smallest type that holds it."""
    ranges = {
        VType.UINT8: (0, 255),
        VType.INT8: (-128, 127),
        VType.UINT16: (0, 65535),
        VType.INT16: (-32768, 32767),
        VType.UINT32: (0, 2**32 - 1),
        VType.INT32: (-(2**31), 2**31 - 1),
        VType.UINT64: (0, 2**64 - 1),
        VType.INT64: (-(2**63), 2**63 - 1),
    }
    if prefer in ranges and ranges[prefer][0] <= v <= ranges[prefer][1]:
        return (v, prefer, None)
    for t in (VType.UINT32, VType.INT32, VType.UINT64, VType.INT64):
        lo, hi = ranges[t]
        if lo <= v <= hi:
            return (v, t, None)
    raise ValueError(v)


def _f32(v: float) -> MetaValue:
    return (v, VType.FLOAT32, None)


def _array(values: list[Any], sub: int) -> MetaValue:
    return (values, VType.ARRAY, sub)


def _scalar_type(kind: str) -> int:
    return {"int": VType.UINT32, "float": VType.FLOAT32, "str": VType.STRING}.get(kind, VType.BOOL)


def _element_type(kind: str) -> int:
    return {"str_array": VType.STRING, "int_array": VType.INT32, "float_array": VType.FLOAT32}[kind]


def _sample_of(t: int) -> Any:
    return {VType.STRING: "a", VType.FLOAT32: 1.5, VType.BOOL: True}.get(t, 1)


def generic_entry(b: Base, key: str, name: str) -> MetaValue | None:
    """The value `name` (one of GENERIC_VALUES) for `key`; None deletes the key."""
    kind = kind_of(key, b.arch)
    orig = b.meta.get(key)
    is_array = kind.endswith("_array")
    if name == "del":
        return None
    if name.startswith("n:"):
        v = _NUMBERS[name[2:]]
        if kind == "float" and not (isinstance(v, int) and abs(v) >= 2**63):
            return _f32(float(v))
        if isinstance(v, float):
            return _f32(v)
        return _int_entry(int(v), orig[1] if orig else VType.UINT32)
    if name.startswith("d:"):
        return (float(name[2:]), VType.FLOAT64, None)
    if name == "s:huge":
        return (HUGE, VType.STRING, None)
    if name == "s:empty":
        return ("", VType.STRING, None)
    if name == "s:12":
        return ("12", VType.STRING, None)
    if name == "i:7":
        return (7, VType.UINT32, None)
    if name == "b:true":
        return (True, VType.BOOL, None)
    elem = _element_type(kind) if is_array else _scalar_type(kind)
    length = len(orig[0]) if (is_array and orig) else (b.n_vocab if is_array else 2)
    if name == "a:scalar":
        return _array([_sample_of(elem)] * 2, elem)
    if name == "a:wrong":
        wrong = VType.INT32 if elem in (VType.STRING, VType.FLOAT32) else VType.STRING
        return _array([_sample_of(wrong)] * length, wrong)
    if name == "a:empty":
        return _array([], elem)
    if name in ("a:short", "a:long"):
        items = list(orig[0]) if (is_array and orig) else [_sample_of(elem)] * 2
        if name == "a:short":
            return _array(items[:-1], elem)
        extra = {VType.STRING: "zq zq" if "merges" in key else "<extra>"}.get(elem, items[-1])
        return _array([*items, extra], elem)
    if name == "a:nested":
        return _array([([1, 2], VType.UINT32), ([3], VType.UINT32)], VType.ARRAY)
    raise KeyError(name)


def _tokens(b: Base) -> list[str]:
    return list(b.meta["tokenizer.ggml.tokens"][0])


def special_entries(b: Base, key: str) -> dict[str, MetaValue | None]:
    """Values that mean something for this key in particular: off-by-one sizes, shapes that
    disagree with the tensors, other architectures' and tokenizers' names, boundary floats."""
    arch, n, L = b.arch, b.n_vocab, b.n_layer
    hd, H, d = b.head_dim, b.n_head, b.n_embd
    suffix = key[len(arch) + 1 :] if key.startswith(arch + ".") else None
    out: dict[str, MetaValue | None] = {}

    def ints(*vs: int) -> None:
        for v in vs:
            out[f"x:{v}"] = _int_entry(v)

    def floats(*vs: float) -> None:
        for v in vs:
            out[f"x:{v:g}"] = _f32(v)

    def strs(*vs: str) -> None:
        for v in vs:
            out[f"x:{v}"] = (v, VType.STRING, None)

    if key == "general.architecture":
        strs(*(a for a in ("qwen2", "llama", "qwen3", "gemma3") if a != arch), "gemma2", "QWEN2")
    elif key == "general.alignment":
        # Not 1 to 16: a smaller legal alignment than the file was written with moves the data
        # section onto the padding before it, and the weights read from there are garbage that
        # no metadata check can tell from real weights.
        ints(64, 3, 48)
    elif suffix == "block_count":
        ints(1, L - 1, L + 1, 1_000_000)
    elif suffix == "embedding_length":
        ints(d // 2, d + 1, 2 * d)
    elif suffix == "feed_forward_length":
        ints(1, 47, 49)
    elif suffix == "context_length":
        ints(1, 63, 64, 65)
    elif suffix == "vocab_size":
        ints(n - 1, n, n + 1)
    elif suffix == "attention.head_count":
        ints(1, 3, H // 2, 2 * H, d, d + 1)
    elif suffix == "attention.head_count_kv":
        ints(1, 3, H, 2 * H)
    elif suffix in ("attention.key_length", "attention.value_length"):
        ints(1, hd // 2, hd - 1, hd + 1, 2 * hd)
    elif suffix == "rope.dimension_count":
        ints(1, 2, hd - 1, hd - 2, hd + 2)
    elif suffix == "attention.sliding_window":
        ints(1, 2, 63, 64, 65)
    elif suffix == "attention.sliding_window_pattern":
        ints(1, 2, 6, 7)
        out["x:all-global"] = _array([False] * L, VType.BOOL)
        out["x:all-local"] = _array([True] * L, VType.BOOL)
        out["x:bools-short"] = _array([True] * (L - 1), VType.BOOL)
        out["x:bools-long"] = _array([True] * (L + 1), VType.BOOL)
        out["x:int32s"] = _array([1, 0] * (L // 2) + [1] * (L % 2), VType.INT32)
        out["x:floats"] = _array([1.0] * L, VType.FLOAT32)
        out["x:strings"] = _array(["1"] * L, VType.STRING)
    elif suffix in ("rope.freq_base", "rope.freq_base_swa"):
        floats(0.5, 1.0, 1.5, 1e10, 1e30, 3.4e38, -10000.0, 1e-38)
    elif suffix in ("rope.scaling.factor", "rope.scale_linear"):
        floats(0.5, 4.0, 1e-30, 1e30, 1e-38, -4.0)
    elif suffix == "rope.scaling.type":
        strs("linear", "none", "yarn", "LINEAR")
    elif suffix == "attention.scale":
        floats(1e-3, 0.125, 1.0, 100.0, 1e3, 1e4, -0.125, 1e-38)
    elif suffix == "attention.layer_norm_rms_epsilon":
        floats(1e-12, 1e-30, 0.5, 0.999, 1.0, 2.0, 1e-38)
    elif suffix == "final_logit_softcapping":
        floats(1e-30, 1.0, 30.0, -30.0, 1e30, 1e-38)
    elif key == "tokenizer.ggml.model":
        strs("llama", "gpt2", "gemma4", "bert", "none", "no_vocab")
    elif key == "tokenizer.ggml.pre":
        strs("default", "llama-bpe", "qwen2", "gpt-2", "kimi-k2", "tekken", "gemma4", "nope")
    elif key == "tokenizer.ggml.tokens":
        tokens = _tokens(b)
        out["x:all-empty"] = _array([""] * n, VType.STRING)
        out["x:all-same"] = _array(["a"] * n, VType.STRING)
        out["x:all-eog"] = _array(["<|im_end|>"] * n, VType.STRING)
        out["x:bad-utf8"] = _array([b"\xff\xfe" + bytes([i % 256]) for i in range(n)], VType.STRING)
        out["x:huge-token"] = _array([HUGE, *tokens[1:]], VType.STRING)
        out["x:byte-names"] = _array([f"<0x{i % 256:02X}>" for i in range(n)], VType.STRING)
        out["x:reversed"] = _array(tokens[::-1], VType.STRING)
        out["x:2n"] = _array(tokens * 2, VType.STRING)
    elif key == "tokenizer.ggml.token_type":
        for t in (-1, 0, 2, 3, 4, 5, 6, 7, 99):
            out[f"x:all-{t}"] = _array([t] * n, VType.INT32)
        out["x:uint8"] = _array([1] * n, VType.UINT8)
        out["x:int64"] = _array([1] * n, VType.INT64)
        out["x:float32"] = _array([1.0] * n, VType.FLOAT32)
        out["x:bool"] = _array([True] * n, VType.BOOL)
    elif key == "tokenizer.ggml.scores":
        for v in (math.nan, math.inf, -math.inf, 3e38, 0.0):
            out[f"x:all-{v:g}"] = _array([v] * n, VType.FLOAT32)
        out["x:float64"] = _array([0.5] * n, VType.FLOAT64)
        out["x:int32"] = _array(list(range(n)), VType.INT32)
        out["x:bool"] = _array([True] * n, VType.BOOL)
    elif key == "tokenizer.ggml.merges":
        tokens = _tokens(b)
        out["x:no-space"] = _array(["ab", "cd"], VType.STRING)
        out["x:three"] = _array(["a b c", " a b", "a  b", " "], VType.STRING)
        out["x:unknown-symbols"] = _array(["zz qq", "qq ww"], VType.STRING)
        out["x:bad-utf8"] = _array([b"\xff \xfe", b"a \xc3"], VType.STRING)
        out["x:huge"] = _array([HUGE + " " + HUGE], VType.STRING)
        out["x:all-pairs"] = _array([f"{a} {a}" for a in tokens[:200]], VType.STRING)
        out["x:empty-strings"] = _array([""] * 5, VType.STRING)
    elif key.endswith("_token_id"):
        ints(n - 1, n, 0)
        out["x:int8-neg"] = (-1, VType.INT8, None)
        out["x:int64"] = (1, VType.INT64, None)
        out["x:bool"] = (True, VType.BOOL, None)
        out["x:f32"] = _f32(1.0)
    elif key.startswith("tokenizer.ggml.add_"):
        out["x:false"] = (False, VType.BOOL, None)
        out["x:u8-2"] = (2, VType.UINT8, None)
        out["x:i32--1"] = (-1, VType.INT32, None)
        out["x:f32"] = _f32(1.0)
    return out


def value_names(b: Base, key: str) -> list[str]:
    names = [v for v in GENERIC_VALUES if not (v == "del" and key not in b.meta)]
    return names + list(special_entries(b, key))


def entry_for(b: Base, key: str, name: str) -> MetaValue | None:
    if name.startswith("x:"):
        return special_entries(b, key)[name]
    return generic_entry(b, key, name)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One file: a base model with some keys changed (`muts`: key, value name), or with random
    bytes of its metadata changed (`flips`: a seed). A rejection must name one of `name`."""

    base: str
    muts: tuple[tuple[str, str], ...] = ()
    flips: int | None = None
    name: tuple[str, ...] = ()

    def label(self) -> str:
        if self.flips is not None:
            return f"{self.base}: byte flips (seed {self.flips})"
        return f"{self.base}: " + ", ".join(f"{k}={v}" for k, v in self.muts)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "muts": self.muts, "flips": self.flips, "name": self.name}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Case:
        return Case(
            base=d["base"],
            muts=tuple((k, v) for k, v in d["muts"]),
            flips=d["flips"],
            name=tuple(d["name"]),
        )


def single_cases(bases: Iterable[str] = BASE_NAMES) -> list[Case]:
    """Every key of every base set to every value, once; plus the scaling factors with linear
    scaling switched on (without it they are never read)."""
    out: list[Case] = []
    for bn in bases:
        b = base(bn)
        for key in keys_of(b):
            for v in value_names(b, key):
                out.append(Case(bn, ((key, v),), name=(key,)))
        scaling_type = f"{b.arch}.rope.scaling.type"
        factor = f"{b.arch}.rope.scaling.factor"
        for v in value_names(b, factor):
            out.append(Case(bn, ((scaling_type, "x:linear"), (factor, v)), name=(factor,)))
    return out


def combo_case(seed: int, index: int, bases: tuple[str, ...] = BASE_NAMES) -> Case:
    rng = random.Random(f"combo:{seed}:{index}")
    bn = rng.choice(bases)
    b = base(bn)
    keys = rng.sample(keys_of(b), rng.choice((2, 2, 3)))
    muts = []
    for k in keys:
        names = value_names(b, k)
        # Mostly the key's own plausible values: most generic ones are rejected on their own,
        # and what combinations add is values that pass alone and clash together.
        special = [v for v in names if v.startswith("x:")]
        muts.append((k, rng.choice(special if special and rng.random() < 0.7 else names)))
    return Case(bn, tuple(muts), name=tuple(keys))


def flip_case(seed: int, index: int, bases: tuple[str, ...] = BASE_NAMES) -> Case:
    rng = random.Random(f"flip:{seed}:{index}")
    return Case(rng.choice(bases), flips=rng.getrandbits(48))


def all_cases(total: int, seed: int = 0) -> Iterator[Case]:
    """Every single-key case, then combinations and byte flips (three to two) up to `total`."""
    singles = single_cases()
    yield from singles[:total]
    for i in range(max(0, total - len(singles))):
        yield combo_case(seed, i) if i % 5 < 3 else flip_case(seed, i)


def case_file(case: Case) -> bytes:
    b = base(case.base)
    meta = dict(b.meta)
    for key, name in case.muts:
        entry = entry_for(b, key, name)
        if entry is None:
            meta.pop(key, None)
        else:
            meta[key] = entry
    data, kv_start, kv_end = b.file_bytes(meta)
    if case.flips is None:
        return data
    rng = random.Random(case.flips)
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(kv_start, kv_end)
        how = rng.randrange(3)
        if how == 0:
            buf[pos] = rng.randrange(256)
        elif how == 1:
            buf[pos] ^= 1 << rng.randrange(8)
        else:  # a plausible-looking number: a length, a count, a type
            n = rng.choice((0, 1, 2, 7, 12, 255, 2**31, 2**32 - 1, rng.getrandbits(64)))
            end = min(pos + 8, kv_end)
            buf[pos:end] = n.to_bytes(8, "little")[: end - pos]
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# Running one case (in a worker)
# --------------------------------------------------------------------------------------------

PROMPT_IDS = [1, 2, 3, 4]
TEXT = "Hello world, héllo <|im_end|> 123 the quick fox"
MAX_MESSAGE = 2000  # a message longer than this quotes a value it should have abbreviated


def exercise(path: Path, case: Case) -> dict[str, str]:
    """Loads and runs one file; returns {"kind", "cls", "stage", "message"}. Kinds: ok,
    rejected, badmessage (an error that does not name the file and the key, or is too long, or
    is not one of the four input-error classes), internal, raw, nonfinite."""
    import metallic
    from metallic.errors import GGUFError, InternalError, MetallicError, ModelError, RequestError

    stage = "load"
    try:
        m = metallic.load(path, backend="cpu", n_ctx=64, threads=1)
        stage = "prefill"
        logits = m.prefill(PROMPT_IDS)
        if not np.isfinite(logits).all():
            return _result("nonfinite", stage, "", f"{int((~np.isfinite(logits)).sum())} bad")
        stage = "decode"
        logits = m.decode(int(np.argmax(logits)))
        if not np.isfinite(logits).all():
            return _result("nonfinite", stage, "", f"{int((~np.isfinite(logits)).sum())} bad")
        prompt = PROMPT_IDS
        if "tokenizer.ggml.model" in m.metadata:  # as generate() decides it has a tokenizer
            stage = "tokenize"
            ids = m.tokenize(TEXT)
            stage = "detokenize"
            m.detokenize(ids)
            # A vocabulary without byte tokens encodes text as nothing (llama.cpp too); and a
            # byte-fallback one takes more tokens than the context holds.
            prompt = ids[:8] or PROMPT_IDS
        # Sampling, end-of-generation ids and streaming detokenization, from an empty cache.
        stage = "generate"
        m.reset()
        for _ in m.generate(prompt, 4, temperature=0.8, seed=0):
            pass
        return _result("ok", stage, "", "")
    except InternalError as e:
        return _result("internal", stage, type(e).__name__, str(e))
    except MetallicError as e:
        msg = str(e)
        cls = type(e).__name__
        problems = []
        if not isinstance(e, (GGUFError, ModelError, RequestError)):
            problems.append(f"class {cls}")
        if str(path) not in msg:
            problems.append("no file")
        need = [k for k in case.name if k not in UNNAMEABLE]
        if need and len(need) == len(case.name) and not any(f"'{k}'" in msg for k in need):
            problems.append("no key")
        if len(msg) > MAX_MESSAGE:
            problems.append(f"{len(msg)}-char message")
        kind = "badmessage" if problems else "rejected"
        return _result(kind, stage, cls, ("; ".join(problems) + ": " if problems else "") + msg)
    except Exception as e:  # noqa: BLE001  # anything else is what the fuzzer looks for
        return _result("raw", stage, type(e).__name__, str(e))


def _result(kind: str, stage: str, cls: str, message: str) -> dict[str, str]:
    return {"kind": kind, "stage": stage, "cls": cls, "message": message[:600]}


# Bases that make the worker die or stop answering, for the harness's own test.
SELFTEST_CRASH = "selftest-crash"
SELFTEST_HANG = "selftest-hang"


def worker_main(workdir: Path) -> int:
    """Reads cases (JSON lines) from stdin, answers each with one JSON line."""
    import resource

    from metallic import _core

    # A case that allocates without bound is a failure to report, not a reason to swap. Not
    # under the sanitizers: AddressSanitizer reserves terabytes of address space for its shadow
    # memory (and reports unbounded allocations itself).
    if not _core.sanitizers:
        limit = 6 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warnings.simplefilter("ignore")  # "n_ctx exceeds the training context" is not a failure
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the engine prints goes to the log, not into the answers
    path = workdir / f"case-{os.getpid()}.gguf"
    for line in sys.stdin:
        req = json.loads(line)
        case = Case.from_json(req["case"])
        print(f"case {req['id']}: {case.label()[:300]}", file=sys.stderr, flush=True)
        if case.base == SELFTEST_CRASH:
            os.abort()
        if case.base == SELFTEST_HANG:
            time.sleep(3600)
        path.write_bytes(case_file(case))
        res = exercise(path, case)
        out.write(json.dumps({"id": req["id"], **res}) + "\n")
    path.unlink(missing_ok=True)
    return 0


# --------------------------------------------------------------------------------------------
# The pool of workers (in the parent)
# --------------------------------------------------------------------------------------------

FAILURES = ("badmessage", "internal", "raw", "nonfinite", "crash", "hang")


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)  # kind, and "rejected:<class>"
    examples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    restarts: int = 0
    failed: list[tuple[Case, dict[str, str]]] = field(default_factory=list)  # the first 10,000
    results: list[tuple[Case, dict[str, str]]] | None = None  # every outcome, when asked for

    def add(self, case: Case, res: dict[str, str], max_examples: int = 8) -> None:
        if self.results is not None:
            self.results.append((case, res))
        kind = res["kind"]
        self.counts[kind] += 1
        if kind == "rejected":
            self.counts[f"rejected:{res['cls']}"] += 1
        if kind in FAILURES:
            if len(self.failed) < 10_000:
                self.failed.append((case, res))
            sig = f"{kind} {res.get('cls', '')} at {res.get('stage', '')}".strip()
            ex = self.examples.setdefault(sig, [])
            if len(ex) < max_examples:
                ex.append(f"{case.label()[:300]} -> {res['message'][:400]}")

    @property
    def total(self) -> int:
        return sum(self.counts[k] for k in ("ok", "rejected", *FAILURES))

    @property
    def failures(self) -> int:
        return sum(self.counts[k] for k in FAILURES)

    def summary(self) -> str:
        rej = ", ".join(
            f"{k.split(':', 1)[1]} {v}"
            for k, v in sorted(self.counts.items())
            if k.startswith("rejected:")
        )
        lines = [
            f"cases {self.total} in {self.seconds:.0f} s ({self.restarts} worker restarts)",
            f"ok {self.counts['ok']}",
            f"rejected {self.counts['rejected']} ({rej or 'none'})",
            *(f"{k} {self.counts[k]}" for k in FAILURES),
        ]
        for sig, ex in sorted(self.examples.items()):
            lines.append(f"--- {sig}")
            lines += [f"    {e}" for e in ex]
        return "\n".join(lines)


class _Worker:
    def __init__(self, workdir: Path, index: int) -> None:
        self.log = workdir / f"worker-{index}.log"
        self.logf = open(self.log, "ab")  # noqa: SIM115  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.logf,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.buf = b""
        self.case: tuple[int, Case] | None = None
        self.deadline = 0.0

    def send(self, idx: int, case: Case, timeout: float) -> None:
        assert self.proc.stdin is not None
        self.case = (idx, case)
        self.deadline = time.monotonic() + timeout
        self.proc.stdin.write((json.dumps({"id": idx, "case": case.to_json()}) + "\n").encode())
        self.proc.stdin.flush()

    def read(self) -> list[dict[str, Any]] | None:
        """Answers now available; None at end of file (the worker died)."""
        assert self.proc.stdout is not None
        chunk = self.proc.stdout.read()
        if chunk == b"":
            return None
        self.buf += chunk or b""
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in lines if x]

    def log_tail(self, n: int = 4) -> str:
        self.logf.flush()
        lines = self.log.read_bytes().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(x[:200] for x in lines[-n:])

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.poll() is None:
            self.proc.kill()
        elif self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


def run_cases(
    cases: Iterable[Case],
    *,
    workers: int = 2,
    timeout: float = 20.0,
    progress: Callable[[Report], None] | None = None,
    progress_every: float = 30.0,
    keep_results: bool = False,
) -> Report:
    """Runs every case in a pool of worker processes and counts the outcomes (and keeps each
    one in report.results with keep_results)."""
    report = Report(results=[] if keep_results else None)
    t0 = time.monotonic()
    pending = iter(enumerate(cases))
    with tempfile.TemporaryDirectory(prefix="metallic-fuzz-", dir=_scratch()) as tmp:
        workdir = Path(tmp)
        pool: list[_Worker] = []
        sel = selectors.DefaultSelector()

        def start(i: int) -> _Worker:
            w = _Worker(workdir, i)
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)  # type: ignore[arg-type]
            return w

        def feed(w: _Worker) -> bool:
            nxt = next(pending, None)
            if nxt is None:
                w.case = None
                return False
            w.send(nxt[0], nxt[1], timeout)
            return True

        def replace(w: _Worker, kind: str, message: str) -> _Worker:
            assert w.case is not None
            report.add(w.case[1], {"kind": kind, "stage": "", "cls": "", "message": message})
            sel.unregister(w.proc.stdout)
            w.stop(kill=True)
            report.restarts += 1
            nw = start(pool.index(w))
            pool[pool.index(w)] = nw
            return nw

        for i in range(workers):
            pool.append(start(i))
        busy = sum(feed(w) for w in pool)
        last = time.monotonic()
        while busy:
            now = time.monotonic()
            wait = min(w.deadline for w in pool if w.case) - now
            for key, _ in sel.select(timeout=max(0.0, min(wait, 1.0))):
                w = key.data
                if w not in pool or w.case is None:
                    continue
                answers = w.read()
                if answers is None:
                    code = w.proc.wait()
                    nw = replace(w, "crash", f"worker exit {code}; log: {w.log_tail()}")
                    busy -= 1
                    busy += feed(nw)
                    continue
                for ans in answers:
                    assert w.case is not None and ans["id"] == w.case[0]
                    report.add(w.case[1], ans)
                    busy -= 1
                    busy += feed(w)
            now = time.monotonic()
            for w in list(pool):
                if w.case is not None and now > w.deadline:
                    nw = replace(w, "hang", f"no answer in {timeout:g} s; log: {w.log_tail(1)}")
                    busy -= 1
                    busy += feed(nw)
            report.seconds = now - t0
            if progress and now - last > progress_every:
                progress(report)
                last = now
        for w in pool:
            sel.unregister(w.proc.stdout)
            w.stop()
    report.seconds = time.monotonic() - t0
    return report


def _scratch() -> str | None:
    # Every case writes a file; tmpfs keeps that off the disk.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker)

    def show(r: Report) -> None:
        print(
            f"[{r.seconds:6.0f} s] {r.total} cases, {r.failures} failures, "
            f"ok {r.counts['ok']}, rejected {r.counts['rejected']}",
            flush=True,
        )

    report = run_cases(
        all_cases(args.cases, args.seed),
        workers=args.workers,
        timeout=args.timeout,
        progress=show,
    )
    print(report.summary(), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
