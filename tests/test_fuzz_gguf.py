"""The GGUF loader under random corruption: only ever a clean load or our own error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fuzz_gguf_worker.py")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_header(small_gguf: Path, tmp_path: Path, seed: int) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            str(small_gguf),
            str(tmp_path / "fuzz.gguf"),
            str(seed),
            "1500",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    last = proc.stderr.strip().splitlines()[-5:]
    assert proc.returncode == 0, f"seed {seed}: worker died ({proc.returncode}); last lines: {last}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["rejected"] > 100, counts  # the corruption really is being caught
