"""Shared fixtures, and the rule that CI runs every test. Tests import helper modules from this
directory (oracle/, real_models, paths: where the shared data and the cache are)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from small_gguf import write_small_gguf  # noqa: E402

pytest_plugins = ["pytester"]  # test_ci_skips.py runs pytest on small test files


# --- CI runs every test -------------------------------------------------------------------
#
# Tests skip when what they need is missing: a test dependency (importorskip), the shared data
# sets, a real model, clang, the Metal simulator. Locally that is a convenience; under CI it
# would turn a broken setup into a green run that tested less, so there a skip is a failure,
# except for the few tests CI cannot run, listed here by their skip reason.
CI_ALLOWED_SKIPS: dict[str, str] = {
    # test_metal_sim.py: needs a second build of the core with AddressSanitizer, which the
    # normal CI job (.ci/run) does not make; cpp/metal/sim/README.md says how to run it.
    "METALLIC_SIM_ASAN_CORE not set": "the simulator's AddressSanitizer build is separate",
}


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not running_in_ci():
        return  # an expected failure is reported as skipped too; it is not a skip
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason in CI_ALLOWED_SKIPS:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI (CI={os.environ['CI']!r}), where it must run: {reason}\n"
        "(tests/conftest.py CI_ALLOWED_SKIPS lists the only skips CI allows)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # pytest.skip() in a test or a fixture, and skip/skipif marks
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    # pytest.importorskip() and pytest.skip(allow_module_level=True) at module level skip the
    # whole file while it is collected; failing it is a collection error, which stops the run.
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # A local run passes with tests skipped for what this machine lacks (clang, a build
    # option); `-q` shows only their count. Say what was missing and what it would take.
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    terminalreporter.section("what this run could not test", sep="-")
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.line(f"{count:>4} skipped: {reason}")
    terminalreporter.line("(under CI=true these fail instead; see README's test section)")


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/sanitize runs tests on the sanitizer build; a path mistake that imported the normal
    # build instead would pass while checking nothing.
    if os.environ.get("METALLIC_EXPECT_SANITIZED"):
        from metallic import _core

        if not _core.sanitizers:
            raise pytest.UsageError(f"expected a sanitizer build of {_core.__file__}")


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid qwen2 model (random weights, F16 matrices, no tokenizer)."""
    return write_small_gguf(tmp_path_factory.mktemp("small") / "small.gguf")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct (Q4_1) file from the test cache (tests/real_models.py)."""
    from real_models import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """The real Gemma 3 270M (Q4_K_M) file from the test cache (tests/real_models.py)."""
    from real_models import gemma3_gguf

    return gemma3_gguf()
