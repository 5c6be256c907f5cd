"""Suite-wide rules: in CI a skipped test is a failure (a missing prerequisite must
never pass silently)."""

from __future__ import annotations

import os

import pytest

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"CI: {skipped} test(s) skipped; in CI a skip is a failure",
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
