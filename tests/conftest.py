from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import tiny_job, write_mnist
from s3server import S3Server

pytest_plugins = ["kubecluster", "charttools"]


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST directory in the real IDX format, small enough to train on in seconds."""
    return write_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def job_document(tiny_mnist: Path) -> dict:
    """A TrainingJob as a user writes it, pointing at the tiny dataset."""
    return tiny_job(tiny_mnist, epochs=3, replicas=2)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (versitygw) on loopback for the session; its data and log stay in
    pytest's temporary directory for a look after a failure."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server
