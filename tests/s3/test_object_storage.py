"""Checkpoints, backups, models and data in S3, against a real S3 server on loopback.

The same `kubetrain run` a user starts, with `spec.storage.uri: s3://...` and the standard AWS
variables: nothing of the job's state is kept on local disk, a version or checkpoint is visible
only once complete, and a killed worker resumes from the backup in the bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from boards import curves, get_json, tensorboard
from datasets import write_planesnet_folder, write_planesnet_json
from kubetrain.trainer import checkpoints
from kubetrain.trainer import train as train_module
from kubetrain.trainer.api.entrypoints import DATA_CACHE_ENV
from kubetrain.trainer.api.layout import Layout
from kubetrain.trainer.api.records import Epoch, Record
from kubetrain.trainer.api.spec import Dataset, parse_job
from kubetrain.trainer.api.tfconfig import ENV as TF_CONFIG_ENV
from kubetrain.trainer.data import DataError, load_source
from kubetrain.trainer.runner import Display, run_local, storage_locations
from kubetrain.trainer.server.model import ModelNotFound, check, choose_version
from kubetrain.trainer.storage import StorageError, Store, StoreUnreachable
from kubetrain.trainer.train import Uploads
from s3server import S3Server, free_port


@pytest.fixture
def bucket(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new bucket, this process's (and its workers') AWS variables pointing at it, and a
    data cache of the test's own."""
    name = f"kt-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(name)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "data-cache"))
    return name


def upload(s3: S3Server, local: Path, uri: str) -> None:
    fs = s3.filesystem()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{uri}/{path.relative_to(local).as_posix()}")


# --- publishing: complete or invisible -----------------------------------------------------


def test_a_checkpoint_is_listed_only_once_its_metrics_are_uploaded(bucket: str) -> None:
    store = Store.open(f"s3://{bucket}/jobs/a/checkpoints")
    with store.scratch("epoch-0001") as staging:
        (staging / "weights.index").write_text("w1")
        checkpoints.publish(store, staging, 1, {"val_accuracy": 0.9})
    # A crash mid-upload: the weights are there, the metrics (the marker) are not.
    store.fs.pipe_file(store.path("epoch-0002/weights.index"), b"partial")
    assert [c.epoch for c in checkpoints.list_checkpoints(store)] == [1]
    (only,) = checkpoints.list_checkpoints(store)
    assert only.uri == f"s3://{bucket}/jobs/a/checkpoints/epoch-0001"


def test_republishing_replaces_the_old_files_and_leaves_none_behind(
    bucket: str, tmp_path: Path
) -> None:
    store = Store.open(f"s3://{bucket}/backup")
    first, second = tmp_path / "1", tmp_path / "2"
    for directory in (first, second):
        directory.mkdir()
        (directory / f"ckpt-{directory.name}.index").write_text(directory.name)
        (directory / "checkpoint").write_text(directory.name)
    store.publish(first, "chief", marker="checkpoint")
    assert not store.publish(second, "chief", marker="checkpoint")  # taken, not replacing
    store.publish(second, "chief", marker="checkpoint", replace=True)
    assert store.children("chief") == ["checkpoint", "ckpt-2.index"]
    assert store.read_text("chief/checkpoint") == "2"


def test_a_version_still_uploading_is_never_served(bucket: str) -> None:
    models = f"s3://{bucket}/models/mnist"
    store = Store.open(models)
    store.fs.pipe_file(store.path("1/saved_model.pb"), b"pb")
    store.fs.pipe_file(store.path("1/metadata.json"), b"{}")
    store.fs.pipe_file(store.path("2/saved_model.pb"), b"pb")  # metadata.json not yet there
    with pytest.raises(ModelNotFound, match=r"version 2 in .* is incomplete: no metadata\.json"):
        choose_version(models, None)
    assert choose_version(models, 1) == 1


def test_wrong_credentials_are_a_storage_error_naming_the_uri(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match=f"s3://{bucket}/jobs/result.json: access denied"):
        Store.open(f"s3://{bucket}/jobs").write_text("result.json", "{}")


OUTAGE_SECONDS = 20.0


def test_a_store_back_within_the_retries_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that is down for a while (a restart, a network blip) costs a worker a wait,
    not its job's attempt. 20 s is past botocore's default retries (at most 15 s of backing
    off), well within the minute the workers' clients are given."""
    with S3Server(tmp_path / "s3") as server:
        server.make_bucket("jobs")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        store = Store.open("s3://jobs/one")
        store.write_text("epoch", "3")
        server.stop()
        restart = threading.Timer(OUTAGE_SECONDS, server.start, kwargs={"port": server.port})
        restart.start()
        try:
            assert store.read_text("epoch") == "3"
        finally:
            restart.join()


@pytest.fixture
def unanswering_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS variables of a store at a loopback port nobody listens on, tried twice (the
    user's own AWS_MAX_ATTEMPTS, which the clients honour)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", S3Server.region)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")


@pytest.mark.usefixtures("unanswering_store")
def test_a_store_that_does_not_answer_is_unreachable_naming_the_uri() -> None:
    """Once the retries are spent, the worker's error names the URI and says it is worth
    another try."""
    with pytest.raises(StoreUnreachable, match="s3://jobs/one/epoch: the store did not answer"):
        Store.open("s3://jobs/one").read_text("epoch")


@pytest.mark.usefixtures("unanswering_store")
def test_a_model_check_against_a_store_that_does_not_answer_says_so_and_exits_retryable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The check a promotion runs, and the serving pods' pull, end with the store's URI in
    their last words, not a traceback."""
    assert check("s3://models/digits", None) == 1
    assert "error: s3://models/digits: the store did not answer" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["bucket", "directory"])
def test_growing_files_are_uploaded_without_removing_others_and_followed_by_their_new_bytes(
    where: str, bucket: str, tmp_path: Path
) -> None:
    root = {"bucket": f"s3://{bucket}", "directory": str(tmp_path / "volume")}[where]
    store = Store.open(f"{root}/jobs/a/tensorboard")
    earlier, writer, reader = tmp_path / "earlier", tmp_path / "writer", tmp_path / "reader"
    (earlier / "train").mkdir(parents=True)
    (earlier / "train" / "events.1").write_bytes(b"attempt 1")
    store.upload(earlier, "")
    (writer / "train").mkdir(parents=True)
    (writer / "train" / "events.2").write_bytes(b"epoch 1;")
    store.upload(writer, "")  # a later attempt's files join the earlier one's
    assert store.follow("", reader) == len(b"attempt 1") + len(b"epoch 1;")

    with (writer / "train" / "events.2").open("ab") as events:
        events.write(b"epoch 2;")
    store.upload(writer, "")
    assert store.follow("", reader) == len(b"epoch 2;")  # only what was added
    assert (reader / "train" / "events.2").read_bytes() == b"epoch 1;epoch 2;"
    assert (reader / "train" / "events.1").read_bytes() == b"attempt 1"
    assert store.follow("", reader) == 0


# --- kubetrain run with its state in a bucket ----------------------------------------------


class KillWorkerOne(Display):
    """SIGKILLs worker 1 once, when the chief reports `epoch`."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch, self.killed = epoch, False
        self.epochs: list[int] = []
        self.pids: dict[int, int] = {}

    def show(self, worker: int, record: Record) -> None:
        doc = record.document()
        if doc["type"] == "start":
            self.pids[worker] = doc["pid"]
        if worker == 0 and isinstance(record, Epoch):
            self.epochs.append(record.epoch)
            if record.epoch == self.epoch and not self.killed:
                os.kill(self.pids[1], signal.SIGKILL)
                self.killed = True


@pytest.mark.slow
def test_a_job_in_a_bucket_keeps_nothing_local_and_resumes_from_the_bucket(
    job_document: dict, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/kubetrain"
    job_document["spec"]["training"]["epochs"] = 4
    job_document["spec"]["storage"] = {"uri": uri}
    display = KillWorkerOne(epoch=2)

    result = run_local(parse_job(job_document), tmp_path / "run", display=display)

    # Worker 1 died after epoch 2; the restarted workers restored the backup from the bucket.
    # An epoch uploads while the next one trains, so epoch 2's may not have been in the store
    # yet: at most that epoch is trained again, never an earlier one.
    assert display.killed and display.epochs in ([1, 2, 3, 4], [1, 2, 2, 3, 4]), display.epochs
    store = Store.open(uri)
    assert store.children("jobs/tiny/checkpoints") == [f"epoch-000{e}" for e in (1, 2, 3, 4)]
    assert not store.exists("jobs/tiny/backup/chief/checkpoint")  # done: no backup to resume
    assert result.model and result.model.path == f"{uri}/models/mnist/1"
    assert result.checkpoint.startswith(f"{uri}/jobs/tiny/checkpoints/epoch-")
    assert {"metadata.json", "saved_model.pb", "variables"} <= set(store.children("models/mnist/1"))
    assert store.read_text("jobs/tiny/result.json")
    # The chief's curves are in the bucket too, every epoch of them, the retrained one twice.
    assert store.children("jobs/tiny/tensorboard") == ["train", "validation"]
    board = f"{uri}/jobs/tiny/tensorboard"
    with tensorboard(board, log=tmp_path / "log", runs=["train", "validation"]) as url:
        # TensorBoard reads no s3:// here: it draws a copy of the bucket's event files.
        tags = get_json(f"{url}/plugin/scalars/tags")
        assert "epoch_accuracy" in tags["validation"]  # type: ignore[index]
    store.follow("jobs/tiny/tensorboard", tmp_path / "curves")
    assert set(curves(tmp_path / "curves" / "validation")["epoch_accuracy"]) == {1, 2, 3, 4}
    # The local run directory holds the job file and logs, not the job's state.
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["job.json", "logs"]

    # What a serving pod's init container and the operator's model check do with it.
    pulled = tmp_path / "served" / "tiny"
    kubetrain = [sys.executable, "-m", "kubetrain.trainer"]
    pull = subprocess.run(
        [*kubetrain, "pull", "--model-dir", f"{uri}/models/mnist", "--into", str(pulled)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MODEL_VERSION": "1"},
    )
    assert pull.returncode == 0, pull.stderr
    assert (pulled / "1" / "saved_model.pb").is_file()
    assert choose_version(pulled, 1) == 1
    for version, code in (("1", 0), ("2", 2)):
        check = subprocess.run(
            [*kubetrain, "serve", "--model-dir", f"{uri}/models/mnist", "--check-only"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "MODEL_VERSION": version},
        )
        assert check.returncode == code, check.stderr
    assert "version 2 not found" in check.stderr


def test_an_epochs_curves_go_to_the_bucket_before_the_backup_that_marks_it_done(
    job_document: dict, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job resumed from a bucket starts after the last epoch its backup marks done: had
    that epoch's curves still been queued behind the backup when a worker died, the restart
    would have lost them. Uploads run one at a time, in the order they are queued."""
    queued: list[str] = []

    class RecordedUploads(Uploads):
        def submit(self, upload: Callable[[], object], staging: Path) -> None:
            queued.append(staging.name.split("-")[1])  # kubetrain-<what>-<random>
            super().submit(upload, staging)

    monkeypatch.setattr(train_module, "Uploads", RecordedUploads)
    monkeypatch.delenv(TF_CONFIG_ENV, raising=False)  # the lone worker, in this process
    job_document["spec"]["training"]["epochs"] = 2
    job_document["spec"]["workers"]["replicas"] = 1
    job_document["spec"]["storage"] = {"uri": f"s3://{bucket}/kubetrain"}
    job = parse_job(job_document)

    result = train_module.train(job, Layout(*storage_locations(job, tmp_path)))

    assert result is not None and result.model is not None
    assert queued == ["ckpt", "curves", "backup"] * 2


# --- datasets in a bucket ------------------------------------------------------------------


def test_mnist_from_a_bucket_reads_as_from_a_directory(
    s3: S3Server, bucket: str, tiny_mnist: Path
) -> None:
    upload(s3, tiny_mnist, f"{bucket}/mnist")
    local = load_source(dataset({"name": "mnist", "source": str(tiny_mnist)}))
    remote = load_source(dataset({"name": "mnist", "source": f"s3://{bucket}/mnist"}))
    assert (remote.train.labels == local.train.labels).all()
    assert remote.test and local.test and (remote.test.labels == local.test.labels).all()
    rows = np.arange(0, len(local.train), 7)
    assert (remote.train.read(rows) == local.train.read(rows)).all()


def test_a_worker_fetches_only_the_chips_it_reads(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    chips = write_planesnet_folder(tmp_path / "chips", count=60)
    upload(s3, chips, f"{bucket}/planesnet")
    source = load_source(dataset({"name": "planesnet", "source": f"s3://{bucket}/planesnet"}))
    assert len(source.train) == 60
    cache = Path(os.environ[DATA_CACHE_ENV])
    assert not list(cache.rglob("*.png"))  # labels and scenes come from the names alone
    shard = np.arange(0, 60, 6)
    local = load_source(dataset({"name": "planesnet", "source": str(chips)}))
    assert (source.train.read(shard) == local.train.read(shard)).all()
    assert len(list(cache.rglob("*.png"))) == len(shard)


def test_a_json_source_is_verified_by_its_sha256(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    path = write_planesnet_json(tmp_path / "planesnet.json", count=40)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    s3.filesystem().put_file(str(path), f"{bucket}/data/planesnet.json")
    uri = f"s3://{bucket}/data/planesnet.json"
    given = {"name": "planesnet", "source": uri, "sha256": digest}
    assert len(load_source(dataset(given)).train) == 40
    with pytest.raises(DataError, match=f"{uri}: sha256 is {digest}"):
        load_source(dataset({**given, "sha256": "0" * 64}))


def test_a_missing_or_forbidden_source_is_a_data_error_naming_it(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = {"name": "planesnet", "source": f"s3://{bucket}/nothing/planesnet.json"}
    with pytest.raises(DataError, match=f"s3://{bucket}/nothing/planesnet.json: no such object"):
        load_source(dataset(missing))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(DataError, match="access denied"):
        load_source(dataset(missing))


def dataset(fields: dict) -> Dataset:
    """`spec.dataset` as a TrainingJob file gives it."""
    architecture = "mnist-dense" if fields["name"] == "mnist" else "planesnet-seed"
    document = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "data"},
        "spec": {"dataset": fields, "model": {"architecture": architecture}},
    }
    return parse_job(document).spec.dataset


def test_mnist_from_a_web_server_is_fetched_once_into_the_cache(
    tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The four IDX files by their standard names under a URL, as mirrors publish them."""
    import functools
    import http.server
    import threading

    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.path)
            with contextlib.suppress(ConnectionError):  # a client that only wanted to know
                super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(tiny_mnist))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(DATA_CACHE_ENV, str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        first = load_source(dataset({"name": "mnist", "source": url}))
        fetched = len(served)
        again = load_source(dataset({"name": "mnist", "source": url}))
    finally:
        server.shutdown()
    local = load_source(dataset({"name": "mnist", "source": str(tiny_mnist)}))
    assert (first.train.labels == local.train.labels).all()
    assert (again.train.labels == local.train.labels).all()
    assert sorted(set(served)) == sorted(f"/{name}" for name in os.listdir(tiny_mnist))
    assert len(served) == fetched  # the second load asked the server nothing
