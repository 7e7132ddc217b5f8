"""Fixtures for the end-to-end tests: the pinned tools (helm) on the session's cluster."""

from __future__ import annotations

import pytest
from charttools import Tools, install_tools


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return install_tools(tmp_path_factory)
