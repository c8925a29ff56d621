"""The skip guard (tests/helpers/skip_guard.py), run on small inner test sessions: a skip
outside the ``gpu`` marker fails the session and is listed with its reason; gpu skips,
xfails and passing sessions keep exit status 0; an already failing session stays failed."""

from __future__ import annotations

import pytest

from tests.helpers.skip_guard import SkipGuard

pytest_plugins = ["pytester"]

INI = """
[pytest]
markers =
    gpu: needs a CUDA device
"""


def run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_inner=source)
    return pytester.runpytest_inprocess("-rs", plugins=[SkipGuard()])


def test_an_unmarked_skip_fails_the_session_with_its_reason(pytester):
    result = run(pytester, """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("model file not found")

@pytest.mark.skipif(True, reason="an optional dependency is missing")
def test_skipif():
    pass
""")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "*tests that skipped but must run here*",
        "test_inner.py::test_skips: model file not found",
        "test_inner.py::test_skipif: an optional dependency is missing",
    ])


def test_gpu_skips_and_xfails_pass(pytester):
    result = run(pytester, """
import pytest

@pytest.fixture
def needs_cuda():
    pytest.skip("needs a CUDA device")

@pytest.mark.gpu
def test_on_gpu(needs_cuda):
    pass

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False

def test_runs():
    pass
""")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert "must run here" not in result.stdout.str()


def test_a_module_skipped_at_import_fails_the_session(pytester):
    result = run(pytester, """
import pytest
pytest.importorskip("a_module_that_is_not_installed")

def test_never_collected():
    pass
""")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["test_inner.py: could not import 'a_module_that_is_not_installed'*"])


def test_a_failing_session_keeps_its_status(pytester):
    result = run(pytester, """
import pytest

def test_fails():
    assert False

def test_skips():
    pytest.skip("why")
""")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_inner.py::test_skips: why"])
