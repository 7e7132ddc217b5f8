"""Fixtures for the Helm chart tests: pinned tools and kubeconform schemas, no cluster."""

from __future__ import annotations

import pytest
from charttools import Tools, install_tools


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    """helm, kubeconform and strict schemas for the built-in kinds and the chart's CRD."""
    return install_tools(tmp_path_factory)
