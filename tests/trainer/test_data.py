import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import idx_bytes, write_mnist, write_planesnet_folder, write_planesnet_json
from kubetrain.trainer.api.spec import Dataset
from kubetrain.trainer.data import DataError, load_mnist, load_planesnet, shard, split
from PIL import Image

REAL_MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "plain"])
def test_mnist_reads_idx_files_gzipped_or_not(tmp_path: Path, gzipped: bool) -> None:
    source = load_mnist(write_mnist(tmp_path, train=50, test=20, gzipped=gzipped))
    assert len(source.train) == 50 and len(source.test) == 20
    assert source.train.read(np.arange(3)).shape == (3, 28, 28, 1)
    assert source.class_names[7] == "7"


def test_the_shipped_mnist_is_the_real_one() -> None:
    source = load_mnist(REAL_MNIST)
    assert len(source.train) == 60_000 and len(source.test) == 10_000
    assert np.bincount(source.test.labels).tolist()[:3] == [980, 1135, 1032]


def corrupt(directory: Path, stem: str, data: bytes) -> None:
    (directory / f"{stem}.gz").write_bytes(gzip.compress(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "train-labels-idx1-ubyte.gz").unlink(), "missing train-labels-idx1-ubyte"),
        (
            lambda d: corrupt(d, "train-images-idx3-ubyte", b"\0\0\x08\x01" + b"\0" * 20),
            "wrong magic number 2049, expected 2051",
        ),
        (
            lambda d: corrupt(
                d, "train-images-idx3-ubyte", idx_bytes(np.zeros((10, 28, 28), np.uint8))[:-100]
            ),
            "truncated",
        ),
        (
            lambda d: corrupt(d, "train-labels-idx1-ubyte", idx_bytes(np.full(50, 12, np.uint8))),
            "label 12 outside the classes",
        ),
        (
            lambda d: corrupt(d, "train-labels-idx1-ubyte", idx_bytes(np.zeros(49, np.uint8))),
            "49 labels for 50 images",
        ),
        (lambda d: corrupt(d, "train-images-idx3-ubyte", b"\0\0\x08"), "truncated IDX file"),
    ],
    ids=["missing", "magic", "truncated", "label", "count", "no-header"],
)
def test_bad_mnist_files_are_named_with_the_problem(tmp_path: Path, damage, message: str) -> None:
    directory = write_mnist(tmp_path, train=50, test=20)
    damage(directory)
    with pytest.raises(DataError, match=message) as err:
        load_mnist(directory)
    assert str(directory) in str(err.value)


def test_planesnet_json_is_channel_planar_and_matches_the_png_chips(tmp_path: Path) -> None:
    folder = load_planesnet(write_planesnet_folder(tmp_path / "chips", count=30))
    from_json = load_planesnet(write_planesnet_json(tmp_path / "planesnet.json", count=30))
    # Same generator and seed: the two formats must decode to identical pixels.
    by_name = sorted(range(30), key=lambda i: folder.train.groups[i])
    assert sorted(folder.train.labels.tolist()) == sorted(from_json.train.labels.tolist())
    json_pixels = from_json.train.read(np.arange(30))
    folder_pixels = folder.train.read(np.array(by_name))
    assert {p.tobytes() for p in json_pixels} == {p.tobytes() for p in folder_pixels}
    assert json_pixels.shape == (30, 20, 20, 3)


def test_planesnet_accepts_the_published_parent_folder(tmp_path: Path) -> None:
    write_planesnet_folder(tmp_path / "planesnet", count=12)
    assert len(load_planesnet(tmp_path).train) == 12


def chip_folder(tmp_path: Path) -> Path:
    return write_planesnet_folder(tmp_path / "chips", count=10)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: Image.new("RGB", (32, 32)).save(d / "1__s1__-1.0_2.0.png"), "is 32x32"),
        (lambda d: Image.new("L", (20, 20)).save(d / "1__s1__-1.0_2.0.png"), "mode L"),
        (lambda d: Image.new("RGB", (20, 20)).save(d / "7__s1__-1.0_2.0.png"), "label 7 outside"),
        (lambda d: Image.new("RGB", (20, 20)).save(d / "plane.png"), "LABEL__SCENE__LON_LAT"),
        (lambda d: (d / "1__s1__-1.0_2.0.png").write_bytes(b"not a png"), "not a readable PNG"),
    ],
    ids=["size", "mode", "label", "name", "undecodable"],
)
def test_bad_planesnet_chips_are_named_with_the_problem(tmp_path: Path, damage, message) -> None:
    directory = chip_folder(tmp_path)
    damage(directory)
    with pytest.raises(DataError, match=message):
        source = load_planesnet(directory)
        source.train.read(np.arange(len(source.train)))


def test_an_empty_planesnet_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no PlanesNet chips"):
        load_planesnet(tmp_path)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"data": [[0] * 1199], "labels": [1]}, "rows of 1200"),
        ({"data": [[0] * 1200], "labels": [1, 0]}, "2 labels for 1 rows"),
        ({"data": [[0] * 1200], "labels": [4]}, "label 4 outside"),
        ({"data": [[300] * 1200], "labels": [1]}, "0-255"),
        ({"labels": [1]}, "'data' and 'labels'"),
    ],
)
def test_bad_planesnet_json_is_refused_with_the_problem(tmp_path: Path, document, message) -> None:
    path = tmp_path / "planesnet.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=message):
        load_planesnet(path)


def test_random_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    source = load_mnist(write_mnist(tmp_path, train=1000, test=100))
    dataset = Dataset(name="mnist", source=str(tmp_path), validation_fraction=0.2)
    first, again = split(source, dataset, seed=1), split(source, dataset, seed=1)
    assert np.array_equal(first.train, again.train)
    assert len(first.validation) == 200 and len(first.test) == 100
    assert set(first.train).isdisjoint(first.validation)
    assert np.bincount(source.train.labels[first.validation]).tolist() == [20] * 10


def test_a_class_too_small_to_stratify_is_a_data_error_not_a_crash(tmp_path: Path) -> None:
    """The worker exits permanently (3) on a DataError: no retry can make the data bigger."""
    path = write_planesnet_json(tmp_path / "p.json", count=40)
    document = json.loads(path.read_text())
    document["labels"] = [1] + [0] * 39  # a single plane
    path.write_text(json.dumps(document))
    dataset = Dataset(name="planesnet", source=str(path), validation_fraction=0.2)
    with pytest.raises(DataError, match=r"examples per class: \{0: 39, 1: 1\}.*validationFraction"):
        split(load_planesnet(path), dataset, seed=0)


def test_scene_split_keeps_each_scene_on_one_side(tmp_path: Path) -> None:
    source = load_planesnet(write_planesnet_folder(tmp_path, count=300, scenes=20))
    dataset = Dataset(
        name="planesnet",
        source=str(tmp_path),
        split_by="scene",
        validation_fraction=0.2,
        test_fraction=0.2,
    )
    parts = split(source, dataset, seed=3)
    scenes = [set(source.train.groups[p]) for p in (parts.train, parts.validation, parts.test)]
    assert all(scenes)
    assert scenes[0].isdisjoint(scenes[1]) and scenes[0].isdisjoint(scenes[2])
    assert scenes[1].isdisjoint(scenes[2])
    assert len(parts.train) + len(parts.validation) + len(parts.test) == 300


def test_a_refit_trains_on_the_validation_split_too_and_never_on_the_test_split(
    tmp_path: Path,
) -> None:
    source = load_planesnet(write_planesnet_folder(tmp_path, count=300, scenes=20))
    held = Dataset(name="planesnet", source=str(tmp_path), split_by="scene")
    refit = held.model_copy(update={"train_on_validation": True})
    searched, refitted = split(source, held, seed=3), split(source, refit, seed=3)
    assert sorted(refitted.train) == sorted([*searched.train, *searched.validation])
    assert np.array_equal(refitted.validation, searched.validation)
    assert np.array_equal(refitted.test, searched.test)
    assert set(refitted.train).isdisjoint(refitted.test)


def test_scene_split_needs_scene_ids(tmp_path: Path) -> None:
    path = write_planesnet_json(tmp_path / "p.json", count=50)
    document = json.loads(path.read_text())
    del document["scene_ids"]
    path.write_text(json.dumps(document))
    dataset = Dataset(name="planesnet", source=str(path), split_by="scene")
    with pytest.raises(DataError, match="splitBy=scene needs scene ids"):
        split(load_planesnet(path), dataset, seed=0)


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_worker_shards_are_disjoint_and_cover_the_training_set(workers: int) -> None:
    train = np.arange(0, 1000, 3)
    shards = [shard(train, i, workers, seed=5) for i in range(workers)]
    combined = np.concatenate(shards)
    assert len(combined) == len(set(combined.tolist())) == len(train)
    assert set(combined.tolist()) == set(train.tolist())
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
