"""The Metal backend against the device's limits (on the simulator, whose limits the tests set):
long passes split into several command buffers, the recommended working set, the largest buffer.
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
    whole, stats = _prefill(small_gguf, ids)
    assert stats["command_buffers"] == stats["waits"] == 1
    # A threshold below one layer's work: a command buffer every op or two.
    monkeypatch.setenv("METALLIC_GPU_COMMIT_WORK", "100000")
    split, stats = _prefill(small_gguf, ids)
    assert stats["command_buffers"] > 10
    assert stats["waits"] == stats["command_buffers"]  # sync() waits for every one
    np.testing.assert_array_equal(split, whole)


def test_decode_stays_one_command_buffer(small_gguf: Path) -> None:
    model = metallic.load(small_gguf, backend="metal-sim", n_ctx=64)
    model.prefill(list(range(1, 30)))
    model.reset_gpu_stats()
    model.decode(5)
    stats = model.gpu_stats()
    assert stats["command_buffers"] == stats["waits"] == 1


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
