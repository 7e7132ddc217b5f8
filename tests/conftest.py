from __future__ import annotations

from pathlib import Path

import pytest
from datasets import write_mnist

pytest_plugins = ["kubecluster", "charttools"]


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST directory in the real IDX format, small enough to train on in seconds."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def job_document(tiny_mnist: Path) -> dict:
    """A TrainingJob as a user writes it, pointing at the tiny dataset."""
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "dataset": {"name": "mnist", "source": str(tiny_mnist)},
            "model": {"architecture": "mnist-dense"},
            "training": {"epochs": 3, "batchSize": 64, "learningRate": 0.003},
            "workers": {"replicas": 2},
        },
    }
