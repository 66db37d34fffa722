"""Suite-wide test policy.

CI sets STOREDVALUE_FORBID_SKIPS=1: a test that would skip there (PostgreSQL URL missing,
protoc missing) fails instead, so a green CI run never hides an untested backend.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("STOREDVALUE_FORBID_SKIPS") == "1":
        report.outcome = "failed"
        report.longrepr = f"skipped, but STOREDVALUE_FORBID_SKIPS=1 forbids it: {report.longrepr}"
