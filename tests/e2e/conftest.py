"""Fixtures for the end-to-end tests: the pinned tools (helm) on the session's cluster."""

from __future__ import annotations

import json
import time

import pytest
from charttools import REPO, Tools, install_tools

REPORT = REPO / "runs" / "e2e" / "report.json"
_session_start = time.time()


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return install_tools(tmp_path_factory)


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the report the end-to-end module wrote in this run, if it ran."""
    if REPORT.exists() and REPORT.stat().st_mtime >= _session_start:
        terminalreporter.section(f"end-to-end report ({REPORT.relative_to(REPO)})")
        for key, value in json.loads(REPORT.read_text()).items():
            terminalreporter.write_line(f"{key:<36} {value}")
