"""A local wheelhouse standing in for PyPI: `pull` runs `pip download`, which honours
PIP_NO_INDEX and PIP_FIND_LINKS, so the tests serve it wheels from a folder instead."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest


def write_wheel(folder: Path, requirement: str, members: dict[str, Path | bytes]) -> Path:
    """A minimal valid wheel for ``requirement`` ("dist==version") holding ``members``
    (path in the wheel -> a file to copy, or the bytes)."""
    dist, version = requirement.split("==")
    stem = f"{dist.replace('-', '_')}-{version}"
    wheel = folder / f"{stem}-py3-none-any.whl"
    info = f"{stem}.dist-info"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            if isinstance(data, Path):
                with open(data, "rb") as src, zf.open(name, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
            else:
                zf.writestr(name, data)
        zf.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: metallic-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def use_wheelhouse(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Points pip (in this process's children) at ``folder`` alone."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
