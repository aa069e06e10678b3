"""The Metal backend against the device's limits (on the simulator, whose limits the tests set):
long passes split into several command buffers, the first part of a pass committed early, the
recommended working set, the largest buffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import metallic
from metallic.errors import RequestError


def _prefill(path: Path, ids: list[int]) -> tuple[np.ndarray, dict[str, int]]:
    model = metallic.load(path, backend="metal-sim", n_ctx=64)
    model.reset_gpu_stats()
    logits = model.prefill(ids).copy()
    return logits, model.gpu_stats()


def test_a_long_pass_is_split_into_command_buffers(
    small_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = list(range(1, 41))
    monkeypatch.setenv("METALLIC_GPU_EARLY_COMMIT", "0")
    whole, stats = _prefill(small_gguf, ids)
    assert stats["command_buffers"] == stats["waits"] == stats["syncs"] == 1
    # A threshold below one layer's work: a command buffer every op or two.
    monkeypatch.setenv("METALLIC_GPU_COMMIT_WORK", "100000")
    split, stats = _prefill(small_gguf, ids)
    assert stats["command_buffers"] > 10
    assert stats["waits"] == stats["command_buffers"]  # sync() waits for every one
    assert stats["syncs"] == 1  # ... in one go
    np.testing.assert_array_equal(split, whole)


# kEarlyCommitDispatches in cpp/metal/metal_backend.cpp
EARLY_COMMIT_DISPATCHES = 16


def test_the_first_part_of_a_pass_is_committed_early(
    small_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command buffer after a sync goes to the GPU once it holds 16 dispatches, so the
    GPU starts while the host encodes the rest; the rest is one more command buffer, the host
    waits once, and the logits are those of one command buffer."""
    ids = list(range(1, 41))
    early, stats = _prefill(small_gguf, ids)
    assert stats["dispatches"] > EARLY_COMMIT_DISPATCHES
    assert (stats["command_buffers"], stats["syncs"]) == (2, 1)
    monkeypatch.setenv("METALLIC_GPU_EARLY_COMMIT", "0")
    whole, stats = _prefill(small_gguf, ids)
    assert (stats["command_buffers"], stats["syncs"]) == (1, 1)
    np.testing.assert_array_equal(early, whole)
    # A pass of fewer dispatches (this model's decode step) stays one command buffer.
    monkeypatch.delenv("METALLIC_GPU_EARLY_COMMIT")
    model = metallic.load(small_gguf, backend="metal-sim", n_ctx=64)
    model.prefill(list(range(1, 30)))
    model.reset_gpu_stats()
    model.decode(5)
    stats = model.gpu_stats()
    assert stats["dispatches"] <= EARLY_COMMIT_DISPATCHES
    assert stats["command_buffers"] == stats["waits"] == stats["syncs"] == 1


def test_past_the_recommended_working_set_warns(
    small_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = metallic.load(small_gguf, backend="metal-sim", n_ctx=64)
    resident = model.gpu_stats()["resident_bytes"]
    assert resident > small_gguf.stat().st_size // 2  # the weights are in it
    monkeypatch.setenv("METALLIC_SIM_WORKING_SET", str(resident - 1))
    with pytest.warns(RuntimeWarning, match="recommendedMaxWorkingSetSize"):
        metallic.load(small_gguf, backend="metal-sim", n_ctx=64)
    monkeypatch.setenv("METALLIC_SIM_WORKING_SET", str(2 * resident))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metallic.load(small_gguf, backend="metal-sim", n_ctx=64)


def test_a_cache_larger_than_a_buffer_is_refused(
    small_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 layers x 2 kv heads x 16 dims x 2 bytes = 128 bytes a position and sequence
    monkeypatch.setenv("METALLIC_SIM_MAX_BUFFER_LENGTH", str(1 << 20))
    with pytest.raises(RequestError, match="largest buffer"):
        metallic.load(small_gguf, backend="metal-sim", n_ctx=256, n_seq=64)


def test_independent_products_run_between_the_same_barriers(
    small_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The encoder is concurrent: a barrier before every dispatch but the first, except between
    products of one input by several matrices (a prompt's q, k and v GEMMs, its gate and up
    GEMMs: 3 per layer). The simulator runs the dispatches between two barriers last to first,
    so the logits' agreement with the CPU elsewhere shows no barrier is missing."""
    monkeypatch.setenv("METALLIC_GPU_EARLY_COMMIT", "0")
    model = metallic.load(small_gguf, backend="metal-sim", n_ctx=64)
    model.reset_gpu_stats()
    model.prefill(list(range(1, 41)))
    s = model.gpu_stats()
    assert s["command_buffers"] == 1
    assert s["dispatches"] - 1 - s["encoder_barriers"] == 3 * model.config.n_layer
    model.reset_gpu_stats()
    model.decode(5)  # the fused decode kernels: one dispatch per product already
    s = model.gpu_stats()
    assert s["encoder_barriers"] == s["dispatches"] - 1
