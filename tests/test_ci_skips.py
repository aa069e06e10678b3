"""conftest.py's rule: under CI (CI set, and not empty, "0" or "false") a skipped test fails,
whether it skipped while running or its whole file skipped while being collected, unless its
reason is one of the few CI_ALLOWED_SKIPS. Each case runs pytest on a small test file with this
directory's conftest.py as a plugin."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TESTS = """
import pytest

def test_passes():
    pass

def test_needs_data():
    pytest.skip("shared vectors missing")

@pytest.fixture
def dependency():
    pytest.importorskip("metallic_no_such_module")

def test_needs_a_dependency(dependency):
    pass

@pytest.mark.skipif(True, reason="clang not installed")
def test_needs_clang():
    pass

@pytest.mark.skipif(True, reason="METALLIC_SIM_ASAN_CORE not set")
def test_asan_build():
    pass

@pytest.mark.xfail(reason="a known bug")
def test_known_bug():
    assert False
"""

# A whole file skipped while it is collected.
MODULE_SKIP = """
import pytest

pytest.importorskip("metallic_no_such_module")

def test_never_runs():
    pass
"""


@pytest.fixture
def conftest(request: pytest.FixtureRequest) -> ModuleType:
    """This directory's conftest.py module, to load into the inner pytest runs."""
    for plugin in request.config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and Path(plugin.__file__ or "") == CONFTEST:
            return plugin
    raise AssertionError(f"{CONFTEST} is not loaded")


def run(pytester: pytest.Pytester, conftest: ModuleType, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest("-rA", "-p", "no:cacheprovider", plugins=[conftest])


@pytest.mark.parametrize(
    ("value", "ci"),
    [(None, False), ("", False), ("0", False), ("false", False), (" False ", False)]
    + [("1", True), ("true", True), ("yes", True), ("github-actions", True)],
)
def test_what_counts_as_ci(
    conftest: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert conftest.running_in_ci() is ci


def test_outside_ci_skips_stay_skips(
    pytester: pytest.Pytester, conftest: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "0")
    result = run(pytester, conftest, TESTS)
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    result.stdout.fnmatch_lines(["SKIPPED * shared vectors missing"])
    # and the run ends by saying what it could not test, even under -q
    result.stdout.fnmatch_lines(
        [
            "*what this run could not test*",
            "   1 skipped: shared vectors missing",
            "   1 skipped: clang not installed",
        ],
        consecutive=False,
    )
    result = run(pytester, conftest, MODULE_SKIP)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED * could not import 'metallic_no_such_module'*"])


def test_in_ci_skips_fail(
    pytester: pytest.Pytester, conftest: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = run(pytester, conftest, TESTS)
    # The ASan build's test is the allowed skip; a known bug stays an expected failure. Skips
    # in a fixture or from a skipif mark happen in setup: failing there is reported as an error.
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*skipped under CI (CI='true'), where it must run: shared vectors missing",
            "*skipped under CI (CI='true'), where it must run: clang not installed",
            "*where it must run: could not import 'metallic_no_such_module'*",
            "SKIPPED * METALLIC_SIM_ASAN_CORE not set",
        ]
    )
    # A file that skips while collected is a collection error, which stops the run.
    result = run(pytester, conftest, MODULE_SKIP)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*skipped under CI*where it must run: could not import 'metallic_no_such_module'*"]
    )
    assert result.ret != 0
