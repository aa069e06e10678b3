"""The GPU self-test (metallic/selftest.py) and the rules of backend `auto` (model.choose_backend),
with the simulator standing in for the GPU: what a Mac runs, tested here. A planted kernel bug
(METALLIC_SIM_SKIP_KERNEL drops a kernel's dispatches) must make the self-test fail naming the
step, `auto` fall back to the CPU saying why, and an explicit request raise."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import metal_sim_helpers  # noqa: F401  (skips without the simulator)
import metallic
from metallic import _core, selftest
from metallic.errors import RequestError
from metallic.ggml_types import GGMLQuantizationType as Q
from metallic.model import choose_backend

SKIP = "METALLIC_SIM_SKIP_KERNEL"


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Results are cached per process; a planted bug must not leak into the next test's result.
    for name in (SKIP, "METALLIC_SELF_TEST", "METALLIC_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    selftest.clear_cache()
    yield
    selftest.clear_cache()


def _runtime_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("qtype", selftest.supported_types(), ids=lambda t: t.name)
def test_passes_on_the_clean_simulator(qtype: Q) -> None:
    r = selftest.gpu_self_test("metal-sim", [qtype])
    assert r.passed, r.detail
    assert r.detail.startswith("passed: metal-sim agrees with cpu") and qtype.name in r.detail
    assert "\n" not in r.detail and r.seconds > 0


def test_every_format_the_core_reads_is_covered() -> None:
    names = [n.strip() for n in _core.supported_formats().split(",")]
    assert [t.name for t in selftest.supported_types()] == names


# (a kernel prefix, the step that must fail first): a matvec kernel runs only in decode steps,
# the GEMM only in the prefill, attention in both.
PLANTED = [
    ("matvec_q8_0", "at decode step 1 of 3"),
    ("gemm_q4_k", "at the prefill of 9 tokens"),
    ("attention", "at the prefill of 9 tokens"),
]


@pytest.mark.parametrize(("kernel", "step"), PLANTED, ids=[k for k, _ in PLANTED])
def test_planted_kernel_bug(monkeypatch: pytest.MonkeyPatch, kernel: str, step: str) -> None:
    monkeypatch.setenv(SKIP, kernel)
    types = selftest.DEFAULT_TYPES
    r = selftest.gpu_self_test("metal-sim", types)
    assert not r.passed
    assert r.detail.startswith(f"failed {step}: nmse "), r.detail

    # auto falls back to the CPU and says why, once, in one line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen, note = choose_backend("auto", types, gpu="metal-sim")
    assert chosen == "cpu"
    assert note == f"backend 'auto' chose cpu, not metal-sim: its self-test {r.detail}"
    assert _runtime_warnings(caught) == [note]

    # asked for by name, it refuses with the same reason
    with pytest.raises(RequestError, match="backend 'metal-sim' is not available: its self-test"):
        choose_backend("metal-sim", types, gpu="metal-sim")
    try:
        choose_backend("metal-sim", types, gpu="metal-sim")
    except RequestError as e:
        assert r.detail in str(e)


def test_clean_simulator_is_chosen_silently() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose_backend("auto", [Q.Q8_0], gpu="metal-sim") == ("metal-sim", "")
        assert choose_backend("metal-sim", [Q.Q8_0], gpu="metal-sim") == ("metal-sim", "")
    assert _runtime_warnings(caught) == []


def test_only_the_models_formats_are_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP, "matvec_q8_0")
    assert choose_backend("auto", [Q.F16, Q.F32], gpu="metal-sim") == ("metal-sim", "")
    assert set(selftest._cache) == {("metal-sim", frozenset({Q.F16, Q.F32}))}
    with pytest.warns(RuntimeWarning, match="Q8_0"):
        assert choose_backend("auto", [Q.F16, Q.Q8_0], gpu="metal-sim")[0] == "cpu"


def test_results_are_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    first = selftest.gpu_self_test("metal-sim", [Q.Q4_0])
    assert selftest.gpu_self_test("metal-sim", [Q.Q4_0, Q.Q4_0]) is first
    monkeypatch.setenv(SKIP, "matvec")  # read when an engine is built: the cache hides it
    assert selftest.gpu_self_test("metal-sim", [Q.Q4_0]) is first
    selftest.clear_cache()
    assert not selftest.gpu_self_test("metal-sim", [Q.Q4_0]).passed


def test_self_test_off_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP, "attention")
    monkeypatch.setenv("METALLIC_SELF_TEST", "0")
    assert choose_backend("auto", None, gpu="metal-sim") == ("metal-sim", "")
    assert selftest._cache == {}


def test_load_on_the_simulator_by_name(monkeypatch: pytest.MonkeyPatch, small_gguf: Path) -> None:
    """metal-sim asked for by name (not standing in for the GPU) runs the self-test only with
    METALLIC_SELF_TEST=1 (it costs most of a second there), on the model's formats (F16)."""
    monkeypatch.setenv(SKIP, "matvec_f16")
    assert metallic.load(small_gguf, backend="metal-sim", n_ctx=8).backend == "metal-sim"
    assert selftest._cache == {}
    monkeypatch.setenv("METALLIC_SELF_TEST", "1")
    with pytest.raises(RequestError, match=r"its self-test failed at decode step 1 .*F16 weights"):
        metallic.load(small_gguf, backend="metal-sim", n_ctx=8)
    monkeypatch.setenv(SKIP, "matvec_q8_0")  # a format the model does not have
    selftest.clear_cache()
    assert metallic.load(small_gguf, backend="metal-sim", n_ctx=8).backend == "metal-sim"


def test_auto_on_this_machine(monkeypatch: pytest.MonkeyPatch, small_gguf: Path) -> None:
    """Without any Metal device (Linux) `auto` is the CPU, silently, and runs no self-test; a
    device that cannot run the kernels (an Intel Mac's GPU, a CI runner's paravirtual one) is
    refused with a warning naming it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = metallic.load(small_gguf, backend="auto", n_ctx=8)
    problem = _core.metal_problem()
    if problem.startswith("this machine has no Metal GPU"):
        assert (m.backend, m.backend_note) == ("cpu", "")
        assert _runtime_warnings(caught) == []
        assert selftest._cache == {}
    elif problem:
        assert m.backend == "cpu" and problem in m.backend_note
        assert _runtime_warnings(caught) == [m.backend_note]
    else:  # a Mac with an Apple7+ GPU: Metal, unless its self-test failed (then it says so)
        assert m.backend == "metal" or "its self-test failed" in m.backend_note
