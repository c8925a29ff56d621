"""``SkipGuard``: a pytest plugin that fails the session when a test skipped that should have
run here.

Only tests marked ``gpu`` may skip (tests/gpu/conftest.py skips them without a CUDA device).
Any other skip — a missing test dependency, a model file not found — would let CI pass
without running the test, so the guard lists each one with its reason and turns a passing (or
nothing-collected) exit status into ``TESTS_FAILED``. Expected failures (``xfail``) are not skips.
"""

from __future__ import annotations

import pytest

ALLOWED_MARKER = "gpu"


def _reason(report) -> str:
    """The skip message pytest stores as (path, line, "Skipped: reason")."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipGuard:
    def __init__(self) -> None:
        self.unexpected: list[str] = []
        """"nodeid: reason" of every skip outside the allowed marker, in report order."""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if (report.skipped and not hasattr(report, "wasxfail")
                and ALLOWED_MARKER not in report.keywords):
            self.unexpected.append(f"{report.nodeid}: {_reason(report)}")

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:             # a whole module skipped at import (no markers known)
            self.unexpected.append(f"{report.nodeid}: {_reason(report)}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus in (pytest.ExitCode.OK,
                                                       pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("tests that skipped but must run here", sep="=", red=True)
        for line in self.unexpected:
            terminalreporter.line(line)
        terminalreporter.line(f"Only tests marked {ALLOWED_MARKER!r} may skip: fix the cause "
                              f"(e.g. install the test extra) or mark the test.")
