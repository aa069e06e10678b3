"""What a user sees around the commands: --version, the program's name in usage lines, the
package's public names, inspect's labels, the timing line and its JSON, --stop escapes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import metallic
from metallic.cli_options import escaped_text
from oracle.tiny_models import tiny_gguf


@pytest.fixture(scope="module")
def model_path() -> Path:
    return tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]


def run(*args: str, prog: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prog or [sys.executable, "-m", "metallic"]), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version_names_the_distribution_and_the_build() -> None:
    out = run("--version")
    assert out.returncode == 0
    line = out.stdout.strip()
    assert "\n" not in line  # one line, however narrow the terminal
    assert line.startswith(f"metallic-llm {metallic.__version__} (")
    from metallic import _core

    assert f"CPU kernels: {_core.kernel_isa()}" in line


def test_version_is_written_once() -> None:
    # pyproject.toml takes the version from __init__.py (scikit-build-core's regex provider);
    # the installed distribution's metadata must agree with it.
    from importlib.metadata import version

    assert version("metallic-llm") == metallic.__version__
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "\nversion =" not in text


def test_usage_names_the_command_the_user_ran() -> None:
    assert run("generate").stderr.startswith("usage: python -m metallic generate")
    script = shutil.which("metallic", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the metallic console script is not installed beside this Python")
    out = run("generate", prog=[script])
    assert out.stderr.startswith("usage: metallic generate"), out.stderr


def test_public_names_only() -> None:
    assert dir(metallic) == sorted(metallic.__all__)
    assert "Any" not in dir(metallic) and "TYPE_CHECKING" not in dir(metallic)
    for name in metallic.__all__:
        assert hasattr(metallic, name)


def test_inspect_labels_unset_values_and_columns(model_path: Path) -> None:
    out = run("inspect", str(model_path), "--tensors")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split() == ["NAME", "TYPE", "SHAPE", "BYTES"] for line in lines)
    (scale,) = [line for line in lines if line.startswith("attn_scale:")]
    assert scale.split(None, 1)[1] == "unset (1/sqrt(head_dim))"  # not "0.0", as if set
    (softcap,) = [line for line in lines if line.startswith("final_logit_softcap:")]
    assert "unset" in softcap
    info = json.loads(run("inspect", str(model_path), "--json").stdout)
    assert info["model"]["attn_scale"] is None and info["model"]["final_logit_softcap"] is None
    assert info["model"]["rope_base"] > 0


def test_timing_line_and_json_give_load_time_and_first_token(model_path: Path) -> None:
    args = ("generate", "-m", str(model_path), "--prompt-ids", "5,6,7", "-n", "4", "--temp", "0")
    out = run(*args)
    (line,) = [s for s in out.stderr.splitlines() if s.startswith("prompt:")]
    for part in (
        "prompt: 3 tokens (0 cached)",
        "first token:",
        "decode: 4 tokens",
        "load:",
        "peak",
    ):
        assert part in line, line
    data = json.loads(run(*args, "--output-format", "json").stdout)
    assert 0 < data["first_token_seconds"] < 60 and 0 < data["load_seconds"] < 60


def test_first_token_time_covers_tokenizing_and_prefill(model_path: Path) -> None:
    model = metallic.load(model_path, n_ctx=64)
    assert model.load_seconds > 0
    list(model.generate("hello world", max_tokens=3, temperature=0))
    s = model.last_stats
    assert s.first_token_seconds >= s.tokenize_seconds + s.prompt_seconds > 0
    assert str(s).startswith(f"prompt: {s.prompt_tokens} tokens (0 cached) at ")
    assert "first token:" in str(s) and f"stop: {s.stop_reason}" in str(s)


@pytest.mark.parametrize(
    ("text", "want"),
    [("\\n", "\n"), ("a\\tb", "a\tb"), ("\\\\n", "\\n"), ("\\x", "\\x"), ("end\\", "end\\")],
)
def test_stop_escapes(text: str, want: str) -> None:
    assert escaped_text(text) == want
