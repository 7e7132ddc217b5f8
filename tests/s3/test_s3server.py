"""The S3 server the object-storage tests use behaves as S3 does for what they rely on."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
import s3fs
from s3server import S3Server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    name = f"kt-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    return name


def test_an_object_written_is_listed_and_read_back_with_the_same_bytes(
    s3: S3Server, bucket: str
) -> None:
    fs = s3.filesystem()
    data = bytes(range(256)) + os.urandom(4096)

    fs.pipe(f"{bucket}/run-1/model.bin", data)

    assert bucket in fs.ls("")
    assert fs.ls(f"{bucket}/run-1") == [f"{bucket}/run-1/model.bin"]
    assert s3.filesystem().cat(f"{bucket}/run-1/model.bin") == data


def test_a_wrong_secret_is_refused(s3: S3Server, bucket: str) -> None:
    intruder = s3.filesystem(secret="not-the-secret")

    with pytest.raises(PermissionError):
        intruder.ls(bucket)
    with pytest.raises(PermissionError):
        intruder.pipe(f"{bucket}/planted", b"x")
    assert not s3.filesystem().exists(f"{bucket}/planted")


def test_a_missing_key_raises_file_not_found(s3: S3Server, bucket: str) -> None:
    with pytest.raises(FileNotFoundError):
        s3.filesystem().cat(f"{bucket}/no/such/key")


def test_a_client_configured_only_by_the_environment_reaches_the_server(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.filesystem().pipe(f"{bucket}/data.json", b"{}")
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)

    assert s3fs.S3FileSystem(skip_instance_cache=True).cat(f"{bucket}/data.json") == b"{}"


def test_stopping_the_server_closes_its_port_and_keeps_the_callers_directory(
    tmp_path: Path,
) -> None:
    with S3Server(tmp_path) as server:
        server.make_bucket("kept")

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert (tmp_path / "data" / "kept").is_dir()
    assert server.log_path.is_file()
