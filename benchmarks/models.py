"""The benchmark model: Qwen2.5-0.5B's shape with random weights, as F16 and Q8_0 GGUF files.

Speed does not depend on the weights' values, so the file is generated rather than downloaded:
every tensor is drawn with numpy (std 0.02, norms around 1) and written straight away by the
oracle's streaming writer (tests/oracle/tiny_models.py), so building needs about 1.5 GB of RAM
and no transformers. It has Qwen2.5-0.5B's real tokenizer (tokenizer.* metadata copied from
shared/tokenizer/ggml-vocab-qwen2.gguf), so it is a complete model that llama.cpp and the
engine load like any Qwen2 GGUF.

Files are cached in bench/ of the test cache (tests/paths.py), keyed by the shape, the seed and
the writer's fingerprint. Prebuild with ``python benchmarks/models.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import gguf

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO / "tests") not in sys.path:
    sys.path.insert(0, str(_REPO / "tests"))

from oracle.tiny_models import (  # noqa: E402
    FTYPES,
    Metadata,
    ModelShape,
    model_metadata,
    random_tensor_plans,
    write_tensors,
    writer_fingerprint,
)
from paths import cache_dir, shared_dir  # noqa: E402

QWEN25_05B = ModelShape(
    arch="qwen2",
    vocab=151936,
    hidden=896,
    n_layers=24,
    n_heads=14,
    n_kv_heads=2,
    ffn=4864,
    context_length=32768,
    rope_theta=1_000_000.0,
    rms_eps=1e-6,
    tied=True,
)
BENCH_FTYPES = ("F16", "Q8_0")
SEED = 0
# Small like a trained model's weights: activations stay in F16 range across 24 layers.
STD = 0.02
_TOKENIZER_FILE = "ggml-vocab-qwen2.gguf"


def bench_cache_dir() -> Path:
    return cache_dir("bench")


def tokenizer_source() -> Path:
    """ggml-vocab-qwen2.gguf of the shared data sets (tests/paths.py)."""
    path = shared_dir() / "tokenizer" / _TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (set METALLIC_SHARED to the shared/ folder)")
    return path


def tokenizer_metadata(path: Path, vocab: int) -> Metadata:
    """Every tokenizer.* key of a GGUF file, with its stored types."""
    reader = gguf.GGUFReader(path)
    meta: Metadata = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        meta[key] = (field.contents(), vtype, sub_type)
    n_tokens = len(meta["tokenizer.ggml.tokens"][0])
    if n_tokens != vocab:
        # llama.cpp requires one token per row of token_embd.
        raise ValueError(f"{path} has {n_tokens} tokens, the model {vocab}")
    return meta


def _key(ftype: str) -> str:
    tok = tokenizer_source()
    payload = json.dumps(
        {
            "shape": asdict(QWEN25_05B),
            "ftype": ftype,
            "seed": SEED,
            "std": STD,
            "writer": writer_fingerprint(),
            "tokenizer": hashlib.sha256(tok.read_bytes()).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_bench_model(path: Path, ftype: str) -> Path:
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, got {ftype!r}")
    meta = model_metadata(QWEN25_05B, ftype, name="Qwen2.5-0.5B-shape random") | (
        tokenizer_metadata(tokenizer_source(), QWEN25_05B.vocab)
    )
    return write_tensors(path, meta, random_tensor_plans(QWEN25_05B, ftype, seed=SEED, std=STD))


def bench_model(ftype: str = "Q8_0") -> Path:
    """Path of the cached benchmark model in this file type, built on first use."""
    path = bench_cache_dir() / f"qwen2.5-0.5b-shape-random-{ftype}-{_key(ftype)}.gguf"
    if not path.exists():
        build_bench_model(path, ftype)
    return path


def benchmark_models() -> dict[str, Callable[[], Path]]:
    """DESIGN.md's four benchmark models by name, each a function giving its file (made or
    fetched once, then cached)."""
    from real_models import gemma3_gguf, smollm2_gguf

    return {
        "qwen2.5-0.5b-shape-F16": lambda: bench_model("F16"),
        "qwen2.5-0.5b-shape-Q8_0": lambda: bench_model("Q8_0"),
        "smollm2-135m-Q4_1": smollm2_gguf,
        "gemma3-270m-Q4_K_M": gemma3_gguf,
    }


def main(argv: list[str]) -> int:
    for ftype in argv or BENCH_FTYPES:
        print(bench_model(ftype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
