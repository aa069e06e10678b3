"""The real models through every boundary where the engine changes how it works: chunks of the
prefill batch, the CPU attention's key chunks, the sliding window, the end of the context.

These run in the normal suite and, above all, in the sanitizer job (.ci/sanitize), where a
write outside a buffer aborts the process. The first test is the reproducer of a heap
corruption that left the logits right: a prefill that starts before a key-chunk boundary of the
blocked attention and ends after it (505 then 12 tokens) wrote before the scores buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import metallic
from op_cases import nmse
from real_models import gemma3_gguf, smollm2_gguf

pytestmark = pytest.mark.slow

MODELS: dict[str, Callable[[], Path]] = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}


def token_ids(model: metallic.model.Model, n: int) -> list[int]:
    """n ids of ordinary text (repeated as needed), without special tokens."""
    text = "The engine reads the weights in place and streams tokens as they come. " * 64
    ids = model.tokenize(text, add_special=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> metallic.model.Model:
    return metallic.load(MODELS[request.param](), backend="cpu", n_ctx=1024, threads=2)


def chunked(model: metallic.model.Model, ids: list[int], sizes: list[int]) -> np.ndarray:
    """Logits of the last token after prefilling ids in chunks of the given sizes."""
    model.reset()
    done = 0
    for n in sizes:
        logits = model.prefill(ids[done : done + n])
        done += n
    assert done == len(ids)
    return logits.copy()


def whole(model: metallic.model.Model, ids: list[int]) -> np.ndarray:
    model.reset()
    return model.prefill(ids).copy()


# Batches of two or more tokens take one path whatever the split; only the order in which
# attention's key chunks meet a query differs. Measured NMSE against one prefill: 0 (SmolLM2),
# up to 2.2e-8 (Gemma 3).
TOL = 2e-7
# One-token steps run the decode kernels on int8-encoded activations: measured NMSE against the
# prefill of the same tokens 4e-4 to 4.2e-3 (Gemma 3, at any position, window or not).
DECODE_TOL = 2e-2


@pytest.mark.parametrize(
    "sizes",
    [
        [505, 12],  # the reproducer: starts before key chunk 512, ends after it
        [36] * 20,  # twenty prefills of 36 cross 512 (at 504..540) and every 128 before it
        [127, 2, 127, 2],  # each batch straddles a 128-key chunk boundary by one
        [520, 12],  # the case that never triggered it
    ],
    ids=["505+12", "20x36", "straddle128", "520+12"],
)
def test_prefill_across_key_chunks(model: metallic.model.Model, sizes: list[int]) -> None:
    ids = token_ids(model, sum(sizes))
    got, want = chunked(model, ids, sizes), whole(model, ids)
    assert nmse(got, want) < TOL


def test_prefill_batches_and_decode_through_the_sliding_window(model: metallic.model.Model) -> None:
    # Gemma 3's local layers see 512 positions; prefill in batches of 64 (every multiple of the
    # batch) past it, then decode one token at a time across another window boundary.
    n = 640
    ids = token_ids(model, n + 8)
    small = metallic.load(model.path, backend="cpu", n_ctx=1024, threads=2, max_batch=64)
    got = chunked(small, ids[:n], [n])
    assert nmse(got, whole(model, ids[:n])) < TOL
    for i in range(n, n + 8):
        got = small.decode(ids[i]).copy()
    assert nmse(got, whole(model, ids)) < DECODE_TOL


def test_fill_the_context_exactly(model: metallic.model.Model) -> None:
    small = metallic.load(model.path, backend="cpu", n_ctx=160, threads=2, max_batch=48)
    ids = token_ids(model, 160)
    small.prefill(ids[:150])
    for i in range(150, 160):
        logits = small.decode(ids[i])
    assert small.n_past == 160 and np.isfinite(logits).all()
    with pytest.raises(metallic.ContextError):
        small.decode(ids[0])
    assert small.n_past == 160
