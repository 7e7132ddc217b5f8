"""The end-to-end report, printed at the end of the run that wrote it."""

from __future__ import annotations

import json
import time

from charttools import REPO

REPORT = REPO / "runs" / "e2e" / "report.json"
_session_start = time.time()


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the report the end-to-end module wrote in this run, if it ran."""
    if REPORT.exists() and REPORT.stat().st_mtime >= _session_start:
        terminalreporter.section(f"end-to-end report ({REPORT.relative_to(REPO)})")
        for key, value in json.loads(REPORT.read_text()).items():
            terminalreporter.write_line(f"{key:<36} {value}")
