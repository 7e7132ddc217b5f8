"""Dataset loaders, splits and per-worker shards.

A loader returns a `Catalog`: labels (and PlanesNet scene ids) known up front, pixels read on
demand for chosen indices. Splits and shards are computed from labels alone, so each worker
decodes only the images of its own shard where the format allows it (the PNG folder), and a
bad file is reported by name with what is wrong with it.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from .api.spec import Dataset, DatasetName, SplitBy
from .remote import RemoteDataError, RemoteDir, fetch_file, is_remote


class DataError(ValueError):
    """The dataset cannot be read; the message names the file and the problem."""


MNIST_CLASSES = [str(d) for d in range(10)]
PLANESNET_CLASSES = ["no-plane", "plane"]
PLANESNET_SIZE = 20
PLANESNET_NAME = re.compile(
    r"^(?P<label>\d+)__(?P<scene>[^_][^/]*?)__(?P<lon>[-0-9.]+)_(?P<lat>[-0-9.]+)\.png$"
)


@dataclass(frozen=True)
class Catalog:
    """Labelled examples whose pixels are read lazily by index."""

    labels: np.ndarray
    read: Callable[[np.ndarray], np.ndarray]
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Source:
    """What a loader found: the training pool, an official test set if any, and the shape."""

    train: Catalog
    test: Catalog | None
    input_shape: tuple[int, int, int]
    class_names: list[str]


@dataclass(frozen=True)
class Split:
    """Indices into `Source.train` (and `Source.test` when the dataset has one)."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


# --- MNIST (IDX) ---------------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{directory}: missing {stem}.gz (or {stem}); an MNIST directory holds "
        f"the four IDX files {', '.join(MNIST_FILES.values())}"
    )


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (gzip or not), checking its magic number and length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise DataError(f"{path}: wrong magic number {found}, expected {magic}")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: truncated IDX file: header promises {expected} bytes of data for shape "
            f"{dims}, file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _mnist_catalog(directory: Path, images_key: str, labels_key: str) -> Catalog:
    images_path = _find_idx(directory, MNIST_FILES[images_key])
    labels_path = _find_idx(directory, MNIST_FILES[labels_key])
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, MNIST's are 28x28")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} outside the classes 0-9")
    pixels = images[..., np.newaxis]
    return Catalog(labels=labels, read=lambda idx: pixels[idx])


def load_mnist(source: Path) -> Source:
    if not source.is_dir():
        raise DataError(f"{source}: MNIST source must be a directory holding the IDX files")
    return Source(
        train=_mnist_catalog(source, "train_images", "train_labels"),
        test=_mnist_catalog(source, "test_images", "test_labels"),
        input_shape=(28, 28, 1),
        class_names=MNIST_CLASSES,
    )


# --- PlanesNet (PNG folder or planesnet.json) -----------------------------------------------


def _check_label(label: int, where: str) -> int:
    if label not in (0, 1):
        raise DataError(f"{where}: label {label} outside the classes 0 (no-plane) and 1 (plane)")
    return label


def _read_chip(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                raise DataError(f"{path}: image mode {image.mode}, PlanesNet chips are RGB")
            if image.size != (PLANESNET_SIZE, PLANESNET_SIZE):
                raise DataError(
                    f"{path}: image is {image.size[0]}x{image.size[1]}, "
                    f"PlanesNet chips are {PLANESNET_SIZE}x{PLANESNET_SIZE}"
                )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable PNG image: {err}") from None


def _chip_folder(where: str, names: list[str], local: Callable[[list[str]], list[Path]]) -> Source:
    """Chips named `LABEL__SCENE__LON_LAT.png`: labels and scenes come from the names, and
    `local` gives the files of the chips actually read (fetching them if remote)."""
    chips = sorted(n for n in names if n.endswith(".png"))
    if not chips:
        raise DataError(f"{where}: no PlanesNet chips (*.png) found")
    labels, scenes = [], []
    for name in chips:
        match = PLANESNET_NAME.match(name)
        if not match:
            raise DataError(f"{where}/{name}: file name is not LABEL__SCENE__LON_LAT.png")
        labels.append(_check_label(int(match["label"]), f"{where}/{name}"))
        scenes.append(match["scene"])

    def read(indices: np.ndarray) -> np.ndarray:
        pixels = np.empty((len(indices), PLANESNET_SIZE, PLANESNET_SIZE, 3), dtype=np.uint8)
        for row, path in enumerate(local([chips[i] for i in indices])):
            pixels[row] = _read_chip(path)
        return pixels

    return Source(
        train=Catalog(labels=np.array(labels, dtype=np.int64), read=read, groups=np.array(scenes)),
        test=None,
        input_shape=(PLANESNET_SIZE, PLANESNET_SIZE, 3),
        class_names=PLANESNET_CLASSES,
    )


def load_planesnet_folder(directory: Path) -> Source:
    """Chips named `LABEL__SCENE__LON_LAT.png`, as PlanesNet publishes them."""
    names = [p.name for p in directory.glob("*.png")]
    return _chip_folder(str(directory), names, lambda chosen: [directory / n for n in chosen])


def load_planesnet_json(path: Path) -> Source:
    """`planesnet.json`: `data` rows of 1200 bytes, channel-planar (400 R, 400 G, 400 B)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON file: {err}") from None
    if not isinstance(document, dict) or "data" not in document or "labels" not in document:
        raise DataError(f"{path}: expected an object with 'data' and 'labels'")
    try:
        data = np.asarray(document["data"], dtype=np.int64)
        labels = np.asarray(document["labels"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: 'data' and 'labels' must be arrays of integers: {err}") from None
    size = PLANESNET_SIZE * PLANESNET_SIZE * 3
    if data.ndim != 2 or data.shape[1] != size:
        raise DataError(f"{path}: 'data' must be N rows of {size} values, got shape {data.shape}")
    if len(data) == 0:
        raise DataError(f"{path}: 'data' is empty")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} rows of data")
    if data.min() < 0 or data.max() > 255:
        raise DataError(f"{path}: pixel values must be 0-255")
    for i, label in enumerate(labels):
        _check_label(int(label), f"{path}: labels[{i}]")
    chips = (
        data.astype(np.uint8).reshape(-1, 3, PLANESNET_SIZE, PLANESNET_SIZE).transpose(0, 2, 3, 1)
    )
    scenes = document.get("scene_ids")
    groups = np.asarray(scenes) if scenes is not None and len(scenes) == len(data) else None
    return Source(
        train=Catalog(labels=labels, read=lambda idx: chips[idx], groups=groups),
        test=None,
        input_shape=(PLANESNET_SIZE, PLANESNET_SIZE, 3),
        class_names=PLANESNET_CLASSES,
    )


def load_planesnet(source: Path) -> Source:
    """Accept the JSON file, a folder of chips, or a folder holding either."""
    if source.is_file():
        return load_planesnet_json(source)
    if not source.is_dir():
        raise DataError(f"{source}: no such file or directory")
    if (source / "planesnet.json").is_file():
        return load_planesnet_json(source / "planesnet.json")
    nested = source / "planesnet"
    if not any(source.glob("*.png")) and nested.is_dir():
        return load_planesnet_folder(nested)
    return load_planesnet_folder(source)


def load_source(dataset: Dataset) -> Source:
    if is_remote(dataset.source):
        try:
            return _load_remote(dataset)
        except RemoteDataError as err:
            raise DataError(str(err)) from None
    path = Path(dataset.source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (spec.dataset.source)")
    if dataset.sha256:
        raise DataError("spec.dataset.sha256 is checked on download: give it with a remote source")
    if dataset.name == DatasetName.MNIST:
        return load_mnist(path)
    return load_planesnet(path)


def _load_remote(dataset: Dataset) -> Source:
    """The same formats from `s3://`, `gs://` or `https://`, fetched as they are read."""
    uri = dataset.source.rstrip("/")
    if uri.endswith(".json"):
        return load_planesnet_json(fetch_file(uri, dataset.sha256))
    if dataset.sha256:
        raise DataError(f"{uri}: spec.dataset.sha256 applies to a source that is one file")
    directory = RemoteDir(uri)
    if dataset.name == DatasetName.MNIST:
        # Each of the four files, compressed or not; listing is not needed (nor possible
        # on a plain web server).
        wanted = []
        for stem in MNIST_FILES.values():
            found = next((n for n in (f"{stem}.gz", stem) if directory.exists(n)), None)
            if found is None:
                raise DataError(
                    f"{uri}: missing {stem}.gz (or {stem}); an MNIST directory holds "
                    f"the four IDX files {', '.join(MNIST_FILES.values())}"
                )
            wanted.append(found)
        directory.local(wanted)
        return load_mnist(directory.cache)
    names = directory.names()
    if "planesnet.json" in names:
        return load_planesnet_json(fetch_file(directory.child("planesnet.json")))
    if not any(n.endswith(".png") for n in names) and "planesnet" in names:
        directory = RemoteDir(directory.child("planesnet"))
        names = directory.names()
    return _chip_folder(uri, names, directory.local)


# --- Splits and shards ---------------------------------------------------------------------


def split(source: Source, dataset: Dataset, seed: int) -> Split:
    """Stratified, seeded train/validation(/test) split; by scene when asked. With
    `trainOnValidation` the validation examples are in the training split as well."""
    n = len(source.train)
    indices = np.arange(n)
    labels = source.train.labels
    held_out = dataset.validation_fraction + (0 if source.test else dataset.test_fraction)
    if dataset.split_by == SplitBy.SCENE:
        if source.train.groups is None:
            raise DataError(
                f"{dataset.source}: spec.dataset.splitBy=scene needs scene ids, "
                "which this source does not have; use splitBy: random"
            )
        train, rest = _group_split(indices, source.train.groups, held_out, seed)
    else:
        train, rest = _stratified_split(indices, labels, held_out, seed, dataset.source)
    if source.test is not None:
        validation, test = np.sort(rest), np.arange(len(source.test))
    else:
        share = dataset.test_fraction / held_out
        if dataset.split_by == SplitBy.SCENE:
            validation, test = _group_split(rest, source.train.groups[rest], share, seed + 1)
        else:
            validation, test = _stratified_split(
                rest, labels[rest], share, seed + 1, dataset.source
            )
    if dataset.limit is not None:
        train = np.random.default_rng(seed).permutation(train)[: dataset.limit]
    if dataset.train_on_validation:  # a refit: the split is drawn as the trials' was
        train = np.concatenate([train, validation])
    return Split(train=np.sort(train), validation=np.sort(validation), test=np.sort(test))


def _stratified_split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int, source: object
) -> tuple[np.ndarray, np.ndarray]:
    """Every class in both parts, in proportion; a dataset too small for that is the job's
    problem, never a retry's."""
    try:
        kept, held = train_test_split(
            indices, test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as err:
        counts = {
            int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True), strict=True)
        }
        raise DataError(
            f"{source}: {len(indices)} examples cannot be split with every class on both sides "
            f"(examples per class: {counts}; {err}); give it more data, or lower "
            "spec.dataset.validationFraction and testFraction"
        ) from None
    return kept, held


def _group_split(
    indices: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    keep, held = next(splitter.split(indices, groups=groups))
    return indices[keep], indices[held]


def shard(indices: np.ndarray, index: int, count: int, seed: int) -> np.ndarray:
    """Worker `index` of `count`'s share: disjoint from the others', together all of them."""
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} outside 0..{count - 1}")
    shuffled = np.random.default_rng(seed).permutation(indices)
    return np.sort(shuffled[index::count])
