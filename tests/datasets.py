"""Small datasets written in the real on-disk formats, for tests that must not need real data.

The images carry their class in a simple visual pattern, so a network can actually learn them.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2048 + array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright column block encodes the label, plus noise."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 4:24, 2 + 2 * label : 4 + 2 * label] = 250
    return images


def write_mnist(
    directory: Path, train: int = 1200, test: int = 300, gzipped: bool = True, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for count in (train, test):
        labels = np.arange(count, dtype=np.uint8) % 10
        rng.shuffle(labels)
        arrays += [digit_images(labels, rng), labels]
    for stem, array in zip(MNIST_STEMS, arrays, strict=True):
        data = idx_bytes(array)
        if gzipped:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / stem).write_bytes(data)
    return directory


def planes_chips(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """20x20 RGB chips; planes show a bright cross in the middle."""
    chips = rng.integers(60, 120, size=(len(labels), 20, 20, 3), dtype=np.uint8)
    chips[labels == 1, 9:11, 3:17] = 240
    chips[labels == 1, 5:15, 9:11] = 240
    return chips


def planesnet_examples(count: int, scenes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 3 == 0).astype(np.int64)
    rng.shuffle(labels)
    scene_ids = np.array(
        [f"2016{s:04d}_1200{s:02d}_0e{s:02d}" for s in rng.integers(0, scenes, count)]
    )
    return planes_chips(labels, rng), labels, scene_ids


def write_planesnet_folder(
    directory: Path, count: int = 300, scenes: int = 12, seed: int = 0
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    chips, labels, scene_ids = planesnet_examples(count, scenes, seed)
    for i, (chip, label, scene) in enumerate(zip(chips, labels, scene_ids, strict=True)):
        lon, lat = -122.0 - i / 1000, 37.0 + i / 1000
        Image.fromarray(chip, "RGB").save(directory / f"{label}__{scene}__{lon:.6f}_{lat:.6f}.png")
    return directory


def write_planesnet_json(path: Path, count: int = 300, scenes: int = 12, seed: int = 0) -> Path:
    chips, labels, scene_ids = planesnet_examples(count, scenes, seed)
    planar = chips.transpose(0, 3, 1, 2).reshape(count, 1200)
    path.write_text(
        json.dumps(
            {
                "data": planar.tolist(),
                "labels": labels.tolist(),
                "scene_ids": scene_ids.tolist(),
                "locations": [[-122.0, 37.0]] * count,
            }
        )
    )
    return path


def tiny_job(source: Path, epochs: int, replicas: int, learning_rate: float = 0.003) -> dict:
    """A TrainingJob as a user writes it, on a tiny MNIST written by `write_mnist`."""
    return {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "dataset": {"name": "mnist", "source": str(source)},
            "model": {"architecture": "mnist-dense"},
            "training": {"epochs": epochs, "batchSize": 64, "learningRate": learning_rate},
            "workers": {"replicas": replicas},
        },
    }
