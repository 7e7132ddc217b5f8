"""Datasets in object stores and on the web, fetched on demand into a local cache.

`spec.dataset.source` may be `s3://…`, `gs://…` or `https://…` as well as a local path. A
worker fetches only what it reads: whole files for the single-file formats (the MNIST IDX
files, `planesnet.json`), and for a folder of PlanesNet chips only the chips of its own shard.
What was fetched stays in the cache (`DATA_CACHE_ENV`, else `~/.cache/kubetrain/data`),
keyed by the source, so a restarted worker does not fetch it again; every file lands under a
temporary name and is renamed into place once complete.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .api.entrypoints import DATA_CACHE_ENV
from .storage import filesystem, named_errors

REMOTE_SCHEMES = ("s3", "gs", "http", "https")


class RemoteDataError(ValueError):
    """The source refuses access or does not exist: the spec must change (permanent)."""


def is_remote(source: str) -> bool:
    return "://" in source and source.split("://", 1)[0] in REMOTE_SCHEMES


def cache_root() -> Path:
    if configured := os.environ.get(DATA_CACHE_ENV):
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kubetrain" / "data"


def _named(uri: str) -> AbstractContextManager[None]:
    """The source's errors, naming it: refused or missing ones as `RemoteDataError`."""
    return named_errors(uri, RemoteDataError, missing="no such object (spec.dataset.source)")


class RemoteDir:
    """A directory (or key prefix) of a remote source, mirrored into the cache file by file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs: Any = filesystem(self.uri)
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        self.cache = cache_root() / key

    def child(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def names(self) -> list[str]:
        """File and folder names directly under the directory."""
        with _named(self.uri):
            listed = self.fs.ls(self.uri, detail=False)
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def exists(self, name: str) -> bool:
        if (self.cache / name).is_file():  # fetched before: no need to ask again
            return True
        with _named(self.child(name)):
            return bool(self.fs.exists(self.child(name)))

    def local(self, names: list[str]) -> list[Path]:
        """Local copies of these files, fetching only those not in the cache yet."""
        paths = [self.cache / name for name in names]
        missing = [(n, p) for n, p in zip(names, paths, strict=True) if not p.exists()]
        if missing:
            self.cache.mkdir(parents=True, exist_ok=True)
            staged = [p.with_name(f".{p.name}.{uuid.uuid4().hex}") for _, p in missing]
            named = self.child(missing[0][0]) if len(missing) == 1 else self.uri
            with _named(named):
                self.fs.get([self.child(n) for n, _ in missing], [str(s) for s in staged])
            for stage, (_, path) in zip(staged, missing, strict=True):
                os.replace(stage, path)
        return paths


def fetch_file(uri: str, sha256: str | None = None) -> Path:
    """One file, fetched once into the cache; checked against `sha256` when given."""
    parent, name = uri.rstrip("/").rsplit("/", 1)
    (path,) = RemoteDir(parent).local([name])
    if sha256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256.lower():
            path.unlink()
            raise RemoteDataError(
                f"{uri}: sha256 is {digest.hexdigest()}, spec.dataset.sha256 expects {sha256}"
            )
    return path
