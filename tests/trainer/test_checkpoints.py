from pathlib import Path

import pytest
from kubetrain.trainer import checkpoints
from kubetrain.trainer.storage import Store


def write(root: Path, epoch: int, **metrics: float) -> None:
    store = Store.open(root)
    with store.scratch(checkpoints.checkpoint_name(epoch)) as staging:
        (staging / "weights.index").write_text("w")
        checkpoints.publish(store, staging, epoch, metrics)


def list_checkpoints(root: Path) -> list[checkpoints.Checkpoint]:
    return checkpoints.list_checkpoints(Store.open(root))


best_checkpoint = checkpoints.best_checkpoint


def test_the_best_epoch_wins_by_the_chosen_metric(tmp_path: Path) -> None:
    write(tmp_path, 1, val_accuracy=0.90, val_loss=0.30)
    write(tmp_path, 2, val_accuracy=0.95, val_loss=0.25)
    write(tmp_path, 3, val_accuracy=0.93, val_loss=0.20)
    found = list_checkpoints(tmp_path)
    assert best_checkpoint(found, "val_accuracy").epoch == 2
    assert best_checkpoint(found, "val_loss").epoch == 3


def test_a_half_written_checkpoint_is_never_taken_for_a_good_one(tmp_path: Path) -> None:
    write(tmp_path, 1, val_accuracy=0.5)
    crashed = tmp_path / ".staging-0123"  # a crash after the weights, before the rename
    crashed.mkdir()
    (crashed / "weights.index").write_text("partial")
    (tmp_path / "epoch-0002").mkdir()  # a directory without its metrics file
    assert [c.epoch for c in list_checkpoints(tmp_path)] == [1]


def test_retraining_an_epoch_replaces_its_checkpoint(tmp_path: Path) -> None:
    write(tmp_path, 1, val_accuracy=0.5)
    write(tmp_path, 1, val_accuracy=0.7)
    (only,) = list_checkpoints(tmp_path)
    assert only.metrics["val_accuracy"] == 0.7


def test_nan_never_wins(tmp_path: Path) -> None:
    write(tmp_path, 1, val_loss=float("nan"))
    write(tmp_path, 2, val_loss=2.0)
    assert best_checkpoint(list_checkpoints(tmp_path), "val_loss").epoch == 2
    with pytest.raises(ValueError, match="val_accuracy"):
        best_checkpoint(list_checkpoints(tmp_path), "val_accuracy")
