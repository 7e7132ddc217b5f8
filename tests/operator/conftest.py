"""Fixtures of the operator's tests against a real cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubecluster import Kubectl

CRD = Path(__file__).resolve().parents[2] / "crds" / "trainingjobs.kubetrain.io.yaml"
CLAIM = "models"


@pytest.fixture
def crd(kubectl: Kubectl) -> None:
    """Applied for every test: cheap, and a test never depends on an earlier one's cluster."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", "crd/trainingjobs.kubetrain.io", "--timeout=60s")


@pytest.fixture
def ns(namespace: Kubectl, crd: None) -> Kubectl:
    """A fresh namespace with a PVC for checkpoints and models."""
    namespace.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "64Mi"}},
            },
        }
    )
    return namespace
