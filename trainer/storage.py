"""Where a job keeps what outlives its workers: a directory, or a prefix in an object store.

A local path (a PersistentVolumeClaim's mount, `kubetrain run`'s `runs/`) and an object-store
URI (`s3://bucket/prefix`, `gs://bucket/prefix`) work through the same `Store`, built on
fsspec. TensorFlow reads and writes local files only, so a worker writes into a local directory
and publishes it: on a local store the directory is renamed into place, in an object store its
files are uploaded with one *marker* file last (a checkpoint's `metrics.json`, a model
version's `metadata.json`). Readers take a directory for complete only when its marker is
there, so neither kind of store ever shows a half-written checkpoint or model.

S3 settings come from the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION`, `AWS_ENDPOINT_URL`), as for any AWS tool; `S3_ADDRESSING_STYLE_ENV` picks path-
or virtual-hosted-style requests (default: path style where an endpoint is set, as
S3-compatible servers mostly want). A store that does not answer is tried again with
botocore's standard retries, `S3_ATTEMPTS` requests in all (about a minute of backing off)
unless `AWS_MAX_ATTEMPTS` / `AWS_RETRY_MODE` say otherwise: a worker that gives up restarts
every worker of its job, which costs far more than waiting out a store's brief outage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api.entrypoints import S3_ADDRESSING_STYLE_ENV

OBJECT_STORE_SCHEMES = ("s3", "gs")
S3_ATTEMPTS = 10
"""Requests (the first and its retries) before a store that does not answer is given up on."""


class StorageError(RuntimeError):
    """The store refuses access or lacks the bucket: the job's spec or credentials must
    change, so trying again will not help. The message names the URI."""


class StoreUnreachable(ConnectionError):
    """The store did not answer: worth another try (the worker exits retryable)."""


def is_object_store(uri: str) -> bool:
    return uri.split("://", 1)[0] in OBJECT_STORE_SCHEMES if "://" in uri else False


def join(uri: str, *parts: str) -> str:
    """`uri` with path parts appended, for local paths and URIs alike."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts if p)])


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    style = os.environ.get(S3_ADDRESSING_STYLE_ENV) or ("path" if endpoint else "auto")
    # Only what the standard variables leave unsaid: botocore reads those itself.
    retries = {"mode": "standard"} if not os.environ.get("AWS_RETRY_MODE") else {}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["total_max_attempts"] = S3_ATTEMPTS
    options: dict[str, Any] = {
        "config_kwargs": {"s3": {"addressing_style": style}, "retries": retries},
        # Other writers (the other workers, the next attempt) change what is there.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if endpoint:
        options["endpoint_url"] = endpoint
    if region := os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
        options["client_kwargs"] = {"region_name": region}
    return options


def filesystem(uri: str) -> Any:
    """The fsspec filesystem for `uri`'s scheme, with this environment's S3 settings."""
    import fsspec

    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    options = _s3_options() if scheme == "s3" else {}
    try:
        return fsspec.filesystem(scheme, **options)
    except ImportError as err:
        package = {"s3": "s3fs", "gs": "gcsfs"}.get(scheme, scheme)
        raise StorageError(f"{uri}: reading {scheme}:// needs the {package} package") from err


@contextmanager
def named_errors(
    uri: str, refused: type[Exception] = StorageError, missing: str | None = None
) -> Iterator[None]:
    """A store's errors as ones that name `uri` and the fix: access denied (and, where
    `missing` says what a missing object means, a missing one) as the permanent `refused`;
    no answer as `StoreUnreachable`, which is worth another try."""
    try:
        yield
    except PermissionError as err:
        raise refused(
            f"{uri}: access denied ({err}); check the credentials the job gives "
            "(spec.storage.secretName, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        ) from err
    except FileNotFoundError as err:
        if missing is None:
            raise
        raise refused(f"{uri}: {missing}") from err
    except _unanswered_errors() as err:
        raise StoreUnreachable(
            f"{uri}: the store did not answer ({err}); check that it is up and that the "
            "endpoint (AWS_ENDPOINT_URL) is reachable from here"
        ) from err


def _unanswered_errors() -> tuple[type[Exception], ...]:
    """No answer from a store, as the clients raise it: botocore's connection errors are
    neither `ConnectionError` nor `TimeoutError`, nor are aiohttp's (gcsfs)."""
    errors: list[type[Exception]] = [TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientConnectionError

        errors.append(ClientConnectionError)
    except ImportError:
        pass
    return tuple(errors)


@dataclass(frozen=True)
class Store:
    """One root (`uri`) in a filesystem; every other argument is a path relative to it."""

    uri: str
    fs: Any

    @classmethod
    def open(cls, uri: str | Path) -> Store:
        uri = str(uri)
        return cls(uri=uri.rstrip("/") or "/", fs=filesystem(uri))

    @property
    def local(self) -> bool:
        return not is_object_store(self.uri)

    def path(self, *parts: str) -> str:
        return join(self.uri, *parts)

    def exists(self, rel: str) -> bool:
        with named_errors(self.path(rel)):
            return self.fs.exists(self.path(rel))

    def read_text(self, rel: str) -> str | None:
        """The file's text, or None if there is no such file."""
        with named_errors(self.path(rel)):
            try:
                return self.fs.cat_file(self.path(rel)).decode()
            except FileNotFoundError:
                return None

    def children(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (none if it does not exist)."""
        with named_errors(self.path(rel)):
            try:
                listed = self.fs.ls(self.path(rel), detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def write_text(self, rel: str, text: str) -> None:
        """Replace a file whole: readers see the old text or the new, never part of it."""
        target = self.path(rel)
        if self.local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            staging = Path(target).with_name(f".{Path(target).name}.{uuid.uuid4().hex}")
            staging.write_text(text)
            os.replace(staging, target)
            return
        with named_errors(target):
            self.fs.pipe_file(target, text.encode())  # one PUT: atomic in an object store

    def remove(self, rel: str) -> None:
        with named_errors(self.path(rel)):
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel), recursive=True)

    @contextmanager
    def scratch(self, rel: str) -> Iterator[Path]:
        """A local directory to write what will be published under `rel`; removed after.

        On a local store it is a hidden directory beside the target, so that publishing is
        a rename; otherwise a temporary directory on this machine.
        """
        if self.local:
            parent = Path(self.path(rel)).parent
            parent.mkdir(parents=True, exist_ok=True)
            directory = parent / f".staging-{uuid.uuid4().hex}"
            directory.mkdir()
        else:
            directory = Path(tempfile.mkdtemp(prefix="kubetrain-"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def publish(self, local: Path, rel: str, marker: str, replace: bool = False) -> bool:
        """Make the complete directory `local` appear as `rel`; False if `rel` exists already
        and `replace` is off (the caller picks another name).

        Local: one rename (an older copy is swapped out first when replacing). Object store:
        every file but `marker`, then `marker`, so a reader that waits for the marker never
        sees part of it; files of an older copy that `local` lacks are removed afterwards.
        """
        target = self.path(rel)
        if self.local:
            if Path(target).exists():
                if not replace:
                    return False
                stale = Path(target).with_name(f".stale-{uuid.uuid4().hex}")
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(local, target)
            except OSError:
                if Path(target).exists() and not replace:
                    return False  # another writer took the name meanwhile
                raise
            return True
        with named_errors(target):
            if not replace and self.fs.exists(target):
                return False
            names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
            data = [name for name in names if name != marker]
            # The data files all at once (the client sends them concurrently), the marker after.
            self.fs.put([str(local / n) for n in data], [join(target, n) for n in data])
            self.fs.put_file(str(local / marker), join(target, marker))
            if replace:  # an older copy may hold files this one lacks
                prefix = len(target.split("://", 1)[-1]) + 1
                stale = [old for old in self.fs.find(target) if str(old)[prefix:] not in names]
                if stale:
                    self.fs.rm(stale)
        return True

    def upload(self, local: Path, rel: str) -> None:
        """Copy every file under `local` to `rel`, replacing files of the same name and keeping
        the others. For files that only ever grow, such as TensorBoard's event files: a reader
        takes each as far as it goes, so they need no marker."""
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        target = self.path(rel)
        with named_errors(target):
            if self.local:
                for name in names:
                    Path(target, name).parent.mkdir(parents=True, exist_ok=True)
            self.fs.put([str(local / n) for n in names], [join(target, n) for n in names])

    def follow(self, rel: str, local: Path) -> int:
        """Bring a local copy of the growing files under `rel` up to date: each file's bytes
        past its local length are appended (a new file is fetched whole). Returns the number
        of bytes fetched."""
        source = self.path(rel)
        fetched = 0
        with named_errors(source):
            # As `find` names them: absolute local paths, or bucket/key.
            prefix = str(Path(source).resolve()) if self.local else source.split("://", 1)[-1]
            for remote, info in self.fs.find(source, detail=True).items():
                copy = local / str(remote)[len(prefix) + 1 :]
                have = copy.stat().st_size if copy.exists() else 0
                if info["size"] <= have:
                    continue
                copy.parent.mkdir(parents=True, exist_ok=True)
                data = self.fs.cat_file(remote, start=have)
                with copy.open("ab") as out:
                    out.write(data)
                fetched += len(data)
        return fetched

    def fetch(self, rel: str, local: Path) -> Path:
        """`rel`'s files copied into `local` (created); the local path of `rel` itself on a
        local store, where nothing is copied."""
        if self.local:
            return Path(self.path(rel))
        local.mkdir(parents=True, exist_ok=True)
        source = self.path(rel)
        with named_errors(source):
            prefix = source.split("://", 1)[-1]
            for remote in self.fs.find(source):
                relative = str(remote)[len(prefix) + 1 :]
                (local / relative).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(remote, str(local / relative))
        return local
