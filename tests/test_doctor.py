"""`python -m metallic doctor`: every line a bug report needs, as text and as JSON, and the GPU
self-test it runs (here on the simulator, with and without a planted kernel bug)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from metallic import _core, selftest
from metallic.cli import main

KEYS = [
    "metallic",
    "python",
    "os",
    "macos",
    "machine",
    "chip",
    "cpu_kernels",
    "logical_cpus",
    "physical_cores",
    "memory",
    "metal",
    "gpu",
    "gpu_family",
    "gpu_limits",
    "metal_library",
    "metal_sim",
    "self_test",
    "auto_backend",
    "numpy",
    "gguf",
    "jinja2",
    "huggingface_hub",
    "environment",
]
SIM = pytest.mark.skipif(not _core.metal_sim_available(), reason="built without the simulator")


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("METALLIC_SIM_SKIP_KERNEL", "METALLIC_SELF_TEST", "METALLIC_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    selftest.clear_cache()
    yield
    selftest.clear_cache()


def lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        assert sep and key and value, f"not a 'key: value' line: {line!r}"
        out[key] = value
    return out


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(["doctor", *args])
    return status, capsys.readouterr().out


def test_runs_as_a_command_with_every_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metallic", "doctor"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = lines(out.stdout)
    assert list(got) == KEYS
    assert got["cpu_kernels"] == _core.kernel_isa()
    assert got["metal_library"] == _core.metal_library()
    if not _core.metal_available():
        assert got["metal"] == f"not available: {_core.metal_problem()}"
        assert got["self_test"].startswith("not run: no usable Metal GPU")


def test_json_is_one_object_with_the_same_keys(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = doctor(capsys, "--json")
    assert status == 0
    info = json.loads(out)
    assert list(info) == KEYS
    assert info["logical_cpus"] >= 1 and info["memory"] > 0
    assert set(info["self_test"]) >= {"backend", "formats", "ran", "passed", "detail", "seconds"}


@SIM
def test_self_test_on_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = doctor(capsys, "--backend", "metal-sim")
    assert status == 0
    line = lines(out)["self_test"]
    assert line.startswith("passed: metal-sim agrees with cpu on F16, Q8_0, Q4_K weights"), line
    status, out = doctor(capsys, "--backend", "metal-sim", "--formats", "q5_1,Q6_K", "--json")
    assert status == 0
    test = json.loads(out)["self_test"]
    assert (test["ran"], test["passed"], test["formats"]) == (True, True, "Q5_1, Q6_K")


@SIM
def test_planted_kernel_bug_is_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METALLIC_SIM_SKIP_KERNEL", "gemm_f16")
    status, out = doctor(capsys, "--backend", "metal-sim")
    assert status == 1  # the report is printed, and the status says the test failed
    got = lines(out)
    assert got["self_test"].startswith("failed at the prefill of 9 tokens: nmse "), got
    assert got["environment"] == "METALLIC_SIM_SKIP_KERNEL=gemm_f16"
    status, out = doctor(capsys, "--backend", "metal-sim", "--json")
    assert status == 1 and json.loads(out)["self_test"]["passed"] is False


def test_unknown_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["doctor", "--formats", "Q4_0,IQ2_XS"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "argument --formats: unknown or unsupported format 'IQ2_XS'" in err, err
